"""Keeping long runs alive: checkpoint validation and auto-resume, pre-emption, non-finite updates.

* ``find_resumable_checkpoint``: the newest checkpoint that was written completely (a run killed
  during a save leaves a partial folder; it is skipped with a warning and the previous one is used).
* ``check_run_identity``: refuse to resume an output directory that holds another run's checkpoints.
* ``PreemptionCallback``: on SIGTERM / SIGINT, save a checkpoint at the end of the current optimizer
  step, stop, and let ``main`` exit non-zero (128 + signal number).
* ``guard_optimizer``: skip (and count) an optimizer step whose gradients are not finite; stop the
  run with a clear message after ``max_nonfinite_updates`` such steps in a row.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal

import torch
from transformers import TrainerCallback

logger = logging.getLogger("dapo")

RUN_FILE = "dapo_run.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin")


def checkpoint_problems(path: str, needs_dapo_state: bool = False) -> list[str]:
    """What is missing or broken in a checkpoint folder (empty list = resumable)."""
    problems = []
    state = os.path.join(path, "trainer_state.json")
    # HF Trainer writes trainer_state.json after the weights, optimizer, scheduler and RNG states,
    # so a readable one means the rest was written.
    try:
        with open(state) as f:
            json.load(f)
    except FileNotFoundError:
        problems.append("trainer_state.json is missing (the save was interrupted)")
    except (OSError, ValueError) as exc:
        problems.append(f"trainer_state.json is unreadable ({exc})")
    if not any(os.path.exists(os.path.join(path, w)) for w in _WEIGHT_FILES):
        problems.append("no model weights")
    for name in ("model.safetensors", "adapter_model.safetensors"):
        weights = os.path.join(path, name)
        if os.path.exists(weights):
            try:
                from safetensors import safe_open

                with safe_open(weights, framework="pt") as f:
                    f.keys()
            except Exception as exc:  # truncated file, bad header
                problems.append(f"{name} is unreadable ({type(exc).__name__})")
    if needs_dapo_state and not os.path.exists(os.path.join(path, "dapo_state.json")):
        problems.append("dapo_state.json (dynamic-sampling prompt stream) is missing")
    return problems


def list_checkpoints(output_dir: str) -> list[str]:
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(output_dir) if (m := _CHECKPOINT_RE.match(name))]
    return [os.path.join(output_dir, name) for _, name in sorted(found, reverse=True)]


def find_resumable_checkpoint(output_dir: str, needs_dapo_state: bool = False) -> str | None:
    """Newest complete checkpoint in ``output_dir``; incomplete newer ones are reported and skipped."""
    for path in list_checkpoints(output_dir):
        problems = checkpoint_problems(path, needs_dapo_state)
        if not problems:
            return path
        logger.warning("Skipping incomplete checkpoint %s: %s. Falling back to the previous one.", path, "; ".join(problems))
    return None


def run_identity(model: str, dataset: str | None, seed: int, filter_groups: bool) -> dict:
    return {"model_name_or_path": model, "dataset_name": dataset, "seed": seed, "filter_groups_enable": filter_groups}


def check_run_identity(output_dir: str, identity: dict) -> None:
    """Write the run's identity on first use; refuse to resume another run's output directory."""
    path = os.path.join(output_dir, RUN_FILE)
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        different = {k: (previous.get(k), v) for k, v in identity.items() if previous.get(k) != v}
        if different and list_checkpoints(output_dir):
            details = ", ".join(f"{k}: {old!r} there vs {new!r} now" for k, (old, new) in different.items())
            raise RunIdentityError(
                f"--output_dir {output_dir} holds checkpoints of a different run ({details}). Use another "
                "--output_dir, or pass --auto_resume false to start over in this one."
            )
    os.makedirs(output_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(identity, f, indent=1)


class PreemptionCallback(TrainerCallback):
    """Turn SIGTERM / SIGINT into "checkpoint now, then stop" at the next optimizer-step boundary."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self.received: int | None = None
        self._previous = {}

    def _handler(self, signum, frame):
        if self.received is not None:  # second signal: give up waiting for the step to end
            raise KeyboardInterrupt
        self.received = signum
        logger.warning("Received signal %d: saving a checkpoint at the end of this step, then stopping.", signum)

    def on_train_begin(self, args, state, control, **kwargs):
        for sig in self.signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def _any_process_signalled(self) -> bool:
        flag = 1.0 if self.received is not None else 0.0
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            from accelerate import PartialState

            tensor = torch.tensor([flag], device=PartialState().device)
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
            flag = tensor.item()
        return flag > 0

    def on_step_end(self, args, state, control, **kwargs):
        # Every process must agree, or only some of them would enter the collective checkpoint save.
        if self._any_process_signalled():
            if self.received is None:
                self.received = signal.SIGTERM
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class RunIdentityError(ValueError):
    """--output_dir holds checkpoints of a different run."""


class NonFiniteUpdateError(RuntimeError):
    pass


def guard_optimizer(optimizer, max_in_a_row: int, counters: dict) -> None:
    """Wrap ``optimizer.step``: skip steps whose gradients contain NaN/inf (counted in ``counters``)."""
    step = optimizer.step

    def guarded_step(*args, **kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        finite = all(torch.isfinite(n) for n in torch._foreach_norm(grads)) if grads else True
        if finite:
            counters["in_a_row"] = 0
            return step(*args, **kwargs)
        counters["skipped"] = counters.get("skipped", 0) + 1
        counters["in_a_row"] = counters.get("in_a_row", 0) + 1
        optimizer.zero_grad(set_to_none=True)
        logger.warning("Non-finite gradients: optimizer step skipped (%d in a row).", counters["in_a_row"])
        if counters["in_a_row"] >= max_in_a_row > 0:
            raise NonFiniteUpdateError(
                f"{counters['in_a_row']} optimizer steps in a row had non-finite gradients (NaN/inf loss). "
                "Lower --learning_rate, check the rewards and data (reward/bad_ground_truth), keep "
                "--max_grad_norm, or raise --max_nonfinite_updates. The last checkpoint is intact."
            )
        return None

    optimizer.step = guarded_step


def is_finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
