"""Two CPU processes (torchrun, gloo backend) with dynamic sampling on.

`accelerate launch --cpu` starts a single process (its multi-CPU mode needs MPI), so CPU runs with
several processes use torch's own launcher, as run_dapo.sh does with USE_CPU=1.
"""

import json
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_on_full_informative_batches_with_identical_decisions(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "tests/dist_dynamic_sampling.py", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    assert all(r["world"] == 2 for r in ranks)
    # 3 rollouts; each process trains 4 rows x 2 mini-batches = 8 completions = 2 whole groups per rollout.
    for r in ranks:
        assert len(r["batches"]) == 3
        assert all(b["rows"] == 8 and b["zero_advantage_groups"] == 0 for b in r["batches"])
    # The token normaliser is global: the sum of both processes' local tokens.
    for b0, b1 in zip(ranks[0]["batches"], ranks[1]["batches"]):
        assert b0["num_items_in_batch"] == b1["num_items_in_batch"] == b0["local_tokens"] + b1["local_tokens"]
    # Same decisions everywhere: identical kept / trained counts; full (4-group) fully informative batches.
    assert ranks[0]["history"] == ranks[1]["history"]
    assert all(h["dynamic_sampling/groups_trained"] == 4 for h in ranks[0]["history"])
    assert all(h["dynamic_sampling/zero_spread_frac_trained"] == 0 for h in ranks[0]["history"])
    assert any(h["dynamic_sampling/num_gen_batches"] > 1 for h in ranks[0]["history"]), "resampling was exercised"
