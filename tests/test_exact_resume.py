"""Pre-emption at any optimizer step: a real SIGTERM, then a resume that equals the uninterrupted run bitwise."""

from __future__ import annotations

import signal
import subprocess

import pytest

import reliability
from tests.test_reliability import ENV, ROOT, SCRIPT, _run

# 4 optimizer steps per rollout, so most steps fall inside a rollout.
MINI = ["--num-mini-batches", "4"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    base = tmp_path_factory.mktemp("exact")
    runs = {}
    for name, extra in {"filter": [], "plain": ["--no-filter"]}.items():
        runs[name], _ = _run(base / name, 8, *MINI, *extra)
    return runs


@pytest.mark.parametrize(("mode", "stop_at"), [("filter", 1), ("filter", 3), ("filter", 6), ("plain", 2)])
def test_sigterm_at_any_step_then_resume_equals_the_uninterrupted_run(tmp_path, uninterrupted, mode, stop_at):
    extra = [*MINI] + (["--no-filter"] if mode == "plain" else [])
    out = tmp_path / "run"
    stopped = subprocess.run([*SCRIPT, str(out), "8", *extra, "--sigterm-at", str(stop_at)], cwd=ROOT,
                             capture_output=True, text=True, timeout=300, env=ENV)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert [c.rsplit("-", 1)[1] for c in reliability.list_checkpoints(str(out))][0] == str(stop_at)
    resumed, proc = _run(out, 8, *extra)
    assert resumed["resumed_from"].endswith(f"checkpoint-{stop_at}")
    full = uninterrupted[mode]
    # The log history up to the checkpoint comes from it; the rest is what the resumed run logged.
    assert resumed["rewards"] == full["rewards"]
    assert resumed["losses"] == full["losses"]
    assert resumed["weights"] == full["weights"]
    assert "not an exact continuation" not in proc.stderr
