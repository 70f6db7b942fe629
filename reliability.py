"""Keeping long runs alive: checkpoint validation and auto-resume, pre-emption, non-finite updates.

* ``prepare_output_dir``: lock the output directory (one run at a time), check and record which run
  owns it (``dapo_run.json``), remove what killed saves left, and pick the checkpoint to resume from.
* ``find_resumable_checkpoint`` / ``checkpoint_problems``: the newest checkpoint whose every file is
  intact (``write_manifest`` lists them last; truncated or missing files are caught); partial ones are
  skipped with a warning and removed, and the previous one is used.
* ``save_rollout_state`` / ``load_rollout_state``: the rollout in flight, so that a resume from any
  optimizer step continues exactly.
* ``explain_disk_full``: one clear error for a checkpoint write that ran out of disk space.
* ``PreemptionCallback``: on SIGTERM / SIGINT, save a checkpoint at the end of the current optimizer
  step, stop, and let ``main`` exit non-zero (128 + signal number).
* ``guard_optimizer``: skip (and count) an optimizer step whose gradients are not finite; stop the
  run with a clear message after ``max_nonfinite_updates`` such steps in a row.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import time
import zipfile

import torch
from transformers import TrainerCallback

logger = logging.getLogger("dapo")

RUN_FILE = "dapo_run.json"
LOCK_FILE = "dapo.lock"
MANIFEST_FILE = "dapo_checkpoint.json"  # written last: lists every file of the checkpoint with its size
HASH_LIMIT = 16 << 20  # files up to this size are also hashed in the manifest
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin")


# ---------------------------------------------------------------------------- checkpoint integrity
def _is_temp_file(name: str) -> bool:
    # safetensors writes weights to a ``.tmpXXXXXX`` file in the target folder, then renames it.
    return name.startswith(".tmp")


def _walk_files(path: str) -> dict[str, int]:
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            if name == MANIFEST_FILE or _is_temp_file(name):
                continue
            full = os.path.join(root, name)
            out[os.path.relpath(full, path)] = os.path.getsize(full)
    return out


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(path: str) -> None:
    """Record every file of a finished checkpoint (size; SHA-256 of the small ones), written last and atomically.

    Its presence marks the checkpoint complete; sizes catch truncation of the model-sized files and the
    hashes catch any damage of the small ones (JSON states, RNG, scheduler)."""
    files = {}
    for rel, size in sorted(_walk_files(path).items()):
        entry = {"size": size}
        if size <= HASH_LIMIT:
            entry["sha256"] = _sha256(os.path.join(path, rel))
        files[rel] = entry
    atomic_write_json(os.path.join(path, MANIFEST_FILE), {"version": 1, "files": files})


def atomic_write_json(path: str, data) -> None:
    tmp = f"{path}.partial"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _zip_problem(path: str) -> str | None:
    """torch.save files are zip archives whose directory sits at the end: a truncated one has none."""
    try:
        with zipfile.ZipFile(path) as z:
            z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        return f"{os.path.basename(path)} is truncated or unreadable ({type(exc).__name__})"
    return None


def checkpoint_problems(path: str, needs_dapo_state: bool = False) -> list[str]:
    """What is missing or broken in a checkpoint folder (empty list = resumable).

    Covers every file a resume reads: weights, optimizer, scheduler, RNG states, trainer and DAPO state."""
    problems = []
    manifest_path = os.path.join(path, MANIFEST_FILE)
    manifest = None
    if os.path.exists(manifest_path):
        try:
            with open(manifest_path) as f:
                manifest = json.load(f)["files"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"{MANIFEST_FILE} is unreadable ({type(exc).__name__})")
    if manifest is not None:
        for rel, entry in manifest.items():
            full = os.path.join(path, rel)
            if not os.path.exists(full):
                problems.append(f"{rel} is missing")
            elif os.path.getsize(full) != entry["size"]:
                problems.append(f"{rel} has {os.path.getsize(full)} bytes, {entry['size']} were written (truncated)")
            elif "sha256" in entry and _sha256(full) != entry["sha256"]:
                problems.append(f"{rel} is damaged (checksum differs)")
    present = set(os.listdir(path)) if os.path.isdir(path) else set()
    # Structural checks: also for a checkpoint whose save was killed after trainer_state.json but before the
    # manifest, or one written by plain TRL.
    try:
        with open(os.path.join(path, "trainer_state.json")) as f:
            json.load(f)
    except FileNotFoundError:
        problems.append("trainer_state.json is missing (the save was interrupted)")
    except (OSError, ValueError) as exc:
        problems.append(f"trainer_state.json is unreadable ({exc})")
    if not present & set(_WEIGHT_FILES):
        problems.append("no model weights")
    for name in ("model.safetensors", "adapter_model.safetensors"):
        if name in present:
            try:
                from safetensors import safe_open

                with safe_open(os.path.join(path, name), framework="pt") as f:
                    f.keys()
            except Exception as exc:  # truncated file, bad header
                problems.append(f"{name} is unreadable ({type(exc).__name__})")
    sharded_optimizer = any(n.startswith(("global_step", "optimizer_0")) for n in present)  # DeepSpeed / FSDP
    for name in ("optimizer.pt", "scheduler.pt"):
        if name not in present and not sharded_optimizer:
            problems.append(f"{name} is missing (resuming would restart it from scratch)")
    if not any(n.startswith("rng_state") for n in present):
        problems.append("rng_state*.pth is missing")
    for name in sorted(present):
        if name.endswith((".pt", ".pth")) and (problem := _zip_problem(os.path.join(path, name))):
            problems.append(problem)
    if needs_dapo_state and "dapo_state.json" not in present:
        problems.append("dapo_state.json (dynamic-sampling prompt stream) is missing")
    if "dapo_state.json" in present:
        try:
            with open(os.path.join(path, "dapo_state.json")) as f:
                json.load(f)
        except (OSError, ValueError) as exc:
            problems.append(f"dapo_state.json is unreadable ({type(exc).__name__})")
    return list(dict.fromkeys(problems))


def list_checkpoints(output_dir: str) -> list[str]:
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(output_dir) if (m := _CHECKPOINT_RE.match(name))]
    return [os.path.join(output_dir, name) for _, name in sorted(found, reverse=True)]


def find_resumable_checkpoint(
    output_dir: str, needs_dapo_state: bool = False, remove_skipped: bool = False
) -> str | None:
    """Newest complete checkpoint in ``output_dir``; incomplete newer ones are reported and skipped.

    With ``remove_skipped`` the skipped ones whose save was interrupted (no trainer_state.json, which HF
    writes after everything but the manifest) are deleted: they cannot be used, the resumed run writes
    them again, and a full disk is a common reason why they are incomplete. Others (damaged later, or
    saved without optimizer state on purpose) are only skipped; the resumed run replaces them when it
    reaches their step."""
    for path in list_checkpoints(output_dir):
        problems = checkpoint_problems(path, needs_dapo_state)
        if not problems:
            return path
        logger.warning("Skipping incomplete checkpoint %s: %s. Falling back to the previous one.", path,
                       "; ".join(problems))
        if remove_skipped and not os.path.exists(os.path.join(path, "trainer_state.json")):
            shutil.rmtree(path, ignore_errors=True)
            logger.warning("Removed the incomplete checkpoint %s.", path)
    return None


def remove_temp_files(output_dir: str) -> None:
    """Delete model-sized ``.tmp*`` files left by a save killed mid-write (output dir and its checkpoints)."""
    for folder in [output_dir, *list_checkpoints(output_dir)]:
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            full = os.path.join(folder, name)
            if _is_temp_file(name) and os.path.isfile(full):
                logger.warning("Removing %s (%d bytes), left by a save that was interrupted.", full,
                               os.path.getsize(full))
                os.remove(full)


class DiskFullError(OSError):
    pass


def _is_disk_full(exc: BaseException, folder: str) -> bool:
    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    if "No space left" in text or "os error 28" in text:
        return True
    # torch.save does not pass the errno on ("basic_ios::clear: iostream error", "unexpected pos ..."):
    # judge by the space left.
    return _free_bytes(folder) < 64 << 20


def _free_bytes(folder: str) -> int:
    while folder and not os.path.exists(folder):
        folder = os.path.dirname(folder)
    try:
        return shutil.disk_usage(folder or ".").free
    except OSError:
        return 1 << 62


@contextlib.contextmanager
def explain_disk_full(folder: str):
    """Turn a failed checkpoint write on a full disk into one clear error (and drop the partial checkpoint)."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, DiskFullError) or not _is_disk_full(exc, folder):
            raise
        shutil.rmtree(folder, ignore_errors=True)
        raise DiskFullError(
            errno.ENOSPC,
            f"No space left on the disk of {os.path.dirname(os.path.abspath(folder))} while writing the checkpoint "
            f"{folder} ({_free_bytes(folder) >> 20} MiB free; the write failed with {type(exc).__name__}: "
            f"{str(exc)[:200]}). The partial checkpoint was removed; the earlier checkpoints are intact. Free space "
            "(or set --save_total_limit, or use an --output_dir on a larger disk), then rerun the same command to "
            "resume.",
        ) from exc


# ---------------------------------------------------------------------------- owning an output directory
class OutputDirBusyError(RuntimeError):
    pass


_HELD_LOCKS: dict[str, int] = {}


def lock_output_dir(output_dir: str) -> None:
    """Hold an exclusive lock on ``output_dir`` for the life of this process.

    ``flock`` locks belong to the open file, so the kernel releases them when the process dies, however it
    dies: a killed run's lock never blocks the next one."""
    key = os.path.realpath(output_dir)
    if key in _HELD_LOCKS:
        return
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            # e.g. Lustre mounted without -o flock: run, but say that nothing guards the directory.
            os.close(fd)
            logger.warning("Cannot lock %s (%s): a second run on this --output_dir would not be detected.", path, exc)
            _HELD_LOCKS[key] = -1
            return
        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown process"
        os.close(fd)
        raise OutputDirBusyError(
            f"--output_dir {output_dir} is in use by another training run ({holder}; lock file {path}). Two runs "
            "writing one directory would mix their checkpoints. Wait for that run to end or stop it, or use another "
            "--output_dir. (The lock is released as soon as that process exits, even if it was killed.)"
        ) from None
    os.ftruncate(fd, 0)
    holder = f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
    os.pwrite(fd, holder.encode(), 0)
    _HELD_LOCKS[key] = fd


def run_identity(model: str, dataset: str | None, seed: int, filter_groups: bool) -> dict:
    return {"model_name_or_path": model, "dataset_name": dataset, "seed": seed, "filter_groups_enable": filter_groups}


class RunIdentityError(ValueError):
    """--output_dir (or a checkpoint asked for) cannot be used by this run; the message says what to do."""


def read_run_identity(output_dir: str) -> dict | None:
    path = os.path.join(output_dir, RUN_FILE)
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    except ValueError as exc:
        raise RunIdentityError(
            f"{path} is {'empty' if not text.strip() else 'corrupt'} ({exc}). It records which run owns the "
            f"checkpoints in {output_dir}. If they are this run's, delete the file and rerun; to start over, pass "
            "--start_over true (moves the old checkpoints aside); or use another --output_dir."
        ) from None


def _start_over(output_dir: str) -> str | None:
    """Move the previous run's checkpoints and identity into ``superseded-<time>/`` (nothing is deleted)."""
    old = list_checkpoints(output_dir) + [p for p in [os.path.join(output_dir, RUN_FILE)] if os.path.exists(p)]
    if not old:
        return None
    dest = os.path.join(output_dir, f"superseded-{time.strftime('%Y%m%d-%H%M%S')}")
    while os.path.exists(dest):
        dest += "x"
    os.makedirs(dest)
    for path in old:
        os.replace(path, os.path.join(dest, os.path.basename(path)))
    logger.warning("--start_over: moved the previous run's checkpoints to %s (delete it to free the space).", dest)
    return dest


def check_run_identity(output_dir: str, identity: dict, auto_resume: bool = True, start_over: bool = False,
                       explicit_resume: bool = False) -> None:
    """Refuse to write into an output directory whose checkpoints belong to another run; record this run's identity.

    Starting over where checkpoints exist would interleave two runs' checkpoints (a later auto-resume would
    continue the wrong one), so it takes --start_over, which moves the old ones aside."""
    if start_over:
        _start_over(output_dir)
    elif list_checkpoints(output_dir):
        previous = read_run_identity(output_dir)
        how = ("Use another --output_dir, or pass --start_over true to start over here (the old checkpoints are "
               f"moved to {output_dir}/superseded-<time>/).")
        if previous is None:
            logger.warning("%s holds checkpoints but no %s; adopting them as this run's.", output_dir, RUN_FILE)
        elif different := {k: (previous.get(k), v) for k, v in identity.items() if previous.get(k) != v}:
            details = ", ".join(f"{k}: {old!r} there vs {new!r} now" for k, (old, new) in different.items())
            raise RunIdentityError(f"--output_dir {output_dir} holds checkpoints of a different run ({details}). {how}")
        elif not auto_resume and not explicit_resume:
            raise RunIdentityError(
                f"--output_dir {output_dir} holds checkpoints of this run and --auto_resume is false: starting over "
                f"would mix old and new checkpoints. Pass --auto_resume true to continue the run. {how}"
            )
    os.makedirs(output_dir, exist_ok=True)
    atomic_write_json(os.path.join(output_dir, RUN_FILE), identity)


def prepare_output_dir(output_dir: str, identity: dict, *, auto_resume: bool = True, start_over: bool = False,
                       resume_from_checkpoint: str | None = None, needs_dapo_state: bool = False,
                       is_main_process: bool = True) -> str | None:
    """Lock, check ownership, clean up and choose the checkpoint to resume from (None = start fresh).

    Call on every process; only the main one locks and writes (others must wait for it, e.g. with
    ``TrainingArguments.main_process_first``)."""
    if start_over and resume_from_checkpoint is not None:
        raise RunIdentityError(
            "--start_over true starts a new run; it cannot be combined with --resume_from_checkpoint.")
    if is_main_process:
        lock_output_dir(output_dir)
        check_run_identity(output_dir, identity, auto_resume, start_over, resume_from_checkpoint is not None)
        remove_temp_files(output_dir)
    if resume_from_checkpoint is not None:
        if problems := checkpoint_problems(resume_from_checkpoint, needs_dapo_state):
            raise RunIdentityError(f"--resume_from_checkpoint {resume_from_checkpoint}: " + "; ".join(problems))
        return resume_from_checkpoint
    if not auto_resume or start_over:
        return None
    return find_resumable_checkpoint(output_dir, needs_dapo_state, remove_skipped=is_main_process)


# ---------------------------------------------------------------------------- the rollout in flight
ROLLOUT_FILE = "dapo_rollout_rank{}.pt"


def save_rollout_state(trainer, folder: str) -> None:
    """Persist what GRPOTrainer keeps only in memory: its micro-step counter and, mid-rollout, the rest
    of the current rollout (already generated, scored and split into mini-batches).

    Without them a run resumed from a checkpoint inside a rollout restarts the counter at 0, regenerates
    the rollout and shifts every later rollout boundary."""
    generate_every = trainer.args.steps_per_generation * trainer.num_iterations
    state = {"step": trainer._step, "generate_every": generate_every}
    if trainer._step % generate_every and trainer._buffered_inputs is not None:
        state["buffered_inputs"] = trainer._buffered_inputs
    torch.save(state, os.path.join(folder, ROLLOUT_FILE.format(trainer.accelerator.process_index)))


def load_rollout_state(trainer, checkpoint: str) -> None:
    generate_every = trainer.args.steps_per_generation * trainer.num_iterations
    path = os.path.join(checkpoint, ROLLOUT_FILE.format(trainer.accelerator.process_index))
    if os.path.exists(path):
        state = torch.load(path, map_location=trainer.accelerator.device, weights_only=False)
        if state.get("generate_every") == generate_every:
            trainer._step = state["step"]
            trainer._buffered_inputs = state.get("buffered_inputs")
            return
    # No saved rollout (or a different rollout size): keep the rollout boundaries where they were; the
    # current rollout, if the checkpoint falls inside one, is generated again.
    trainer._step = trainer.state.global_step * trainer.args.gradient_accumulation_steps
    trainer._buffered_inputs = None
    if trainer._step % generate_every:
        logger.warning(
            "%s falls inside a rollout and holds no saved rollout for this configuration: the rest of it is "
            "generated again, so this resume is valid but not an exact continuation.", checkpoint,
        )


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


class NonFiniteUpdateError(RuntimeError):
    pass


def guard_optimizer(optimizer, max_in_a_row: int, counters: dict) -> None:
    """Wrap ``optimizer.step``: skip steps whose gradients contain NaN/inf (counted in ``counters``)."""
    step = optimizer.step

    def guarded_step(*args, **kwargs):
        if counters.get("empty_rollout"):  # nothing to learn from: keep AdamW momentum and decay off the weights
            counters["empty_skipped"] = counters.get("empty_skipped", 0) + 1
            optimizer.zero_grad(set_to_none=True)
            return None
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
