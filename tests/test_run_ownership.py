"""One run per output directory: the lock, the run identity (dapo_run.json) and --start_over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

import reliability
from tests.test_reliability import ENV, ROOT, SCRIPT, _run, _start, _wait_for


def test_a_second_run_on_the_same_output_dir_is_refused_while_the_first_runs(tmp_path):
    out = tmp_path / "run"
    first = _start(out, 6, "--slow-reward", "1.5", "--seed", "0")
    lock = out / reliability.LOCK_FILE
    _wait_for(lambda: os.path.exists(lock) and "pid" in lock.read_text(), first)
    second = subprocess.run([*SCRIPT, str(out), "6", "--seed", "1"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env=ENV)
    assert first.poll() is None, "the first run must still be running"
    assert second.returncode != 0
    assert f"--output_dir {out} is in use by another training run (pid {first.pid} " in second.stderr
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    # Everything in the directory is the first run's.
    assert json.load(open(out / reliability.RUN_FILE))["seed"] == 0
    assert json.load(open(out / "final.json"))["resumed_from"] is None
    assert all(not reliability.checkpoint_problems(c, True) for c in reliability.list_checkpoints(str(out)))


def test_a_killed_runs_lock_does_not_block_the_next_run(tmp_path):
    out = tmp_path / "run"
    proc = _start(out, 4, "--slow-reward", "0.3")
    _wait_for(lambda: os.path.exists(out / "checkpoint-2" / "trainer_state.json"), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The lock file stays behind, naming the dead process; the kernel dropped the lock itself.
    assert (out / reliability.LOCK_FILE).read_text().startswith(f"pid {proc.pid} ")
    resumed, _ = _run(out, 4)
    assert resumed["resumed_from"].endswith("checkpoint-2")


def test_starting_over_in_another_runs_directory_needs_start_over(tmp_path):
    out = tmp_path / "run"
    _run(out, 2, "--seed", "0")
    # --auto_resume false does not bypass the ownership check, and the message does not recommend it.
    refused = subprocess.run([*SCRIPT, str(out), "2", "--seed", "1", "--no-auto-resume"], cwd=ROOT,
                             capture_output=True, text=True, timeout=300, env=ENV)
    assert refused.returncode != 0
    assert "holds checkpoints of a different run (seed: 0 there vs 1 now)" in refused.stderr
    assert "--start_over true" in refused.stderr and "--auto_resume false" not in refused.stderr
    assert json.load(open(out / reliability.RUN_FILE))["seed"] == 0
    # --start_over moves the old run aside and records the new one.
    new, _ = _run(out, 2, "--seed", "1", "--start-over")
    assert new["resumed_from"] is None
    assert json.load(open(out / reliability.RUN_FILE))["seed"] == 1
    [old] = [p for p in os.listdir(out) if p.startswith("superseded-")]
    assert json.load(open(out / old / reliability.RUN_FILE))["seed"] == 0
    assert os.path.exists(out / old / "checkpoint-2" / "trainer_state.json")
    state = json.load(open(out / "checkpoint-2" / "trainer_state.json"))
    assert state["global_step"] == 2


def test_auto_resume_false_over_the_same_runs_checkpoints_is_refused(tmp_path):
    ident = reliability.run_identity("m", "d", 42, True)
    reliability.check_run_identity(str(tmp_path), ident)
    (tmp_path / "checkpoint-2").mkdir()
    reliability.check_run_identity(str(tmp_path), ident)  # resuming the same run: fine
    with pytest.raises(reliability.RunIdentityError, match="would mix old and new checkpoints.*--start_over true"):
        reliability.check_run_identity(str(tmp_path), ident, auto_resume=False)
    reliability.check_run_identity(str(tmp_path), ident, auto_resume=False, start_over=True)
    assert not (tmp_path / "checkpoint-2").exists()


@pytest.mark.parametrize("content", ["", "{\"seed\": 4", "[1, 2]"])
def test_an_empty_or_corrupt_identity_file_is_named(tmp_path, content):
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / reliability.RUN_FILE).write_text(content)
    with pytest.raises(reliability.RunIdentityError) as err:
        reliability.prepare_output_dir(str(tmp_path), reliability.run_identity("m", "d", 42, True))
    message = str(err.value)
    assert str(tmp_path / reliability.RUN_FILE) in message
    assert ("is empty" if not content else "is corrupt") in message and "--start_over true" in message


def test_the_lock_is_exclusive_between_processes(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, reliability; reliability.lock_output_dir(sys.argv[1]); print('locked', "
         "flush=True); sys.stdin.read()", str(tmp_path)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, env=ENV)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(reliability.OutputDirBusyError, match=f"pid {holder.pid} "):
        reliability.lock_output_dir(str(tmp_path))
    holder.stdin.close()
    holder.wait(timeout=30)
    reliability.lock_output_dir(str(tmp_path))  # released when its holder exited
    assert (tmp_path / reliability.LOCK_FILE).read_text().startswith(f"pid {os.getpid()} ")


def test_start_over_and_an_explicit_resume_contradict(tmp_path):
    with pytest.raises(ValueError, match="cannot be combined with --resume_from_checkpoint"):
        reliability.prepare_output_dir(str(tmp_path), reliability.run_identity("m", "d", 1, False), start_over=True,
                                       resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
