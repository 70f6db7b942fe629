"""Benchmark 2: generation efficiency of dynamic sampling.

    python -m bench.bench_gen_efficiency [--quick]

Completions generated per completion trained, as a function of the informative fraction f of the
data, with and without --filter_groups_carry_over, at --gen_batch_multiplier 1 (the CPU demo) and 3
(the reference), against the lower bound 1/f (a filter cannot train more informative groups than it
generates). The informative fraction is set by a synthetic reward: the toy dataset's row "toy:i" is
informative iff i % 10 < k (the group's first completion scores +1, the others -1), otherwise every
completion scores -1; so exactly k/10 of the prompts are informative, whatever the model does.
Counters: ``dynamic_sampling/groups_generated`` and ``groups_trained`` from the log history, checked
against the number of completions the reward function scored.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from bench import common
from bench.common import fmt

MODULUS = 10
FRACTIONS_K = (1, 2, 3, 5, 7, 10)
SETTINGS = (  # (gen_batch_multiplier, filter_groups_carry_over)
    (1, False), (1, True), (3, False), (3, True),
)
GROUP = 4          # num_generations
ROLLOUT_GROUPS = 8  # prompt groups trained per rollout (per_device 16 x 2 mini-batches / 4)


def row_index(row_id) -> int:
    return int(str(row_id).rsplit(":", 1)[1])


def make_fraction_reward(k: int, modulus: int = MODULUS):
    """Reward named "correctness" (the filter's acc metric reads it) that is informative for exactly the
    prompts whose row index i has i % modulus < k: there the first completion of the group scores +1 and
    the others -1; every other prompt scores -1 throughout (a constant, filtered group)."""

    def correctness(completion_ids=None, row_id=None, **kwargs):
        seen: dict = {}
        out = []
        for rid in row_id:
            n = seen.get(rid, 0)
            seen[rid] = n + 1
            out.append(1.0 if row_index(rid) % modulus < k and n == 0 else -1.0)
        return out

    return correctness


def informative_fraction(dataset, reward, group: int = GROUP) -> float:
    """Share of the dataset's prompts whose group the reward makes non-constant (the filter's view)."""
    import torch

    from dynamic_sampling import informative_groups

    row_ids = [r for r in dataset["row_id"] for _ in range(group)]
    scores = torch.tensor(reward(completion_ids=[[0]] * len(row_ids), row_id=row_ids))
    return informative_groups((scores > 0).float(), group).float().mean().item()


def _one_run(k: int, multiplier: int, carry: bool, rollouts: int, seed: int = 0) -> dict:
    from train_dapo import DAPOTrainer

    tiny, small_args = common.toy_setup()
    tmp = common.tmpdir("geneff")
    try:
        tok = tiny.toy_tokenizer()
        reward = common.counting(make_fraction_reward(k), "correctness")
        args = small_args(Path(tmp), per_device_train_batch_size=16, num_generations=GROUP, num_mini_batches=2,
                          max_steps=2 * rollouts, filter_groups_enable=True, gen_batch_multiplier=multiplier,
                          filter_groups_carry_over=carry, max_filter_gen_batches=0, seed=seed, log_samples_every=0)
        trainer = DAPOTrainer(model=tiny.tiny_llama(tok, seed=seed), reward_funcs=[reward], args=args,
                              train_dataset=tiny.toy_dataset(25), processing_class=tok)
        common.silence_printer(trainer)
        trainer.train()
        logs = trainer.state.log_history
        generated = sum(common.series(logs, "dynamic_sampling/groups_generated"))
        trained = sum(common.series(logs, "dynamic_sampling/groups_trained"))
        reused = sum(common.series(logs, "dynamic_sampling/groups_reused"))
        gen_batches = common.series(logs, "dynamic_sampling/num_gen_batches")
        kept = sum(common.series(logs, "dynamic_sampling/groups_kept"))
        return {
            "k": k, "fraction": k / MODULUS, "multiplier": multiplier, "carry_over": carry,
            "rollouts": len(gen_batches), "groups_generated": generated, "groups_trained": trained,
            "groups_reused": reused, "groups_kept": kept,
            "completions_scored": reward.completions,
            "counters_match_reward_calls": reward.completions == generated * GROUP,
            "generated_per_trained": generated / trained if trained else None,
            "kept_fraction": kept / generated if generated else None,
            "mean_gen_batches": sum(gen_batches) / len(gen_batches) if gen_batches else None,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(quick: bool = False) -> dict:
    common.one_thread()
    rollouts = 4 if quick else 16
    fractions = (1, 3, 10) if quick else FRACTIONS_K
    t0 = time.perf_counter()
    rows = [_one_run(k, m, c, rollouts) for k in fractions for m, c in SETTINGS]
    return {"quick": quick, "rollouts": rollouts, "group": GROUP, "rollout_groups": ROLLOUT_GROUPS,
            "rows": rows, "seconds": time.perf_counter() - t0}


def to_markdown(res: dict) -> str:
    head = "| informative fraction f | lower bound 1/f | " + " | ".join(
        f"x{m}, {'carry-over' if c else 'no carry-over'}" for m, c in SETTINGS) + " | measured kept fraction |"
    lines = [
        f"Completions generated per completion trained ({res['rollouts']} rollouts of {res['rollout_groups']} groups x "
        f"{res['group']} completions per setting; xN = --gen_batch_multiplier N; --max_filter_gen_batches 0):",
        "",
        head,
        "|---:|---:|" + "---:|" * len(SETTINGS) + "---:|",
    ]
    by_k: dict = {}
    for r in res["rows"]:
        by_k.setdefault(r["k"], {})[(r["multiplier"], r["carry_over"])] = r
    for k, cells in sorted(by_k.items()):
        f = k / MODULUS
        vals = [fmt(cells[s]["generated_per_trained"], 2) if s in cells else "" for s in SETTINGS]
        kept = [cells[s]["kept_fraction"] for s in SETTINGS if s in cells]
        lines.append(f"| {f:.1f} | {1 / f:.2f} | " + " | ".join(vals) + f" | {sum(kept) / len(kept):.2f} |")
    ok = all(r["counters_match_reward_calls"] for r in res["rows"])
    reused = {
        (r["multiplier"], r["k"]): r["groups_reused"] / r["groups_trained"] for r in res["rows"] if r["carry_over"]
    }
    lines += [
        "",
        f"Logged counters agree with the completions the reward function scored: {'yes' if ok else 'NO'}. "
        "Share of trained groups that were carried over (x1 / x3) at f = "
        + ", ".join(
            f"{k / MODULUS:.1f}: {reused.get((1, k), 0):.2f} / {reused.get((3, k), 0):.2f}" for k in sorted(by_k)
        )
        + ".",
    ]
    return "\n".join(lines)


def main(argv=None) -> dict:
    return common.cli(run, to_markdown, __doc__, argv)


if __name__ == "__main__":
    main()
