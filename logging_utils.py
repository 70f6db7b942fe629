"""Monitoring a DAPO run while it trains: metric names, derived metrics, completion samples, console line.

Everything reaches TensorBoard and W&B through the HF Trainer's ``log`` (TensorBoardCallback and
WandbCallback write a metric ``name`` as ``train/<name>``), so both backends see the same names.
docs/metrics.md lists every metric, its meaning and what a healthy DAPO curve looks like. After the run,
run_report.py turns the event files into a dashboard and a summary.

Used by train_dapo.py:
  * ``RunMonitor``: DAPOTrainer owns one and calls ``on_log(trainer, mode)`` from its ``log``, before TRL
    averages ``trainer._metrics[mode]`` into the logged values: adds the metric aliases and the derived
    metrics (step-time split, tokens per second) and, every ``args.log_samples_every`` steps, logs a sample
    of completions (TensorBoard text panel, W&B table, ``<output_dir>/samples.jsonl``).
  * ``default_callbacks(args)``: the console line (``ConsoleLogCallback``); checks ``--report_to``.
  * ``quiet_step_logs(trainer)``: with the console line, the progress bar stops printing each step's dict.
"""

from __future__ import annotations

import collections
import datetime
import json
import logging
import math
import os
import sys
import time

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from chat_text import message_text
from dataset_utils import extract_problem

logger = logging.getLogger("dapo")

# Names a DAPO user looks for that TRL logs under other names (docs/metrics.md, "Aliases"): the DAPO README's
# reward/clip names and verl's response-length names. Every other metric keeps TRL's name.
METRIC_ALIASES = {
    "reward/mean": "reward",
    "reward/std": "reward_std",
    "clip_fraction": "clip_ratio/region_mean",
    "response_length/mean": "completions/mean_length",
    "response_length/min": "completions/min_length",
    "response_length/max": "completions/max_length",
    "response_length/clip_ratio": "completions/clipped_ratio",
}

SAMPLES_FILE = "samples.jsonl"
SAMPLES_TAG = "train/samples"  # TensorBoard text panel and W&B table: the same name in both
SAMPLE_FIELDS = (
    "step", "index", "problem", "prompt", "completion", "answer", "pred", "score", "reward", "advantage", "rewards"
)


def add_metric_aliases(metrics: dict[str, list[float]]) -> None:
    """Add the aliases next to TRL's names (in place, on the per-step metric lists)."""
    for alias, source in METRIC_ALIASES.items():
        if source in metrics and metrics[source]:
            metrics[alias] = list(metrics[source])


# ============================================================================ derived metrics
class RunMonitor:
    """What DAPOTrainer adds to each log (``on_log``): the metric aliases, the derived metrics and, now and
    then, a sample of completions.

    The derived metrics are the step-time split and the throughput. A rollout (generation + scoring) happens on the
    first optimizer step of every cycle of ``steps_per_rollout`` steps (num_mini_batches x num_iterations); the other
    steps of the cycle only update. Per-window figures would therefore jump between "almost all generation" and "no
    generation", so the fractions and the throughput are computed over a trailing window of the last
    ``steps_per_rollout`` optimizer steps (one rollout cycle). All times are TRL's ``step_time`` (wall time of the
    forward/backward micro-steps of an optimizer step, which includes the rollout done inside them) and DAPOTrainer's
    ``timing/generation_s`` / ``timing/scoring_s``.
    """

    def __init__(self, steps_per_rollout: int = 1, initial_tokens: int | None = 0):
        self.steps_per_rollout = max(1, int(steps_per_rollout))
        self.tokens_seen = initial_tokens  # None: taken from the trainer at the first log of train()
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
        out = {"timing/update_s": max(total - gen - score, 0.0) / n}
        if w_total > 0:
            w_update = max(w_total - w_gen - w_score, 0.0)
            out["timing/generation_frac"] = w_gen / w_total
            out["timing/scoring_frac"] = w_score / w_total
            out["timing/update_frac"] = w_update / w_total
            out["perf/tokens_per_second"] = w_tokens / w_total
        return out

    def on_log(self, trainer, mode: str) -> None:
        """From DAPOTrainer.log, before TRL averages ``trainer._metrics[mode]`` into the logged values."""
        metrics = trainer._metrics[mode]
        add_metric_aliases(metrics)
        if mode != "train":
            return
        if self.tokens_seen is None:  # count from where this train() call (re)started
            initial = getattr(trainer, "_initial_num_input_tokens_seen", None)
            self.tokens_seen = int((trainer.state.num_input_tokens_seen if initial is None else initial) or 0)
        for name, value in self.update(metrics, int(trainer.state.num_input_tokens_seen or 0)).items():
            metrics[name] = [value]
        try:
            maybe_log_samples(trainer, self)
        except Exception as exc:  # a sample log must never stop a training run
            logger.warning("Could not log completion samples: %s", exc)


def steps_per_rollout(args) -> int:
    """Optimizer steps that share one rollout: num_mini_batches x num_iterations."""
    spg = getattr(args, "steps_per_generation", None) or getattr(args, "gradient_accumulation_steps", 1)
    gas = max(1, getattr(args, "gradient_accumulation_steps", 1) or 1)
    return max(1, spg // gas) * max(1, getattr(args, "num_iterations", 1) or 1)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# ============================================================================ completion samples
def samples_every(args) -> int:
    return int(getattr(args, "log_samples_every", 10) or 0)


def maybe_log_samples(trainer, monitor: RunMonitor) -> list[dict] | None:
    """Log a sample of the latest rollout's completions every ``args.log_samples_every`` steps.

    The first rollout is always sampled; afterwards a sample is due whenever the step count crosses a
    multiple of N, and is written at the first log whose rollout is new (the optimizer steps between two
    rollouts reuse the same completions, which are not logged twice). 0 disables sample logging.
    """
    args = trainer.args
    every = samples_every(args)
    if every <= 0 or not trainer.accelerator.is_main_process:
        return None
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
        for cb in _console_callbacks(trainer):
            cb.write_samples(rows, step)
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
    if "clip_ratio/low_mean" in logs:
        low, high = logs.get("clip_ratio/low_mean"), logs.get("clip_ratio/high_mean")
        parts.append(f"clip lo/hi {_fmt(low, '.4f')}/{_fmt(high, '.4f')}")
    parts.append(f"{_fmt(sec_per_step, '.1f')} s/step")
    parts.append(f"ETA {format_duration(eta_s) if eta_s is not None else '-'}")
    return " | ".join(parts)


def _fmt(value, spec) -> str:
    return format(value, spec) if _finite(value) else "-"


def _is_step_log(logs: dict) -> bool:
    """An optimizer step's metrics (not an eval result or the end-of-training summary)."""
    return "loss" in logs or "reward" in logs


def format_sample_line(row: dict, width: int = 72) -> str:
    """``  What is 3 + 4? -> '3 + 4 = 7' | answer 7, pred 7, reward 1.00`` (the completion on one line, cut)."""
    completion = " ".join(str(row.get("completion") or "").split())
    if len(completion) > width:
        completion = completion[: width - 3] + "..."
    reward = row.get("reward")
    reward = "-" if reward is None else f"{reward:.2f}"
    verdict = f"answer {row.get('answer')}, pred {row.get('pred')}, reward {reward}"
    return f"  {row.get('problem')} -> {completion!r} | {verdict}"


class ConsoleLogCallback(TrainerCallback):
    """One readable line per logged optimizer step, on the main process only.

    Rewards, accuracy, kept groups and length are measured once per rollout; the optimizer steps that
    reuse the rollout show the last values marked with ``*``. Seconds per step is wall time between two
    lines; the ETA uses the average since training (re)started. Each line starts a line of its own, above
    the progress bar (see ``_write``).
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

    def write_samples(self, rows: list[dict], step: int) -> None:
        """A few sampled completions of the rollout, one line each (every field is in samples.jsonl)."""
        self._write(f"[dapo] {len(rows)} sampled completions of the rollout at step {step} "
                    f"(all fields: {SAMPLES_FILE})")
        for row in rows:
            self._write(format_sample_line(row))

    def _write(self, line: str) -> None:
        # The progress bar stays on the line the cursor is on, so the line must not be written straight after it.
        from tqdm.auto import tqdm

        stream = sys.stdout if self._stream is None else self._stream
        if _isatty(stream) or not _bar_shown_on(stream):
            # A terminal: tqdm erases the bar ("\r"), we write, it redraws the bar below. The flush puts the line
            # out before the redraw.
            with tqdm.external_write_mode(file=stream):
                stream.write(line + "\n")
                stream.flush()
        else:
            # A log file or pipe, where "\r" is no line break: end the bar's line (its last state stays there).
            stream.write("\n" + line + "\n")
            stream.flush()


def _bar_shown_on(stream) -> bool:
    """Whether a live tqdm bar writes to the same file or pipe as ``stream`` (e.g. stdout and stderr with 2>&1)."""
    from tqdm.auto import tqdm

    bars = list(getattr(tqdm, "_instances", []))
    return any(hasattr(bar, "start_t") and _same_output(bar.fp, stream) for bar in bars)


def _same_output(a, b) -> bool:
    if a == b:
        return True
    try:
        return os.path.sameopenfile(a.fileno(), b.fileno())
    except (AttributeError, OSError, ValueError):  # no file descriptor (io.UnsupportedOperation is an OSError)
        return False


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _is_eval_log(logs: dict) -> bool:
    """The in-training evaluation's metrics (eval_callback prints its own line for them)."""
    return any(key.startswith("eval_avg@") for key in logs)


# The progress bar / printer the Trainer adds, minus the raw metric dicts they print for every optimizer step
# and evaluation (ConsoleLogCallback and the evaluation print readable lines for those; the end-of-training
# summary still goes through). The full dicts are in TensorBoard / W&B and ``trainer.state.log_history``.
class _WithoutStepDicts:
    def on_log(self, args, state, control, logs=None, **kwargs):
        if not (logs and (_is_step_log(logs) or _is_eval_log(logs))):
            super().on_log(args, state, control, logs=logs, **kwargs)


class QuietProgressCallback(_WithoutStepDicts, ProgressCallback):
    pass


class QuietPrinterCallback(_WithoutStepDicts, PrinterCallback):  # with --disable_tqdm
    pass


def _console_callbacks(trainer) -> list:
    return [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, ConsoleLogCallback)]


def quiet_step_logs(trainer) -> None:
    """With a ConsoleLogCallback among the trainer's callbacks, swap the Trainer's progress bar / printer for
    the quiet version, through the Trainer's callback API."""
    if not _console_callbacks(trainer):
        return
    callbacks = trainer.callback_handler.callbacks
    for loud, quiet in ((ProgressCallback, QuietProgressCallback), (PrinterCallback, QuietPrinterCallback)):
        for cb in [cb for cb in callbacks if type(cb) is loud]:
            trainer.remove_callback(cb)
            trainer.add_callback(quiet)


