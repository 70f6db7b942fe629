"""Monitoring a DAPO run: metric names, derived metrics, sample logs, console line, dashboard and summary.

Everything reaches TensorBoard and W&B through the HF Trainer's ``log`` (TensorBoardCallback and
WandbCallback write a metric ``name`` as ``train/<name>``), so both backends see the same names.
docs/metrics.md lists every metric, its meaning and what a healthy DAPO curve looks like.

Hooks called by train_dapo.py:
  * ``on_trainer_log(trainer, logs, mode)``: from ``DAPOTrainer.log``, before TRL averages
    ``trainer._metrics[mode]`` into ``logs``: adds the DAPO aliases and the derived metrics (step-time
    split, tokens per second) and, every ``args.log_samples_every`` steps, logs a sample of completions
    (TensorBoard text panel, W&B table, ``<output_dir>/samples.jsonl``).
  * ``default_callbacks(args)``: the console line (``ConsoleLogCallback``); checks ``--report_to``.
  * ``finish_run(output_dir, trainer=None)``: dashboard PNG and summary at the end of training.

Command line, for any output directory (reads the TensorBoard event files under it):

    python logging_utils.py dashboard OUTPUT_DIR [--out dashboard.png]
    python logging_utils.py summary OUTPUT_DIR [--out summary.md]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import logging
import math
import os
import re
import sys

from dataset_utils import extract_problem
import time
from pathlib import Path

from transformers import TrainerCallback

from chat_text import message_text

logger = logging.getLogger("dapo")

# Metric names promised by the DAPO README (and a few more), as aliases of TRL's own metric names.
# `loss`, `learning_rate`, `entropy` and `acc` need no alias: the HF Trainer, TRL and DAPOTrainer log them
# under those names already.
METRIC_ALIASES = {
    "reward/mean": "reward",
    "reward/std": "reward_std",
    "clip_fraction": "clip_ratio/region_mean",
    "clip_fraction/low": "clip_ratio/low_mean",
    "clip_fraction/high": "clip_ratio/high_mean",
    "overlong/mean_penalty": "rewards/overlong_penalty/mean",
    "response_length/mean": "completions/mean_length",
    "response_length/min": "completions/min_length",
    "response_length/max": "completions/max_length",
    "response_length/clip_ratio": "completions/clipped_ratio",
}

SAMPLES_FILE = "samples.jsonl"
SUMMARY_FILE = "summary.md"
DASHBOARD_FILE = "dashboard.png"
SAMPLES_TAG = "train/samples"  # TensorBoard text panel and W&B table: the same name in both
SAMPLE_FIELDS = ("step", "index", "problem", "prompt", "completion", "answer", "pred", "score", "reward", "advantage", "rewards")


def add_metric_aliases(metrics: dict[str, list[float]]) -> None:
    """Add the DAPO names next to TRL's (in place, on the per-step metric lists)."""
    for alias, source in METRIC_ALIASES.items():
        if source in metrics and metrics[source]:
            metrics[alias] = list(metrics[source])


# ============================================================================ derived metrics
class RunMonitor:
    """Step-time split and throughput, computed from the metric lists of one logging window.

    A rollout (generation + scoring) happens on the first optimizer step of every cycle of
    ``steps_per_rollout`` steps (num_mini_batches x num_iterations); the other steps of the cycle only
    update. Per-window figures would therefore jump between "almost all generation" and "no generation",
    so the fractions and the throughput are computed over a trailing window of the last
    ``steps_per_rollout`` optimizer steps (one rollout cycle). All times are TRL's ``step_time`` (wall
    time of the forward/backward micro-steps of an optimizer step, which includes the rollout done
    inside them) and DAPOTrainer's ``timing/generation_s`` / ``timing/scoring_s``.
    """

    def __init__(self, steps_per_rollout: int = 1, initial_tokens: int = 0):
        self.steps_per_rollout = max(1, int(steps_per_rollout))
        self.tokens_seen = initial_tokens
        self._window: collections.deque = collections.deque()  # (steps, step_s, gen_s, score_s, tokens)
        # sample logging state
        self.last_sample_step: int | None = None
        self.last_sample_tokens: int | None = None
        self.samples_pending = True  # log the first fresh rollout
        self.answer_index: dict | None = None

    def update(self, metrics: dict[str, list[float]], tokens_seen: int) -> dict[str, float]:
        """Derived metrics of this logging window (empty if it holds no optimizer step)."""
        step_times = [v for v in metrics.get("step_time", []) if _finite(v)]
        n = len(step_times)
        if n == 0:
            return {}
        total = sum(step_times)
        gen = sum(v for v in metrics.get("timing/generation_s", []) if _finite(v))
        score = sum(v for v in metrics.get("timing/scoring_s", []) if _finite(v))
        tokens = max(tokens_seen - self.tokens_seen, 0)
        self.tokens_seen = tokens_seen
        self._window.append((n, total, gen, score, tokens))
        while sum(w[0] for w in self._window) - self._window[0][0] >= self.steps_per_rollout:
            self._window.popleft()
        w_total = sum(w[1] for w in self._window)
        w_gen = sum(w[2] for w in self._window)
        w_score = sum(w[3] for w in self._window)
        w_tokens = sum(w[4] for w in self._window)
        out = {
            "timing/step_s": total / n,
            "timing/update_s": max(total - gen - score, 0.0) / n,
        }
        if w_total > 0:
            w_update = max(w_total - w_gen - w_score, 0.0)
            out["timing/generation_frac"] = w_gen / w_total
            out["timing/scoring_frac"] = w_score / w_total
            out["timing/update_frac"] = w_update / w_total
            out["perf/tokens_per_second"] = w_tokens / w_total
        return out


def steps_per_rollout(args) -> int:
    """Optimizer steps that share one rollout: num_mini_batches x num_iterations."""
    spg = getattr(args, "steps_per_generation", None) or getattr(args, "gradient_accumulation_steps", 1)
    gas = max(1, getattr(args, "gradient_accumulation_steps", 1) or 1)
    return max(1, spg // gas) * max(1, getattr(args, "num_iterations", 1) or 1)


def _monitor(trainer) -> RunMonitor:
    monitor = getattr(trainer, "_dapo_monitor", None)
    if monitor is None:
        initial = getattr(trainer, "_initial_num_input_tokens_seen", None)
        if initial is None:
            initial = trainer.state.num_input_tokens_seen
        monitor = RunMonitor(steps_per_rollout(trainer.args), int(initial or 0))
        trainer._dapo_monitor = monitor
    return monitor


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# ============================================================================ trainer hook
def on_trainer_log(trainer, logs: dict, mode: str) -> None:
    """Called by DAPOTrainer.log before TRL averages ``trainer._metrics[mode]`` into ``logs``."""
    metrics = trainer._metrics[mode]
    add_metric_aliases(metrics)
    if mode != "train":
        return
    monitor = _monitor(trainer)
    for name, value in monitor.update(metrics, int(trainer.state.num_input_tokens_seen or 0)).items():
        metrics[name] = [value]
    _quiet_progress_bar(trainer)
    try:
        maybe_log_samples(trainer, monitor)
    except Exception as exc:  # a sample log must never stop a training run
        logger.warning("Could not log completion samples: %s", exc)


def _quiet_progress_bar(trainer) -> None:
    """With our console line active, stop the progress bar (or, with --disable_tqdm, the printer) from also
    printing the raw metric dict of every optimizer step; other logs (eval results, the final summary) are
    still printed. The full dicts are in TensorBoard / W&B and ``trainer.state.log_history``."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    callbacks = trainer.callback_handler.callbacks
    if not any(isinstance(cb, ConsoleLogCallback) for cb in callbacks):
        return
    for cb in callbacks:
        if type(cb) in (ProgressCallback, PrinterCallback) and not getattr(cb, "_dapo_quiet", False):
            original = cb.on_log

            def on_log(args, state, control, logs=None, _original=original, **kwargs):
                if logs and _is_step_log(logs):
                    return None
                return _original(args, state, control, logs=logs, **kwargs)

            cb.on_log = on_log
            cb._dapo_quiet = True


def _is_step_log(logs: dict) -> bool:
    return "loss" in logs or "reward" in logs


# ============================================================================ completion samples
def samples_every(args) -> int:
    return int(getattr(args, "log_samples_every", 10) or 0)


def maybe_log_samples(trainer, monitor: RunMonitor | None = None) -> list[dict] | None:
    """Log a sample of the latest rollout's completions every ``args.log_samples_every`` steps.

    The first rollout is always sampled; afterwards a sample is due whenever the step count crosses a
    multiple of N, and is written at the first log whose rollout is new (the optimizer steps between two
    rollouts reuse the same completions, which are not logged twice). 0 disables sample logging.
    """
    args = trainer.args
    every = samples_every(args)
    if every <= 0 or not trainer.accelerator.is_main_process:
        return None
    monitor = monitor or _monitor(trainer)
    step = trainer.state.global_step
    if monitor.last_sample_step is not None and step // every > monitor.last_sample_step // every:
        monitor.samples_pending = True
    tokens = trainer.state.num_input_tokens_seen
    fresh = tokens != monitor.last_sample_tokens
    if not (monitor.samples_pending and fresh and len(trainer._logs["prompt"])):
        return None
    rows = collect_samples(
        trainer._logs,
        step,
        int(getattr(args, "num_samples_to_log", 8) or 0),
        answers=lambda prompts: _lookup_answers(trainer, monitor, prompts),
        score_name=_score_name(trainer),
    )
    monitor.samples_pending = False
    monitor.last_sample_step = step
    monitor.last_sample_tokens = tokens
    if rows:
        write_samples(rows, args.output_dir, step, tb_writer=_tb_writer(trainer), use_wandb=_reports_to(args, "wandb"))
    return rows


def _score_name(trainer) -> str | None:
    names = list(getattr(trainer, "reward_func_names", []) or [])
    if "correctness" in names:
        return "correctness"
    return names[0] if names else None


def collect_samples(trainer_logs: dict, step: int, k: int, answers=None, score_name: str | None = None) -> list[dict]:
    """Rows of ``k`` completions spread evenly over TRL's ``trainer._logs`` (the latest rollout).

    Each row: step, index (position in the rollout), problem (the prompt without the template), prompt (last
    user message), completion, answer
    (ground truth), pred (the verifier's extracted answer), score (the correctness reward, +-1), reward
    (sum of all reward functions, unweighted), advantage, rewards (per function).
    ``answers(prompts) -> list`` supplies the ground truth when the reward function did not log it
    (``log_extra("answer", ...)``).
    """
    prompts = list(trainer_logs["prompt"])
    n = len(prompts)
    if n == 0 or k <= 0:
        return []
    idx = sorted({round(i * (n - 1) / (k - 1)) for i in range(k)}) if 1 < k < n else list(range(min(k, n)))
    completions = list(trainer_logs["completion"])
    advantages = list(trainer_logs["advantages"])
    rewards = {name: list(values) for name, values in trainer_logs["rewards"].items()}
    extra = {name: list(values) for name, values in trainer_logs.get("extra", {}).items()}
    chosen_prompts = [prompts[i] for i in idx]
    if "answer" in extra and len(extra["answer"]) == n:
        gts = [extra["answer"][i] for i in idx]
    elif answers is not None:
        gts = answers(chosen_prompts)
    else:
        gts = [None] * len(idx)
    rows = []
    for j, i in enumerate(idx):
        per_func = {name: _num(values[i]) if i < len(values) else None for name, values in rewards.items()}
        finite = [v for v in per_func.values() if v is not None]
        score = per_func.get(score_name) if score_name else None
        rows.append(
            {
                "step": int(step),
                "index": int(i),
                "problem": extract_problem(message_text(prompts[i], role="user")),
                "prompt": message_text(prompts[i], role="user"),
                "completion": message_text(completions[i] if i < len(completions) else None, role="assistant"),
                "answer": None if gts[j] is None else str(gts[j]),
                "pred": _extra_at(extra, "pred", i),
                "score": score,
                "reward": sum(finite) if finite else None,
                "advantage": _num(advantages[i]) if i < len(advantages) else None,
                "rewards": per_func,
            }
        )
    return rows


def _num(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _extra_at(extra: dict, name: str, i: int):
    values = extra.get(name)
    if values is None or i >= len(values) or values[i] is None:
        return None
    return values[i] if isinstance(values[i], (int, float, bool)) else str(values[i])


def _prompt_key(prompt) -> str:
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False, default=str)


MAX_ANSWER_INDEX_ROWS = 2_000_000


def _lookup_answers(trainer, monitor: RunMonitor, prompts: list) -> list:
    """Ground truth of logged prompts, from the training dataset's answer column (built once)."""
    if monitor.answer_index is None:
        monitor.answer_index = {}
        dataset = getattr(trainer, "train_dataset", None)
        column = "answer"
        for func in getattr(trainer, "reward_funcs", []) or []:
            column = getattr(func, "answer_column", None) or column
        names = getattr(dataset, "column_names", None) or []
        if dataset is not None and "prompt" in names and column in names and len(dataset) <= MAX_ANSWER_INDEX_ROWS:
            for prompt, answer in zip(dataset["prompt"], dataset[column], strict=False):
                monitor.answer_index.setdefault(_prompt_key(prompt), answer)
    return [monitor.answer_index.get(_prompt_key(p)) for p in prompts]


def samples_markdown(rows: list[dict], step: int) -> str:
    """The TensorBoard text panel (markdown: one section per sample, completions as code blocks)."""
    parts = [f"**Completion samples at step {step}** ({len(rows)} shown)"]
    for row in rows:
        head = (
            f"**#{row['index']}** answer `{_inline(row['answer'])}` | pred `{_inline(row['pred'])}` | "
            f"score {_fmt(row['score'], '+.2f')} | reward {_fmt(row['reward'], '+.3f')} | "
            f"advantage {_fmt(row['advantage'], '+.3f')}"
        )
        prompt = row.get("problem", row["prompt"])[-600:]
        completion = row["completion"].replace("```", "'''")
        parts.append(f"{head}\n\n> {_inline(prompt)}\n\n```\n{completion}\n```")
    return "\n\n---\n\n".join(parts)


def _inline(value) -> str:
    return "-" if value is None else str(value).replace("`", "'").replace("\n", " ").replace("|", "/")


def write_samples(rows: list[dict], output_dir: str, step: int, tb_writer=None, use_wandb: bool = False) -> None:
    """Append to ``<output_dir>/samples.jsonl``; TensorBoard text panel and W&B table when available."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, SAMPLES_FILE), "a", encoding="utf-8", errors="replace") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    if tb_writer is not None:
        tb_writer.add_text(SAMPLES_TAG, samples_markdown(rows, step), step)
        tb_writer.flush()
    if use_wandb:
        try:
            import wandb
        except ImportError:
            return
        if wandb.run is not None:
            columns = [c for c in SAMPLE_FIELDS if c != "rewards"]
            data = [[row[c] for c in columns] for row in rows]
            table = wandb.Table(columns=columns, data=data, allow_mixed_types=True)
            wandb.log({SAMPLES_TAG: table, "train/global_step": step})


def _tb_writer(trainer):
    from transformers.integrations import TensorBoardCallback

    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback) and getattr(cb, "tb_writer", None) is not None:
            return cb.tb_writer
    return None


# ============================================================================ reporting backends
class ReportingError(RuntimeError):
    """--report_to names a backend that cannot be used."""


def report_to_list(args) -> list[str]:
    value = getattr(args, "report_to", None)
    if value is None or value == "none":
        return []
    if isinstance(value, str):
        value = [value]
    return [v for v in value if v and v != "none"]


def _reports_to(args, backend: str) -> bool:
    return backend in report_to_list(args)


def check_reporting(args) -> None:
    """Fail early and clearly if --report_to wandb is asked for without wandb installed."""
    if _reports_to(args, "wandb"):
        try:
            import wandb  # noqa: F401
        except ImportError as exc:
            raise ReportingError(
                "--report_to wandb needs the wandb package, which is not installed. Install it with "
                "`pip install wandb==0.31.0` (it logs offline without an account: WANDB_MODE=offline), or use "
                "--report_to tensorboard (or none)."
            ) from exc
        os.environ.setdefault("WANDB_DIR", os.path.abspath(args.output_dir))
        os.makedirs(os.environ["WANDB_DIR"], exist_ok=True)
        if not os.environ.get("WANDB_MODE") and not os.environ.get("WANDB_API_KEY"):
            logger.info(
                "W&B: no WANDB_API_KEY in the environment. Without a `wandb login` or network, set "
                "WANDB_MODE=offline; offline runs are written under %s/wandb (upload later with `wandb sync`).",
                os.environ["WANDB_DIR"],
            )


def default_callbacks(args) -> list:
    check_reporting(args)
    return [ConsoleLogCallback()]


# ============================================================================ console
# Metrics measured once per rollout: on the other optimizer steps of the rollout the console shows the
# last value, marked with CARRIED_MARK.
ROLLOUT_KEYS = ("reward", "acc", "dynamic_sampling/groups_kept", "dynamic_sampling/groups_generated",
                "dynamic_sampling/groups_trained",
                "response_length/mean")
CARRIED_MARK = "*"


def format_duration(seconds: float) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    return str(datetime.timedelta(seconds=int(round(max(seconds, 0)))))


def format_console_line(step: int, max_steps: int, logs: dict, carried: dict, sec_per_step: float | None,
                        eta_s: float | None) -> str:
    """One line per optimizer step. ``carried`` holds the last value of each ROLLOUT_KEYS metric; a
    value taken from it (not measured at this step) is marked with ``*``."""

    def value(key, spec):
        v = logs.get(key)
        mark = ""
        if not _finite(v) and key in ROLLOUT_KEYS:
            v, mark = carried.get(key), CARRIED_MARK
        return "-" if not _finite(v) else format(v, spec) + mark

    parts = [f"step {step}/{max_steps}" if max_steps and max_steps > 0 else f"step {step}"]
    parts.append(f"reward {value('reward', '+.3f')} acc {value('acc', '.3f')}")
    kept, gen = value("dynamic_sampling/groups_kept", ".0f"), value("dynamic_sampling/groups_generated", ".0f")
    trained = value("dynamic_sampling/groups_trained", ".0f")
    if kept != "-":
        parts.append(f"groups {kept.rstrip(CARRIED_MARK)}/{gen} informative, {trained.rstrip(CARRIED_MARK)} trained")
    parts.append(f"len {value('response_length/mean', '.1f')} tok")
    parts.append(f"entropy {value('entropy', '.3f')}")
    if "clip_ratio/low_mean" in logs or "clip_fraction/low" in logs:
        low = logs.get("clip_fraction/low", logs.get("clip_ratio/low_mean"))
        high = logs.get("clip_fraction/high", logs.get("clip_ratio/high_mean"))
        parts.append(f"clip lo/hi {_fmt(low, '.4f')}/{_fmt(high, '.4f')}")
    parts.append(f"{_fmt(sec_per_step, '.1f')} s/step")
    parts.append(f"ETA {format_duration(eta_s) if eta_s is not None else '-'}")
    return " | ".join(parts)


def _fmt(value, spec) -> str:
    return format(value, spec) if _finite(value) else "-"


class ConsoleLogCallback(TrainerCallback):
    """One readable line per logged optimizer step, on the main process only.

    Rewards, accuracy, kept groups and length are measured once per rollout; the optimizer steps that
    reuse the rollout show the last values marked with ``*``. Seconds per step is wall time between two
    lines; the ETA uses the average since training (re)started. Printed with tqdm.write, so the progress
    bar stays intact.
    """

    def __init__(self, stream=None):
        self._stream = stream
        self._start = None
        self._start_step = 0
        self._last_time = None
        self._last_step = 0
        self._carried: dict[str, float] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = self._last_time = time.time()
        self._start_step = self._last_step = state.global_step
        if state.is_world_process_zero:
            self._write(
                f"[dapo] one line per logged step; '{CARRIED_MARK}' = value from the last rollout (rewards are "
                "measured once per rollout and shared by its optimizer steps)"
            )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or not _is_step_log(logs):
            return
        now = time.time()
        if self._start is None:
            self._start = self._last_time = now
        steps = state.global_step - self._last_step
        sec_per_step = (now - self._last_time) / steps if steps > 0 else None
        done = state.global_step - self._start_step
        avg = (now - self._start) / done if done > 0 else None
        eta = avg * max(state.max_steps - state.global_step, 0) if avg is not None and state.max_steps else None
        line = format_console_line(state.global_step, state.max_steps, logs, self._carried, sec_per_step, eta)
        for key in ROLLOUT_KEYS:
            if _finite(logs.get(key)):
                self._carried[key] = logs[key]
        self._last_time, self._last_step = now, state.global_step
        self._write(line)

    def _write(self, line: str) -> None:
        if self._stream is not None:
            print(line, file=self._stream, flush=True)
            return
        from tqdm.auto import tqdm

        tqdm.write(line)


# ============================================================================ reading event files
def event_dirs(path: str) -> list[str]:
    """Directories under ``path`` holding TensorBoard event files."""
    found = set()
    for root, _dirs, files in os.walk(path):
        if any(name.startswith("events.out.tfevents") for name in files):
            found.add(root)
    return sorted(found)


def load_scalars(path: str) -> tuple[dict[str, list[tuple[int, float, float]]], list[dict]]:
    """All scalars under ``path``: {tag: [(step, value, wall_time), ...]} and one info dict per run.

    Runs (event directories) are merged in order of their first event; a later run replaces the earlier
    runs' points from its first step on (a resumed run continues a curve, a restarted one replaces it).
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # "No path found after ..." at INFO per file
    runs = []
    for directory in event_dirs(path):
        acc = EventAccumulator(directory, size_guidance={"scalars": 0, "tensors": 1, "images": 1,
                                                         "histograms": 1, "audio": 1, "compressedHistograms": 1})
        acc.Reload()
        data = {tag: [(e.step, e.value, e.wall_time) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
        data = {tag: points for tag, points in data.items() if points}
        if not data:
            continue
        walls = [p[2] for points in data.values() for p in points]
        steps = [p[0] for points in data.values() for p in points]
        runtime = data.get("train/train_runtime")  # logged by the Trainer when train() ends
        span = max(walls) - min(walls)
        runs.append({"dir": directory, "data": data, "first_wall": min(walls), "last_wall": max(walls),
                     "first_step": min(steps), "last_step": max(steps),
                     "wall_s": max(span, runtime[-1][1]) if runtime else span})
    runs.sort(key=lambda r: r["first_wall"])
    merged: dict[str, list] = {}
    for run in runs:
        for tag in merged:
            merged[tag] = [p for p in merged[tag] if p[0] < run["first_step"]]
        for tag, points in run["data"].items():
            merged.setdefault(tag, []).extend(points)
    merged = {tag: sorted(points, key=lambda p: p[0]) for tag, points in merged.items() if points}
    info = [{k: v for k, v in run.items() if k != "data"} for run in runs]
    return merged, info


def _series(scalars: dict, *tags: str):
    """First present tag among ``tags`` (DAPO alias first, TRL name as fallback)."""
    for tag in tags:
        if scalars.get(tag):
            return tag, scalars[tag]
    return None, None


EVAL_ACCURACY = re.compile(r"(avg@|pass@|maj@|acc|accuracy|score|reward)", re.IGNORECASE)


def eval_accuracy_tags(scalars: dict) -> list[str]:
    return sorted(t for t in scalars if t.startswith("eval/") and EVAL_ACCURACY.search(t[len("eval/"):]))


# (title, y label, [(legend label, candidate tags...)], options)
PANELS = [
    ("Reward (score + overlong penalty)", "reward per response",
     [("mean", "train/reward/mean", "train/reward")], {"band": ("train/reward/std", "train/reward_std")}),
    ("Training accuracy", "fraction correct", [("acc", "train/acc")], {"ylim01": True}),
    ("Eval accuracy", "fraction correct", "eval", {"ylim01": True}),
    ("Response length", "tokens",
     [("mean", "train/response_length/mean", "train/completions/mean_length"),
      ("max", "train/response_length/max", "train/completions/max_length")], {"nonneg": True}),
    ("Entropy (should not collapse)", "nats per token", [("entropy", "train/entropy")], {}),
    ("Clip fraction (clip-higher)", "fraction of tokens",
     [("low (ratio < 1-eps_low, A<0)", "train/clip_fraction/low", "train/clip_ratio/low_mean"),
      ("high (ratio > 1+eps_high, A>0)", "train/clip_fraction/high", "train/clip_ratio/high_mean")],
     {"nonneg": True}),
    ("Dynamic sampling: kept groups", "fraction of generated groups",
     [("kept fraction", "train/dynamic_sampling/kept_fraction")], {"ylim01": True}),
    ("Overlong responses", "fraction of responses",
     [("in overlong buffer (penalised)", "train/overlong/ratio"),
      ("truncated at max length", "train/response_length/clip_ratio", "train/completions/clipped_ratio")],
     {"ylim01": True}),
    ("Step time split (last rollout cycle)", "fraction of step time",
     [("generation", "train/timing/generation_frac"), ("scoring", "train/timing/scoring_frac"),
      ("update", "train/timing/update_frac")], {"ylim01": True}),
    ("Throughput", "tokens per second", [("prompt+completion tokens/s", "train/perf/tokens_per_second")],
     {"nonneg": True}),
    ("Loss", "policy loss", [("loss", "train/loss")], {}),
]


def _ema(values: list[float], weight: float) -> list[float]:
    out, last, debias = [], 0.0, 0.0
    for v in values:
        last = last * weight + (1 - weight) * v
        debias = debias * weight + (1 - weight)
        out.append(last / debias)
    return out


def render_dashboard(path: str, out: str | None = None) -> str:
    """Render the key curves of the run(s) under ``path`` to a PNG; returns the PNG's path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    scalars, runs = load_scalars(path)
    if not scalars:
        raise FileNotFoundError(f"No TensorBoard scalars found under {path} (looked for events.out.tfevents*).")
    panels = []
    for title, ylabel, series_spec, opts in PANELS:
        if series_spec == "eval":
            series = [(tag[len("eval/"):], tag, scalars[tag]) for tag in eval_accuracy_tags(scalars)]
        else:
            series = []
            for label, *tags in series_spec:
                tag, points = _series(scalars, *tags)
                if points:
                    series.append((label, tag, points))
        if series:
            panels.append((title, ylabel, series, opts))

    ncols = 3
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(5.2 * ncols, 3.5 * nrows + 0.7), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    last_step = max(p[0] for points in scalars.values() for p in points)
    first_step = min(p[0] for points in scalars.values() for p in points)
    wall = sum(r["wall_s"] for r in runs)
    fig.suptitle(
        f"DAPO run: {os.path.basename(os.path.abspath(path))} ({last_step} optimizer steps, "
        f"wall time {format_duration(wall)}, {len(runs)} run segment(s))",
        fontsize=13, fontweight="bold",
    )
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (title, ylabel, series, opts) in zip(axes, panels, strict=False):
        for k, (label, tag, points) in enumerate(series):
            color = f"C{k}"
            steps = [p[0] for p in points]
            values = [p[1] for p in points]
            many = len(points) > 30
            if many:
                ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
                ax.plot(steps, _ema(values, 0.8), color=color, linewidth=1.8, label=f"{label} (smoothed)")
            else:
                ax.plot(steps, values, color=color, marker="o", markersize=3.5, linewidth=1.5, label=label)
            band = opts.get("band")
            if band and k == 0:
                _, std_points = _series(scalars, *band)
                if std_points:
                    std = dict((p[0], p[1]) for p in std_points)
                    lo = [v - std.get(s, 0.0) for s, v in zip(steps, values, strict=True)]
                    hi = [v + std.get(s, 0.0) for s, v in zip(steps, values, strict=True)]
                    ax.fill_between(steps, lo, hi, color=color, alpha=0.15, label="± std")
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(first_step - 0.5, last_step + 0.5)  # the same steps on every panel, also for a single point
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(True, alpha=0.3)
        values = [p[1] for _, _, points in series for p in points]
        lo, hi = min(values), max(values)
        if opts.get("ylim01"):
            ax.set_ylim(min(lo, 0.0) - 0.02, max(hi, 1.0) + 0.02)
        elif hi - lo <= 1e-3 * max(abs(lo), abs(hi)):  # (nearly) flat: no axis of 1e-6 steps
            pad = max(0.05 * abs(hi), 1e-3)
            ax.set_ylim(lo - pad, hi + pad)
        if opts.get("nonneg") and lo >= 0:
            ax.set_ylim(bottom=0, top=None if hi > 0 else 0.01)
        if all(v == 0 for v in values):
            ax.text(0.5, 0.6, "all values are 0", transform=ax.transAxes, ha="center", color="0.4")
        ax.legend(fontsize=8, loc="best")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    out = out or os.path.join(path, DASHBOARD_FILE)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out)
    return out


# ============================================================================ text summary
# (tag candidates, label, direction of "best": "max", "min" or None)
SUMMARY_METRICS = [
    (("train/reward/mean", "train/reward"), "reward/mean", "max"),
    (("train/acc",), "acc", "max"),
    (("train/response_length/mean", "train/completions/mean_length"), "response_length/mean (tokens)", None),
    (("train/response_length/clip_ratio", "train/completions/clipped_ratio"), "response_length/clip_ratio", "min"),
    (("train/overlong/ratio",), "overlong/ratio", "min"),
    (("train/entropy",), "entropy (nats/token)", None),
    (("train/clip_fraction/low", "train/clip_ratio/low_mean"), "clip_fraction/low", None),
    (("train/clip_fraction/high", "train/clip_ratio/high_mean"), "clip_fraction/high", None),
    (("train/dynamic_sampling/kept_fraction",), "dynamic_sampling/kept_fraction", None),
    (("train/dynamic_sampling/num_gen_batches",), "dynamic_sampling/num_gen_batches", None),
    (("train/loss",), "loss", None),
    (("train/timing/step_s", "train/step_time"), "timing/step_s (s)", "min"),
    (("train/timing/generation_frac",), "timing/generation_frac", None),
    (("train/perf/tokens_per_second",), "perf/tokens_per_second", "max"),
]


def summarize(path: str) -> str:
    """A short markdown summary of the run(s) under ``path``: steps, wall time, first/last/best."""
    scalars, runs = load_scalars(path)
    if not scalars:
        raise FileNotFoundError(f"No TensorBoard scalars found under {path} (looked for events.out.tfevents*).")
    last_step = max(p[0] for points in scalars.values() for p in points)
    first_step = min(p[0] for points in scalars.values() for p in points)
    wall = sum(r["wall_s"] for r in runs)
    lines = [f"# DAPO run summary: {os.path.abspath(path)}", ""]
    lines.append(f"- optimizer steps logged: {last_step}")
    lines.append(f"- wall time: {format_duration(wall)} (training time; {len(runs)} run segment(s) in the event files)")
    _, tokens = _series(scalars, "train/num_tokens")
    if tokens:
        lines.append(f"- tokens sampled (prompt + completion): {int(tokens[-1][1]):,}")
    lines += ["", "| metric | first | last | best (step) | points |", "|---|---|---|---|---|"]
    rows = [(tags, label, best) for tags, label, best in SUMMARY_METRICS]
    rows += [((tag,), tag, "max") for tag in eval_accuracy_tags(scalars)]
    for tags, label, best in rows:
        _, points = _series(scalars, *tags)
        if not points:
            continue
        first, last = points[0], points[-1]
        best_cell = "-"
        if best:
            chosen = (max if best == "max" else min)(points, key=lambda p: p[1])
            best_cell = f"{_g(chosen[1])} ({chosen[0]})"
        lines.append(f"| {label} | {_g(first[1])} | {_g(last[1])} | {best_cell} | {len(points)} |")
    notes = health_notes(scalars)
    if notes:
        lines += ["", "Notes:"] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def _g(value: float) -> str:
    return f"{value:.4g}" if _finite(value) else str(value)


def health_notes(scalars: dict) -> list[str]:
    """A few DAPO-specific warnings read off the curves (see docs/metrics.md)."""
    notes = []
    _, entropy = _series(scalars, "train/entropy")
    if entropy and len(entropy) >= 10:
        head = sum(p[1] for p in entropy[:5]) / 5
        tail = sum(p[1] for p in entropy[-5:]) / 5
        if head > 0 and tail < 0.5 * head:
            notes.append(f"entropy fell from {head:.3g} to {tail:.3g}: possible entropy collapse.")
    _, low = _series(scalars, "train/clip_fraction/low", "train/clip_ratio/low_mean")
    _, high = _series(scalars, "train/clip_fraction/high", "train/clip_ratio/high_mean")
    if low and high and all(p[1] == 0 for p in low + high):
        notes.append("clip fractions are always 0: the importance ratio never left [1-eps_low, 1+eps_high]. With "
                     "num_mini_batches=1 and num_iterations=1 the ratio is always 1 and clip-higher has no effect; "
                     "otherwise expect small non-zero values (~0.001-0.01) after the first steps.")
    _, kept = _series(scalars, "train/dynamic_sampling/kept_fraction")
    if kept and kept[-1][1] < 0.1:
        notes.append(f"dynamic sampling keeps only {kept[-1][1]:.1%} of the groups: the data is too easy or too "
                     "hard for the model (each step needs many generation batches).")
    _, overlong = _series(scalars, "train/overlong/ratio")
    if overlong and overlong[-1][1] > 0.5:
        notes.append(f"{overlong[-1][1]:.0%} of the responses end in the overlong buffer (last step).")
    return notes


def write_summary(path: str, out: str | None = None) -> tuple[str, str]:
    text = summarize(path)
    out = out or os.path.join(path, SUMMARY_FILE)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    Path(out).write_text(text, encoding="utf-8")
    return text, out


def finish_run(output_dir: str, trainer=None) -> None:
    """End of training (main process only): dashboard PNG and summary.md in ``output_dir``, summary printed.

    Never raises: the model is already saved, a plotting problem must not fail the run.
    """
    if trainer is not None:
        if not trainer.is_world_process_zero():
            return
        writer = _tb_writer(trainer)
        if writer is not None:
            writer.flush()
    elif int(os.environ.get("RANK", "0")) != 0:
        return
    logger.info("Run finished; logs and checkpoints are in %s", output_dir)
    try:
        text, summary_path = write_summary(output_dir)
        print(text, flush=True)
        png = render_dashboard(output_dir)
        logger.info("Dashboard: %s; summary: %s", png, summary_path)
    except FileNotFoundError as exc:
        logger.info("No dashboard: %s", exc)
    except Exception as exc:  # noqa: BLE001
        logger.warning("Could not write the dashboard/summary of %s: %s", output_dir, exc)


# ============================================================================ command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python logging_utils.py",
        description="Dashboard (PNG) and summary of a DAPO run, read from the TensorBoard event files under "
        "OUTPUT_DIR.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    dash = sub.add_parser("dashboard", help="render the key curves to a PNG (default OUTPUT_DIR/dashboard.png)")
    dash.add_argument("output_dir")
    dash.add_argument("--out", help="PNG path")
    summ = sub.add_parser("summary", help="print first/last/best of the key metrics; write OUTPUT_DIR/summary.md")
    summ.add_argument("output_dir")
    summ.add_argument("--out", help="summary file path")
    opts = parser.parse_args(argv)
    if not os.path.isdir(opts.output_dir):
        print(f"error: {opts.output_dir} is not a directory", file=sys.stderr)
        return 2
    try:
        if opts.command == "dashboard":
            print(render_dashboard(opts.output_dir, opts.out))
        else:
            text, out = write_summary(opts.output_dir, opts.out)
            print(text)
            print(f"(written to {out})")
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
