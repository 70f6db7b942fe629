"""Shared helpers of the benchmarks: one-thread setup, machine description, the toy trainer setup,
timing callbacks and small statistics. Importing it changes no global state (tests import it);
every benchmark's ``run`` calls ``one_thread()`` first."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402


def one_thread() -> None:
    """One core: the machine is shared, and step-time ratios are only comparable at a fixed thread count.
    Child processes (the embedded-model runs) get OMP_NUM_THREADS=1 explicitly."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    torch.set_num_threads(1)
    quiet()


def quiet() -> None:
    """Silence the per-step console output of transformers/TRL during benchmark runs."""
    import logging
    import warnings

    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    logging.getLogger("dapo").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def machine_info() -> dict:
    """nproc, RAM, CPU model, load and library versions (the header of every results table)."""
    info: dict = {"nproc": os.cpu_count(), "python": platform.python_version()}
    try:
        info["usable_cores"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram_gib"] = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        info["cpu"] = platform.processor() or "unknown"
    try:
        info["loadavg_1min"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    import transformers
    import trl

    info.update(torch=torch.__version__, trl=trl.__version__, transformers=transformers.__version__,
                torch_threads=torch.get_num_threads())
    return info


def machine_line(info: dict) -> str:
    load = f", load {info['loadavg_1min']} at start" if "loadavg_1min" in info else ""
    return (
        f"{info.get('cpu', '?')}; nproc {info.get('nproc')}, {info.get('ram_gib', '?')} GiB RAM{load}; "
        f"torch {info.get('torch')}, trl {info.get('trl')}, "
        f"transformers {info.get('transformers')}, Python {info.get('python')}; "
        f"{info.get('torch_threads')} torch thread"
    )


def now() -> str:
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def tmpdir(prefix: str) -> str:
    return tempfile.mkdtemp(prefix=f"dapo_bench_{prefix}_")


# ----------------------------------------------------------------------------------- statistics
def spread(values) -> dict:
    """median / min / max / quartiles of a list of numbers (None entries are ignored)."""
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return {"n": 0, "median": None, "min": None, "max": None, "q1": None, "q3": None}
    q = statistics.quantiles(vals, n=4, method="inclusive") if len(vals) > 1 else [vals[0]] * 3
    return {"n": len(vals), "median": statistics.median(vals), "min": vals[0], "max": vals[-1], "q1": q[0], "q3": q[2]}


def fmt(x, digits: int = 2, suffix: str = "") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and abs(x) >= 1000:
        return f"{x:,.0f}{suffix}"
    return f"{x:.{digits}f}{suffix}"


# ----------------------------------------------------------------------------------- trainer pieces
def toy_setup():
    """tests/tiny.py and the small_args config of tests/test_train_dapo.py (the repository's toy setup)."""
    from tests import tiny
    from tests.test_train_dapo import small_args

    return tiny, small_args


class StepClock(TrainerCallback):
    """Records the wall time at the end of every optimizer step."""

    def __init__(self):
        self.times: list[float] = []
        self.start: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())

    def seconds_per_step(self, skip: int) -> float:
        """Mean seconds per optimizer step after the first ``skip`` steps (warm-up excluded)."""
        if len(self.times) <= skip:
            raise ValueError(f"need more than {skip} steps, got {len(self.times)}")
        t0 = self.times[skip - 1] if skip > 0 else self.start
        return (self.times[-1] - t0) / (len(self.times) - skip)

    def median_rollout_seconds(self, steps_per_rollout: int, skip: int) -> float:
        """Median wall time of one rollout cycle (robust to a busy neighbour on a shared machine)."""
        if skip > 0:
            ends = self.times[skip - 1 :: steps_per_rollout]
        else:
            ends = [self.start, *self.times[steps_per_rollout - 1 :: steps_per_rollout]]
        return statistics.median(b - a for a, b in zip(ends, ends[1:], strict=False))


def silence_printer(trainer) -> None:
    """Drop the callbacks that print a metric dict per step (identically for every trainer compared)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def counting(fn, name: str | None = None):
    """Wrap a reward function so that it counts the completions it scores (= completions generated)."""

    def wrapped(*args, **kwargs):
        out = fn(*args, **kwargs)
        wrapped.calls += 1
        wrapped.completions += len(out)
        return out

    wrapped.calls = 0
    wrapped.completions = 0
    wrapped.__name__ = name or getattr(fn, "__name__", type(fn).__name__)
    return wrapped


def series(log_history: list[dict], key: str) -> list[float]:
    return [h[key] for h in log_history if key in h and h[key] is not None]


def cli(run, to_markdown, doc: str, argv=None) -> dict:
    """Command line of one benchmark module: ``[--quick]``, run, print its table."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    res = run(quick=ap.parse_args(argv).quick)
    print(to_markdown(res))
    return res
