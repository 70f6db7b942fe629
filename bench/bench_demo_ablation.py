"""GRPO vs DAPO on the demo task with the embedded model: the paper's ablation in miniature, for real.

    python -m bench.bench_demo_ablation [--seeds 0 1 2]

For each seed, through the real scripts (``CONFIG=recipes/cpu_demo.yaml bash run_dapo.sh``):
  * DAPO: the demo recipe unchanged (clip-higher, dynamic sampling, token-level loss, overlong shaping);
    held-out avg@4 on arithmetic_easy_test before training and after its optimizer steps.
  * GRPO: the same recipe without the four DAPO parts (``--epsilon_high 0.2 --loss_type grpo
    --filter_groups_enable false --apply_overlong_penalty false``), trained for as many optimizer steps
    as it takes to generate as many completions as that seed's DAPO run did (dynamic sampling
    generates more per step), evaluated at the DAPO run's step count (equal steps) and at the end
    (equal generated completions).
Everything else is the recipe's: model, data, prompt, lengths, learning rate, batch shape, evaluation
(25 problems x 4 samples, temperature 1, top_p 0.7, the evaluation's own fixed seed).
Prints a Markdown table (per seed and mean) for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

from bench import common
from bench.bench_embedded import _recipe, ensure_model

ROOT = common.ROOT
RECIPE = "recipes/cpu_demo.yaml"
GRPO_FLAGS = ["--epsilon_high", "0.2", "--loss_type", "grpo", "--filter_groups_enable", "false",
              "--apply_overlong_penalty", "false"]


def eval_scores(out_dir: Path) -> dict[int, tuple[float, float]]:
    """{step: (avg@k, pass@k)} from the evaluation records the run wrote (eval/step_N.jsonl)."""
    scores = {}
    for path in sorted((out_dir / "eval").glob("step_*.jsonl")):
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        by_problem: dict = {}
        for r in records:
            by_problem.setdefault(r["problem_index"], []).append(bool(r["acc"]))
        avg = statistics.mean(statistics.mean(v) for v in by_problem.values())
        passk = statistics.mean(any(v) for v in by_problem.values())
        scores[int(path.stem.split("_")[1])] = (avg, passk)
    return scores


def run_one(tag: str, seed: int, extra: list[str]) -> dict:
    tmp = Path(common.tmpdir(f"ablation_{tag}_{seed}"))
    log, out_dir = tmp / "log.jsonl", tmp / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CONFIG": RECIPE, "PYTHON": str(ROOT / "bench" / "logged_python"),
           "BENCH_LOG": str(log)}
    cmd = ["bash", "run_dapo.sh", "--report_to", "none", "--output_dir", str(out_dir), "--seed", str(seed), *extra]
    t = time.perf_counter()
    with open(tmp / "stdout.txt", "w") as so, open(tmp / "stderr.txt", "w") as se:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=so, stderr=se).returncode
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({rc}); see {tmp}/stderr.txt")
    logs = [json.loads(line) for line in log.read_text().splitlines()]
    recipe = _recipe(RECIPE)
    per_rollout = recipe["per_device_train_batch_size"] * recipe["gradient_accumulation_steps"] * recipe[
        "num_mini_batches"]
    rollouts = [h for h in logs if "completions/mean_length" in h]  # one log per rollout carries its metrics
    # Completions generated: dynamic sampling logs its groups per rollout; without it, one batch per rollout.
    generated = sum(int(h["dynamic_sampling/groups_generated"]) * recipe["num_generations"]
                    if "dynamic_sampling/groups_generated" in h else per_rollout for h in rollouts)
    steps = sum(1 for h in logs if "step_time" in h)
    return {"tag": tag, "seed": seed, "optimizer_steps": steps, "completions_generated": generated,
            "per_rollout": per_rollout, "wall_s": time.perf_counter() - t, "eval": eval_scores(out_dir),
            "dir": str(tmp)}


def run(seeds: list[int]) -> list[dict]:
    ensure_model()
    rows = []
    for seed in seeds:
        dapo = run_one("dapo", seed, [])
        steps, generated = dapo["optimizer_steps"], dapo["completions_generated"]
        steps_per_rollout = _recipe(RECIPE)["num_mini_batches"]
        grpo_steps = max(steps, steps_per_rollout * round(generated / dapo["per_rollout"]))
        grpo = run_one("grpo", seed, [*GRPO_FLAGS, "--max_steps", str(grpo_steps), "--eval_every_steps", str(steps)])
        rows.append({"seed": seed, "dapo": dapo, "grpo": grpo, "steps": steps, "grpo_steps": grpo_steps})
        print(json.dumps({k: (v if not isinstance(v, dict) else {"eval": v["eval"],
                                                                    "generated": v["completions_generated"]})
                          for k, v in rows[-1].items()}, default=str), flush=True)
    return rows


def to_markdown(rows: list[dict]) -> str:
    lines = ["| seed | avg@4 before | DAPO after N steps | GRPO after N steps | GRPO after equal completions "
             "| N | completions DAPO / GRPO (equal-completion run) | pass@4 DAPO / GRPO (N steps) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    cols = {"before": [], "dapo": [], "grpo_n": [], "grpo_c": []}
    for r in rows:
        d, g, n = r["dapo"]["eval"], r["grpo"]["eval"], r["steps"]
        vals = (d[0][0], d[n][0], g[n][0], g[r["grpo_steps"]][0])
        for key, v in zip(cols, vals, strict=True):
            cols[key].append(v)
        lines.append(f"| {r['seed']} | {vals[0]:.2f} | {vals[1]:.2f} | {vals[2]:.2f} | {vals[3]:.2f} "
                     f"(step {r['grpo_steps']}) | {n} | {r['dapo']['completions_generated']} / "
                     f"{r['grpo']['completions_generated']} | {d[n][1]:.2f} / {g[n][1]:.2f} |")
    mean = {k: statistics.mean(v) for k, v in cols.items()}
    lines.append(f"| mean | {mean['before']:.2f} | {mean['dapo']:.2f} | {mean['grpo_n']:.2f} | "
                 f"{mean['grpo_c']:.2f} | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args(argv)
    t = time.perf_counter()
    rows = run(args.seeds)
    print(f"\n`python -m bench.bench_demo_ablation --seeds {' '.join(map(str, args.seeds))}`, {common.now()}, "
          f"{(time.perf_counter() - t) / 60:.1f} min\n")
    print(to_markdown(rows))


if __name__ == "__main__":
    main()
