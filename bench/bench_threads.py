"""Threads and OpenMP wait policy on a busy machine: one tiny-model DAPO run per setting.

    python -m bench.bench_threads [--repeats N]

Each setting runs in its own process (the wait policy is read when OpenMP starts): the learning
test's setup (toy task, tiny Llama, dynamic sampling) for 20 optimizer steps. Prints wall time and
CPU time (all threads) per run, and the load average. Run it beside the load you care about
(e.g. a second training job) and once on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from bench.common import ROOT

SETTINGS = ((2, "ACTIVE"), (2, None), (2, "PASSIVE"), (1, None), (1, "PASSIVE"))

CHILD = r"""
import os, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, os.getcwd())
import torch
torch.set_num_threads(int(sys.argv[1]))
import transformers
transformers.logging.set_verbosity_error()
from tests.test_train_dapo import small_args
from tests.tiny import make_toy_correctness, tiny_llama, toy_dataset, toy_tokenizer
from train_dapo import DAPOTrainer
tok = toy_tokenizer()
args = small_args(Path(tempfile.mkdtemp()), per_device_train_batch_size=16, num_generations=8, max_completion_length=2,
                  max_steps=20, learning_rate=3e-3, weight_decay=0.0, filter_groups_enable=True,
                  filter_groups_on_limit="continue", logging_steps=10, disable_tqdm=True)
trainer = DAPOTrainer(model=tiny_llama(tok), reward_funcs=[make_toy_correctness(tok)], args=args,
                      train_dataset=toy_dataset(), processing_class=tok)
t0, c0 = time.perf_counter(), time.process_time()
trainer.train()
print(f"RESULT {time.perf_counter() - t0:.2f} {time.process_time() - c0:.2f}")
"""


def run_one(threads: int, policy: str | None) -> tuple[float, float, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    proc = subprocess.run([sys.executable, "-c", CHILD, str(threads)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1800)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")]
    if not line:
        raise RuntimeError(proc.stderr[-2000:])
    wall, cpu = map(float, line[0].split()[1:])
    return wall, cpu, os.getloadavg()[0]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    opts = ap.parse_args(argv)
    print(f"start {time.strftime('%Y-%m-%d %H:%M %Z')}, load {os.getloadavg()[0]:.1f}")
    print("| torch threads | OMP_WAIT_POLICY | wall (s) | CPU (s) | load |\n|---:|---|---:|---:|---:|")
    for _ in range(opts.repeats):
        for threads, policy in SETTINGS:
            wall, cpu, load = run_one(threads, policy)
            print(f"| {threads} | {policy or 'unset'} | {wall:.1f} | {cpu:.1f} | {load:.1f} |", flush=True)


if __name__ == "__main__":
    main()
