"""math_verify worker pool under faults: a killed parent, os.fork() children, a batch of slow items; and the
placeholder "[INVALID]" as a ground truth."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import reward_function as rf
import verifier_pool as vp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Parsing x^x^...^ (280 characters) takes math-verify about 7 s (more on a loaded machine).
SLOW = "Answer: $" + "x^" * 140 + "$"

PARENT = f"""
import multiprocessing.forkserver as fs, reward_function as rf, verifier_pool as vp
pool = vp.MathVerifyPool(num_workers=2).warm_up()
print("PIDS", fs._forkserver._forkserver_pid, *[w.proc.pid for w in pool._workers], flush=True)
rf.verify_batch([{SLOW!r}] * 2, ["1"] * 2, mode="math_verify", timeout=600, pool=pool)
"""


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_workers_die_within_seconds_of_a_sigkilled_parent():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    pids = [int(x) for x in parent.stdout.readline().split()[1:]]
    assert len(pids) == 3 and all(_running(p) for p in pids)
    time.sleep(0.5)  # both workers are inside sympy now, each for several seconds
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    killed = time.monotonic()
    try:
        while any(_running(p) for p in pids) and time.monotonic() - killed < 30:
            time.sleep(0.1)
        # The items alone take longer than this; without the owner watch they ran to the end.
        assert not any(_running(p) for p in pids), f"still running {time.monotonic() - killed:.1f} s after the kill"
        assert time.monotonic() - killed < 5
    finally:
        for p in pids:
            if _running(p):
                os.kill(p, signal.SIGKILL)


def test_scoring_in_an_os_fork_child_after_the_parent_used_the_pool():
    assert rf.verify("Answer: \\frac{1}{2}", "0.5", mode="math_verify", timeout=30)["score"] == 1.0
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: score with math_verify (needs a worker of its own), report, leave
        try:
            result = rf.verify("Answer: 2^{1/2}", "\\sqrt{2}", mode="math_verify", timeout=30)
            os.write(write, f"{result['score']} {result['pred']}".encode())
        except BaseException as exc:  # noqa: BLE001 - report anything to the parent
            os.write(write, f"raised {type(exc).__name__}: {exc}".encode())
        finally:
            vp.shutdown_math_verify_pool()
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read) as f:
        report = f.read()
    assert os.waitstatus_to_exitcode(status) == 0
    assert report == "1.0 2^{1/2}"
    # The parent's pool still works.
    assert rf.verify("Answer: 0.25", "1/4", mode="math_verify", timeout=30)["score"] == 1.0


def test_a_batch_stops_at_its_time_budget():
    with vp.MathVerifyPool(num_workers=1) as pool:
        pool.warm_up()
        # 6 items of several seconds each, 5 s per item, 2 s for the batch: the first item is stopped at the
        # budget and the other 5 are never started.
        out = rf.verify_batch([SLOW] * 6, ["1"] * 6, mode="math_verify", timeout=5.0, pool=pool, batch_timeout=2.0)
        assert [(r["score"], r["timeout"], r["pred"]) for r in out] == [(-1.0, True, vp.TIMEOUT_PRED)] * 6
        assert (pool.timeouts, pool.budget_skipped) == (1, 5)
        ok = rf.verify_batch(["Answer: 0.5"], ["1/2"], mode="math_verify", timeout=10.0, pool=pool, batch_timeout=2.0)
        assert ok[0]["score"] == 1.0


@pytest.mark.parametrize("mode", ["strict_box", "boxed", "last_number", "math_verify"])
def test_a_literal_invalid_ground_truth_never_matches_a_missing_answer(mode):
    assert rf.verify("I do not know.", "[INVALID]", mode=mode, timeout=30)["score"] == -1.0
    assert rf.compute_score("no box here", "[INVALID]", strict_box_verify=True)["acc"] is False
