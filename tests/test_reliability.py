"""Reliability: exact resume after SIGKILL, fallback from a checkpoint killed mid-save, SIGTERM, NaN guard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import reliability

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = [sys.executable, "tests/reliability_run.py"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _run(out, steps, *extra, timeout=300):
    proc = subprocess.run([*SCRIPT, str(out), str(steps), *extra], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.load(open(os.path.join(out, "final.json"))), proc


def _start(out, steps, *extra):
    return subprocess.Popen([*SCRIPT, str(out), str(steps), *extra], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def _wait_for(predicate, proc, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_sigkill_then_resume_matches_the_uninterrupted_run(tmp_path):
    full, _ = _run(tmp_path / "full", 8)
    part = tmp_path / "part"
    proc = _start(part, 8, "--slow-reward", "0.3")
    _wait_for(lambda: os.path.exists(part / "checkpoint-4" / "trainer_state.json"), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(part / "final.json")
    resumed, _ = _run(part, 8)
    assert resumed["resumed_from"].endswith("checkpoint-4") or resumed["resumed_from"].endswith("checkpoint-6")
    # Bitwise: the same rollouts (prompt stream, RNG) and the same updates.
    assert resumed["rewards"] == full["rewards"]
    assert resumed["weights"] == full["weights"]


def test_kill_during_checkpoint_save_falls_back_to_the_previous_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = _start(out, 8, "--slow-save", "3")
    # checkpoint-4's weights exist but its trainer_state.json is not written yet: kill inside the save.
    _wait_for(lambda: os.path.exists(out / "checkpoint-4" / "model.safetensors")
              and os.path.exists(out / "checkpoint-2" / "trainer_state.json"), proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(out / "checkpoint-4" / "trainer_state.json")
    assert reliability.checkpoint_problems(str(out / "checkpoint-4"), True)
    assert reliability.find_resumable_checkpoint(str(out), True) == str(out / "checkpoint-2")
    resumed, proc = _run(out, 8)
    assert resumed["resumed_from"].endswith("checkpoint-2")
    assert "Skipping incomplete checkpoint" in proc.stderr


def test_corrupt_weights_are_detected(tmp_path):
    ckpt = tmp_path / "checkpoint-3"
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"\x00\x01garbage")
    assert any("model.safetensors is unreadable" in p for p in reliability.checkpoint_problems(str(ckpt)))
    assert reliability.find_resumable_checkpoint(str(tmp_path)) is None


def test_sigterm_saves_a_checkpoint_and_exits_nonzero(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "train_dapo.py", "--config", "recipes/quick_test.yaml", "--output_dir", str(out),
           "--max_steps", "40", "--report_to", "none", "--max_completion_length", "24", "--overlong_buffer_len", "8"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "step 1/40" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, "".join(lines)[-2000:] + rest[-2000:]
    saved = reliability.list_checkpoints(str(out))
    assert saved and not reliability.checkpoint_problems(saved[0])
    assert "Stopped by signal 15" in rest


def test_non_finite_gradients_skip_the_step_and_stop_after_a_streak():
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    counters = {"skipped": 0, "in_a_row": 0}
    reliability.guard_optimizer(optimizer, max_in_a_row=2, counters=counters)
    before = model.weight.detach().clone()
    model(torch.tensor([[float("nan"), 1.0]])).sum().backward()
    optimizer.step()
    assert torch.equal(model.weight, before) and counters == {"skipped": 1, "in_a_row": 1}
    optimizer.zero_grad()
    model(torch.tensor([[1.0, 1.0]])).sum().backward()
    optimizer.step()
    assert not torch.equal(model.weight, before) and counters["in_a_row"] == 0
    for _ in range(1):
        model(torch.tensor([[float("inf"), 1.0]])).sum().backward()
        optimizer.step()
    model(torch.tensor([[float("inf"), 1.0]])).sum().backward()
    with pytest.raises(reliability.NonFiniteUpdateError, match="2 optimizer steps in a row"):
        optimizer.step()


def test_output_dir_of_another_run_is_refused(tmp_path):
    ident = reliability.run_identity("smollm2-135m", "arithmetic", 42, True)
    reliability.check_run_identity(str(tmp_path), ident)
    (tmp_path / "checkpoint-2").mkdir()
    reliability.check_run_identity(str(tmp_path), ident)  # same run: fine
    with pytest.raises(ValueError, match="holds checkpoints of a different run.*seed: 42 there vs 7 now"):
        reliability.check_run_identity(str(tmp_path), reliability.run_identity("smollm2-135m", "arithmetic", 7, True))
