"""Benchmark 4: the embedded SmolLM2-135M-Instruct on this CPU (one thread): seconds per optimizer
step, peak memory and token throughput of generation and of the update.

    python -m bench.bench_embedded [--quick]

Runs, as subprocesses through the real scripts:
  * the quick test:  bash test_dapo.sh --report_to none --output_dir <tmp>          (recipes/quick_test.yaml)
  * the demo:        CONFIG=recipes/cpu_demo.yaml bash run_dapo.sh --report_to none --output_dir <tmp> --max_steps 4
                     (full mode only; 4 of the recipe's 10 optimizer steps = 2 of its 5 rollouts;
                     --demo-steps 10 runs the whole recipe)
with ``PYTHON=bench/logged_python`` so that every logged step is also written to a JSONL file (the run
is otherwise unchanged), and OMP_NUM_THREADS=1. Peak memory is the process's ru_maxrss (os.wait4).
Throughput: generation = completion tokens generated / ``timing/generation_s``; update = completion
tokens trained / (``step_time`` - generation - scoring), where step_time is TRL's wall time of the
optimizer steps (the old log-prob pass of each rollout counts as update).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from bench import common
from bench.common import fmt

ROOT = common.ROOT


def ensure_model() -> float:
    """Convert and cache the embedded model if needed (first use ~40 s); returns the seconds it took."""
    import model_utils

    t = time.perf_counter()
    model_utils.resolve_model_path("smollm2-135m")
    return time.perf_counter() - t


def _recipe(path: str) -> dict:
    import yaml

    return yaml.safe_load((ROOT / path).read_text())


def run_case(name: str, recipe: str, script: str, extra: list[str], env_extra: dict | None = None) -> dict:
    tmp = common.tmpdir("embedded_" + name.replace(" ", "_"))
    log = Path(tmp) / "log.jsonl"
    out_dir = Path(tmp) / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHON": str(ROOT / "bench" / "logged_python"), "BENCH_LOG": str(log), **(env_extra or {})}
    cmd = ["bash", script, "--report_to", "none", "--output_dir", str(out_dir), *extra]
    t = time.perf_counter()
    with open(Path(tmp) / "stdout.txt", "w") as so, open(Path(tmp) / "stderr.txt", "w") as se:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=so, stderr=se)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    try:
        if proc.returncode != 0:
            tail = (Path(tmp) / "stderr.txt").read_text()[-3000:]
            raise RuntimeError(f"{' '.join(cmd)} failed with exit code {proc.returncode}:\n{tail}")
        logs = [json.loads(line) for line in log.read_text().splitlines()]
        res = summarize(logs, _recipe(recipe), extra)
        res.update(name=name, command=" ".join(cmd[:1] + [script, "--report_to none --output_dir <tmp>", *extra]),
                   wall_s=wall, peak_rss_gib=usage.ru_maxrss / 2**20, user_s=usage.ru_utime, sys_s=usage.ru_stime)
        return res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def summarize(logs: list[dict], recipe: dict, extra: list[str]) -> dict:
    """Per-step time and token throughput from the logged steps."""
    cfg = dict(recipe)
    for flag, value in zip(extra[::2], extra[1::2], strict=False):
        cfg[flag.lstrip("-")] = value
    G = int(cfg["num_generations"])
    per_rollout = int(cfg["per_device_train_batch_size"]) * int(cfg.get("num_mini_batches", 1)) * int(
        cfg.get("gradient_accumulation_steps", 1))
    filtering = str(cfg.get("filter_groups_enable", False)).lower() == "true"
    steps = [h for h in logs if "step_time" in h]
    rollouts = [h for h in logs if "completions/mean_length" in h]
    step_s = [h["step_time"] for h in steps]
    gen_s = sum(h.get("timing/generation_s", 0.0) for h in rollouts)
    score_s = sum(h.get("timing/scoring_s", 0.0) for h in rollouts)
    gen_tokens = trained_tokens = 0.0
    generated = trained = 0
    for h in rollouts:
        n_gen = int(h["dynamic_sampling/groups_generated"]) * G if filtering else per_rollout
        n_train = int(h["dynamic_sampling/groups_trained"]) * G if filtering else per_rollout
        gen_tokens += h["completions/mean_length"] * n_gen
        trained_tokens += h["completions/mean_length"] * n_train  # mean length of the generated ones
        generated += n_gen
        trained += n_train
    update_s = max(sum(step_s) - gen_s - score_s, 1e-9)
    # num_tokens: TRL's running count of prompt + completion tokens of every generated completion.
    all_tokens = max((h["num_tokens"] for h in logs if "num_tokens" in h), default=0.0)
    seq_tokens_trained = all_tokens * trained / generated if generated else 0.0
    return {
        "optimizer_steps": len(steps), "rollouts": len(rollouts),
        "s_per_step": sum(step_s) / len(step_s) if step_s else None,
        "first_step_s": step_s[0] if step_s else None,
        "s_per_step_after_first_rollout": (sum(step_s[2:]) / len(step_s[2:])) if len(step_s) > 2 else None,
        "generation_s": gen_s, "scoring_s": score_s, "update_s": update_s,
        "completions_generated": generated, "completions_trained": trained,
        "completion_tokens_generated": gen_tokens, "completion_tokens_trained": trained_tokens,
        "gen_tokens_per_s": gen_tokens / gen_s if gen_s else None,
        "update_tokens_per_s": trained_tokens / update_s,
        "update_seq_tokens_per_s": seq_tokens_trained / update_s,
        "prompt_plus_completion_tokens_generated": all_tokens,
        "mean_completion_length": gen_tokens / generated if generated else None,
    }


DEMO_STEPS = 4  # of the recipe's 10: the first two rollouts, to keep the benchmark short on one thread


def run(quick: bool = False, demo_steps: int = DEMO_STEPS) -> dict:
    common.one_thread()
    convert_s = ensure_model()
    t0 = time.perf_counter()
    cases = [run_case("quick test", "recipes/quick_test.yaml", "test_dapo.sh", [])]
    if not quick:
        cases.append(run_case("cpu demo", "recipes/cpu_demo.yaml", "run_dapo.sh", ["--max_steps", str(demo_steps)],
                              env_extra={"CONFIG": "recipes/cpu_demo.yaml"}))
    return {"quick": quick, "model_prepare_s": convert_s, "cases": cases, "seconds": time.perf_counter() - t0}


def to_markdown(res: dict) -> str:
    lines = [
        "| run | command | optimizer steps | s / step (mean; first step) | wall (incl. start-up) | peak RSS | "
        "generation tok/s | update tok/s: completion (prompt + completion) | "
        "completions generated / trained | mean length |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in res["cases"]:
        cmd = c["command"]
        if c["name"] == "cpu demo":
            cmd = "CONFIG=recipes/cpu_demo.yaml " + cmd
        lines.append(
            f"| {c['name']} | `{cmd}` | {c['optimizer_steps']} | "
            f"{fmt(c['s_per_step'], 1)} ({fmt(c['first_step_s'], 1)}) | "
            f"{c['wall_s']:.0f} s | {c['peak_rss_gib']:.2f} GiB | {fmt(c['gen_tokens_per_s'], 0)} | "
            f"{fmt(c['update_tokens_per_s'], 0)} ({fmt(c['update_seq_tokens_per_s'], 0)}) | "
            f"{c['completions_generated']} / {c['completions_trained']} | "
            f"{fmt(c['mean_completion_length'], 1)} |"
        )
    lines += ["", f"Model preparation before the runs (convert-and-cache on first use, else a cache check): "
                  f"{res['model_prepare_s']:.1f} s."]
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the quick test only")
    ap.add_argument(
        "--demo-steps", type=int, default=DEMO_STEPS, help="optimizer steps of the demo (the recipe has 10)"
    )
    opts = ap.parse_args(argv)
    res = run(quick=opts.quick, demo_steps=opts.demo_steps)
    print(to_markdown(res))
    return res


if __name__ == "__main__":
    main()
