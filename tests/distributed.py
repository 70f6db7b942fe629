"""Launch tests/dist_dynamic_sampling.py on 2 CPU processes and check what each process trained on.

Shared by tests/test_distributed.py (DDP) and tests/test_sharded.py (DeepSpeed ZeRO, FSDP2).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROUP_SIZE = {"carry": 4, "limit": 2}  # num_generations of each scenario in dist_dynamic_sampling.py
NUM_PROMPTS = 256  # tests/tiny.py unique_toy_dataset


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_env(**extra: str) -> dict:
    """Environment for CPU training processes. DeepSpeed JIT-compiles its CPU ops on first use (minutes); they
    are cached in the work tree's .cache/ (git-ignored) so a test session compiles them once."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu",
            "TORCH_EXTENSIONS_DIR": os.environ.get(
                "TORCH_EXTENSIONS_DIR", os.path.join(ROOT, ".cache", "torch_extensions")
            ),
            **extra}


def launch(out: Path, scenario: str, config: str | None = None, resume_from: str | None = None,
           timeout: int = 1500) -> list[dict]:
    """Run the script on 2 processes: torchrun (DDP) without `config`, else accelerate launch --config_file
    configs/<config>.yaml in fp32. Returns each rank's record; fails with the processes' output."""
    port = str(free_port())
    if config is None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
        mode = "ddp"
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", f"configs/{config}.yaml",
               "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", port]
        mode = "fsdp" if config.startswith("fsdp") else "deepspeed"
    cmd += ["tests/dist_dynamic_sampling.py", str(out), scenario, mode] + ([resume_from] if resume_from else [])
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=cpu_env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    return [json.load(open(out / f"rank{r}.json")) for r in range(2)]


def groups_of(prompts: list[str], size: int) -> list[str]:
    """The prompt of each consecutive group of `size` rows; fails if a group's rows have different prompts."""
    assert len(prompts) % size == 0, f"{len(prompts)} rows is not a whole number of groups of {size}"
    groups = [prompts[i : i + size] for i in range(0, len(prompts), size)]
    for rows in groups:
        assert len(set(rows)) == 1, f"a trained group mixes rows of different prompts: {rows}"
    return [rows[0] for rows in groups]


def check_run(ranks: list[dict], scenario: str) -> list[list[str]]:
    """Checks every 2-process run must pass. Returns the trained group prompts per rollout (rank 0's, then rank 1's)."""
    G = GROUP_SIZE[scenario]
    assert [r["world"] for r in ranks] == [2, 2] and [r["layout"]["torch_world"] for r in ranks] == [2, 2]
    # Same decisions everywhere (same kept / trained / carried counts).
    assert ranks[0]["history"] == ranks[1]["history"]
    assert len(ranks[0]["rollouts"]) == len(ranks[1]["rollouts"]) == len(ranks[0]["history"])
    trained, seen = [], set()
    for i, (b0, b1) in enumerate(zip(ranks[0]["rollouts"], ranks[1]["rollouts"], strict=True)):
        # Each process trains whole groups, as many as the other process.
        g0, g1 = groups_of(b0["prompts"], G), groups_of(b1["prompts"], G)
        assert len(g0) == len(g1)
        step = ranks[0]["history"][i]
        assert len(g0) + len(g1) == step["dynamic_sampling/groups_trained"]
        assert step["dynamic_sampling/zero_spread_frac_trained"] == 0
        # No group is trained by both processes, or twice in the run (prompts are distinct; see below).
        for prompt in g0 + g1:
            assert prompt not in seen, f"group {prompt!r} trained twice"
            seen.add(prompt)
        # The token normaliser is global: the sum of both processes' local tokens.
        assert b0["num_items_in_batch"] == b1["num_items_in_batch"] == b0["local_tokens"] + b1["local_tokens"]
        trained.append(g0 + g1)
    # The prompt stream did not wrap around, so a repeated prompt would be a repeated group.
    assert ranks[0]["history"][-1]["dynamic_sampling/prompts_consumed"] < NUM_PROMPTS
    return trained


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "final" / "model.safetensors"))


def check_saved_model_reproduces_logits(out: Path) -> None:
    """The saved final model, loaded with from_pretrained, gives the in-memory model's logits."""
    from transformers import AutoModelForCausalLM

    from tests.dist_dynamic_sampling import PROBE
    from tests.tiny import toy_tokenizer

    model = AutoModelForCausalLM.from_pretrained(str(out / "final")).eval()
    with torch.no_grad():
        logits = model(**toy_tokenizer()(PROBE, return_tensors="pt")).logits
    expected = torch.load(out / "logits.pt")
    assert torch.allclose(logits, expected, atol=1e-5, rtol=0), (logits - expected).abs().max()


def max_weight_difference(a: dict, b: dict) -> float:
    """Largest difference over the weights both files hold. A tied output matrix (lm_head = embedding) is written
    by some savers and not by others; then it must equal the embedding it is tied to."""
    for weights in (a, b):
        if "lm_head.weight" in weights and "lm_head.weight" not in set(a) & set(b):
            assert torch.equal(weights["lm_head.weight"], weights["model.embed_tokens.weight"])
    keys = set(a) & set(b)
    assert keys == set(a) or keys == set(b), set(a) ^ set(b)
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in keys)
