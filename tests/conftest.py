"""Shared fixtures: the 2-process DDP runs that the sharded runs are compared with (run once per session)."""

import pytest

from tests import distributed


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: minutes-long multi-process runs (DeepSpeed / FSDP2); `-m 'not slow'` skips them"
    )


@pytest.fixture(scope="session")
def ddp_run(tmp_path_factory):
    """ddp_run(scenario) -> (output directory, per-rank records) of the DDP run of that scenario."""
    cache = {}

    def run(scenario: str):
        if scenario not in cache:
            out = tmp_path_factory.mktemp(f"ddp_{scenario}")
            cache[scenario] = (out, distributed.launch(out, scenario))
        return cache[scenario]

    return run
