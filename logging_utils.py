"""Metrics, console output and run summaries for DAPO training (TensorBoard / W&B through HF Trainer)."""

from __future__ import annotations

import logging
import math
import time

from transformers import TrainerCallback

logger = logging.getLogger("dapo")

# Metric names promised by the DAPO README, as aliases of TRL's own metric names.
METRIC_ALIASES = {
    "reward/mean": "reward",
    "reward/std": "reward_std",
    "clip_fraction": "clip_ratio/region_mean",
    "clip_fraction/low": "clip_ratio/low_mean",
    "clip_fraction/high": "clip_ratio/high_mean",
    "overlong/mean_penalty": "rewards/overlong_penalty/mean",
}


def add_metric_aliases(metrics: dict[str, list[float]]) -> None:
    """Add the DAPO names next to TRL's (in place, on the per-step metric lists)."""
    for alias, source in METRIC_ALIASES.items():
        if source in metrics and metrics[source]:
            metrics[alias] = list(metrics[source])


class ConsoleLogCallback(TrainerCallback):
    """One readable line per logged step on the main process."""

    def __init__(self):
        self._start = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "reward" not in logs:
            return
        elapsed = time.time() - (self._start or time.time())
        eta = elapsed / max(state.global_step, 1) * max(state.max_steps - state.global_step, 0)

        def fmt(key, spec=".3f"):
            value = logs.get(key)
            return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)

        line = (
            f"[step {state.global_step}/{state.max_steps}] reward {fmt('reward')} acc {fmt('acc')} "
            f"clip low/high {fmt('clip_ratio/low_mean', '.4f')}/{fmt('clip_ratio/high_mean', '.4f')} "
            f"len {fmt('completions/mean_length', '.1f')} entropy {fmt('entropy')} "
            f"kept {fmt('dynamic_sampling/groups_trained', '.0f')} "
            f"elapsed {elapsed:.0f}s eta {eta:.0f}s"
        )
        print(line, flush=True)


def on_trainer_log(trainer, logs: dict, mode: str) -> None:
    """Called by DAPOTrainer.log before TRL averages ``trainer._metrics[mode]`` into ``logs``."""
    add_metric_aliases(trainer._metrics[mode])


def default_callbacks(args) -> list:
    return [ConsoleLogCallback()]


def finish_run(output_dir: str) -> None:
    logger.info("Run finished; logs and checkpoints are in %s", output_dir)
