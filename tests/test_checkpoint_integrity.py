"""Every file a resume reads is checked; damaged checkpoints are skipped and removed; what killed saves leave is
cleaned up; a full disk gives one clear message."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import reliability
from tests.test_reliability import ENV, ROOT, SCRIPT, _run


@pytest.fixture(scope="module")
def six_steps(tmp_path_factory):
    """A finished toy run with dynamic sampling: checkpoints 2, 4, 6, and its 8-step continuation's result."""
    base = tmp_path_factory.mktemp("integrity")
    full, _ = _run(base / "full", 8)
    _run(base / "six", 6)
    return base / "six", full


def _truncate(path, keep=0.5):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))


DAMAGE = {
    "truncated optimizer.pt": (lambda c: _truncate(c / "optimizer.pt"), "optimizer.pt"),
    "truncated dapo_state.json": (lambda c: _truncate(c / "dapo_state.json"), "dapo_state.json"),
    "truncated weights": (lambda c: _truncate(c / "model.safetensors", 0.9), "model.safetensors"),
    "missing optimizer.pt": (lambda c: os.remove(c / "optimizer.pt"), "optimizer.pt is missing"),
    "missing scheduler.pt": (lambda c: os.remove(c / "scheduler.pt"), "scheduler.pt is missing"),
    "missing rng_state.pth": (lambda c: os.remove(c / "rng_state.pth"), "rng_state.pth is missing"),
    "truncated rng_state.pth": (lambda c: _truncate(c / "rng_state.pth"), "rng_state.pth"),
    "missing trainer_state.json": (lambda c: os.remove(c / "trainer_state.json"), "trainer_state.json is missing"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_every_file_resume_reads_is_checked(six_steps, tmp_path, damage):
    run, _ = six_steps
    out = tmp_path / "run"
    shutil.copytree(run, out)
    assert reliability.find_resumable_checkpoint(str(out), True) == str(out / "checkpoint-6")
    damage_fn, expected = DAMAGE[damage]
    damage_fn(out / "checkpoint-6")
    problems = reliability.checkpoint_problems(str(out / "checkpoint-6"), True)
    assert any(expected in p for p in problems), problems
    assert reliability.find_resumable_checkpoint(str(out), True) == str(out / "checkpoint-4")


def test_a_truncated_optimizer_falls_back_and_the_run_continues_exactly(six_steps, tmp_path):
    run, full = six_steps
    out = tmp_path / "run"
    shutil.copytree(run, out)
    os.remove(out / "final.json")
    _truncate(out / "checkpoint-6" / "optimizer.pt")
    resumed, proc = _run(out, 8)
    assert resumed["resumed_from"].endswith("checkpoint-4")
    assert "Skipping incomplete checkpoint" in proc.stderr and "optimizer.pt" in proc.stderr
    assert resumed["weights"] == full["weights"] and resumed["rewards"] == full["rewards"]
    # The bad checkpoint was skipped, then replaced when the run reached its step again.
    assert not reliability.checkpoint_problems(str(out / "checkpoint-6"), True)


def test_a_killed_weights_write_leaves_nothing_behind(six_steps, tmp_path):
    run, full = six_steps
    out = tmp_path / "run"
    shutil.copytree(run, out)
    os.remove(out / "final.json")
    shutil.rmtree(out / "checkpoint-6")
    partial = out / "checkpoint-6"
    partial.mkdir()
    # A real save killed mid-write: safetensors writes into a .tmpXXXXXX file, then renames it.
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, torch; from safetensors.torch import save_file\n"
        "t = {'w': torch.zeros(64 << 20, dtype=torch.uint8)}\n"
        "while True: save_file(t, sys.argv[1] + '/model.safetensors')"), str(partial)], env=ENV)
    deadline = time.time() + 120
    while not any(n.startswith(".tmp") for n in os.listdir(partial)):
        assert time.time() < deadline and writer.poll() is None
        time.sleep(0.005)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    [tmp] = [n for n in os.listdir(partial) if n.startswith(".tmp")]
    assert os.path.getsize(partial / tmp) > 0
    resumed, proc = _run(out, 8)
    assert resumed["resumed_from"].endswith("checkpoint-4")
    assert f"Removed the incomplete checkpoint {partial}" in proc.stderr
    leftovers = [os.path.join(r, n) for r, _, files in os.walk(out) for n in files if n.startswith(".tmp")]
    assert leftovers == []
    assert not reliability.checkpoint_problems(str(partial), True)
    assert resumed["weights"] == full["weights"]


def test_a_full_disk_gives_a_clear_message(tmp_path):
    mnt = tmp_path / "small_disk"
    mnt.mkdir()
    # A real full disk: a 600 KiB tmpfs holds one toy checkpoint (~330 KiB) but not two.
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        out = mnt / "run"
        proc = subprocess.run([*SCRIPT, str(out), "6"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
        assert proc.returncode != 0
        assert "DiskFullError" in proc.stderr and "No space left on the disk of" in proc.stderr
        assert "The partial checkpoint was removed; the earlier checkpoints are intact" in proc.stderr
        saved = reliability.list_checkpoints(str(out))
        assert [os.path.basename(c) for c in saved] == ["checkpoint-2"]
        assert not reliability.checkpoint_problems(saved[0], True)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
