"""Sharded training (DeepSpeed ZeRO, FSDP2) as started by `accelerate launch --config_file configs/<name>.yaml`.

* ``check_launch``: before any weights load, stop with a clear error when a sharded config was asked for but
  the processes would not shard (or see a different number of processes than were started); returns a
  callback that checks the real layout once the trainer has wrapped the model.
* ``enable_fsdp_on_cpu``: lets FSDP2 shard over CPU processes (gloo); CPU only.
* ``shutdown``: destroy the process group at exit.

The launcher tells the training processes what was asked for through environment variables
(ACCELERATE_USE_DEEPSPEED / ACCELERATE_DEEPSPEED_ZERO_STAGE, ACCELERATE_USE_FSDP / FSDP_VERSION, WORLD_SIZE).
"""

from __future__ import annotations

import os

import torch
from transformers import TrainerCallback


class ShardingError(ValueError):
    """A sharded launch that would not (or did not) shard."""


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def requested() -> dict | None:
    """What the launcher asked for: {"kind": "deepspeed", "stage": 3} / {"kind": "fsdp", "version": 2} / None."""
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        return {"kind": "deepspeed", "stage": int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"))}
    if _flag("ACCELERATE_USE_FSDP"):
        return {"kind": "fsdp", "version": int(os.environ.get("FSDP_VERSION", "1"))}
    return None


def enable_fsdp_on_cpu() -> bool:
    """Make accelerate use FSDP on CPU processes. Returns whether the switch is active.

    Why: accelerate 1.15 (AcceleratorState.__init__) turns FSDP on only for GPU-like process types; with CPU
    processes (MULTI_CPU, gloo) an FSDP config silently trains plain DDP, although FSDP2's fully_shard works
    over gloo. This wraps AcceleratorState.__init__ to switch MULTI_CPU to FSDP after accelerate's own set-up,
    every time the state is (re)created. Never active on a machine with CUDA: there accelerate needs no help.
    """
    if torch.cuda.is_available():
        return False
    from accelerate.state import AcceleratorState, DistributedType, PartialState

    if getattr(AcceleratorState.__init__, "_fsdp_on_cpu", False):
        return True
    original = AcceleratorState.__init__

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        plugin = kwargs.get("fsdp_plugin")
        if self.distributed_type == DistributedType.MULTI_CPU and plugin is not None:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as accelerate does

    __init__._fsdp_on_cpu = True
    AcceleratorState.__init__ = __init__
    return True


def check_launch(training_args) -> TrainerCallback:
    """Refuse a launch that would silently not shard. Cheap: sets up the process group, loads no weights."""
    started = int(os.environ.get("WORLD_SIZE", "1"))
    want = requested()
    cpu = bool(training_args.use_cpu) or _flag("ACCELERATE_USE_CPU")
    if want and want["kind"] == "deepspeed":
        try:
            import deepspeed  # noqa: F401
        except Exception as exc:
            raise ShardingError(f"A DeepSpeed config was launched but deepspeed cannot be imported ({exc}): "
                                "`pip install -r requirements.txt` installs the pinned deepspeed.") from exc
        if cpu:
            raise ShardingError(
                "A DeepSpeed config was launched with --use_cpu true, and accelerate then turns DeepSpeed off (plain "
                "DDP). On CPU processes run DeepSpeed with --use_cpu false --ddp_backend gloo and DS_ACCELERATOR=cpu "
                "(`USE_CPU=1 ACCELERATE_CONFIG=... ./run_dapo.sh` sets these).")
    if want and want["kind"] == "fsdp" and not torch.cuda.is_available():
        if want["version"] != 2:
            raise ShardingError(
                "FSDP on CPU processes is supported with FSDP2 only (fsdp_version: 2, configs/fsdp2.yaml)."
            )
        if not cpu:
            raise ShardingError(
                "An FSDP config was launched on a machine without CUDA but without --use_cpu true: every process "
                "would train alone. Pass --use_cpu true (`USE_CPU=1 ACCELERATE_CONFIG=fsdp2 ./run_dapo.sh` does).")
        enable_fsdp_on_cpu()
    seen = training_args.world_size  # sets up the process group (accelerate's PartialState)
    if seen != started:
        hint = (" Without CUDA, DeepSpeed needs --ddp_backend gloo (run_dapo.sh with USE_CPU=1 passes it)."
                if want and want["kind"] == "deepspeed" else "")
        raise ShardingError(f"The launcher started {started} processes but training sees a world of {seen}: each "
                            f"process would train on its own.{hint}")
    return ShardingCheck(want, started)


def layout_problem(want: dict | None, world: int, model) -> str | None:
    """None when the live accelerator state and the wrapped model match what was asked for, else the problem."""
    if want is None:
        return None
    from accelerate.state import AcceleratorState, DistributedType

    state = AcceleratorState()
    if state.num_processes != world:
        return f"the trainer runs {state.num_processes} processes, {world} were started"
    if want["kind"] == "deepspeed":
        if state.distributed_type != DistributedType.DEEPSPEED:
            return f"DeepSpeed ZeRO-{want['stage']} was asked for, accelerate runs {state.distributed_type.value}"
        stage = state.deepspeed_plugin.zero_stage
        if stage != want["stage"]:
            return f"DeepSpeed ZeRO-{want['stage']} was asked for, the plugin says ZeRO-{stage}"
    else:
        from torch.distributed.tensor import DTensor

        if state.distributed_type != DistributedType.FSDP:
            return f"FSDP was asked for, accelerate runs {state.distributed_type.value}"
        if want["version"] == 2 and not any(isinstance(p, DTensor) for p in model.parameters()):
            return "FSDP2 was asked for, but no parameter of the wrapped model is sharded (DTensor)"
    return None


class ShardingCheck(TrainerCallback):
    """At train begin (model and optimizer wrapped): the run really is sharded as launched."""

    def __init__(self, want: dict | None, world: int):
        self.want, self.world = want, world

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        problem = layout_problem(self.want, self.world, model)
        if problem:
            raise ShardingError(f"Sharded launch did not shard: {problem}.")


def shutdown() -> None:
    """Destroy the process group at exit: without it, gloo runs sometimes abort at interpreter shutdown."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
