"""Benchmark 3: learning efficiency, the DAPO paper's ablation in miniature.

    python -m bench.bench_learning [--quick]

Task: tests/tiny.py's learnable toy (reward +1 iff the first completion token is the prompt's target
symbol, chance ~1/16) on a tiny Llama built from a config. For each variant and seed (the seed sets
the model init and the trainer), train until the sampled accuracy (tests/tiny.py sampled_accuracy:
the mean probability of the target token at temperature 1) reaches THRESHOLD, checked after every
rollout (2 optimizer steps), or until CAP optimizer steps. Reported: optimizer steps and generated
completions (= completions the correctness reward scored) to the threshold, median and min-max over
seeds.

Variants: vanilla GRPO (epsilon = epsilon_high = 0.2, sequence-level loss_type "grpo", no filtering,
no overlong shaping), GRPO plus each DAPO component alone (clip-higher 0.28, token-level loss "dapo",
overlong shaping with the real reward_function.make_overlong_reward, dynamic sampling), full DAPO
(all four), and DAPO without overlong shaping (the length penalty is beside the point of this task).
Everything else is equal: lr 3e-3, no weight decay, 16 completions per update, 8 per
prompt, 2 updates per rollout (so clipping can act), max_completion_length 4 with an overlong buffer
of 2 (when shaping is on), dual clip delta 10 (the DAPOConfig default) in every variant.
"""

from __future__ import annotations

import math
import shutil
import statistics
import time
from pathlib import Path

from bench import common
from bench.common import fmt

THRESHOLD = 0.8
CHECK_EVERY = 2  # optimizer steps = one rollout
MAX_COMPLETION_LENGTH = 4
OVERLONG_BUFFER = 2

GRPO = dict(epsilon=0.2, epsilon_high=0.2, loss_type="grpo")
VARIANTS = {
    "GRPO (vanilla)": {},
    "+ clip-higher (0.28)": dict(epsilon_high=0.28),
    "+ token-level loss": dict(loss_type="dapo"),
    "+ overlong shaping": dict(apply_overlong_penalty=True),
    "+ dynamic sampling": dict(filter_groups_enable=True),
    "DAPO (all four)": dict(
        epsilon_high=0.28, loss_type="dapo", apply_overlong_penalty=True, filter_groups_enable=True
    ),
    "DAPO without overlong shaping": dict(epsilon_high=0.28, loss_type="dapo", filter_groups_enable=True),
}


def variant_config(tmp: str, name: str, seed: int, cap: int):
    """The DAPOConfig of one variant (GRPO base plus the variant's changes)."""
    _, small_args = common.toy_setup()
    over = {**GRPO, **VARIANTS[name]}
    if over.get("filter_groups_enable"):
        over["filter_groups_on_limit"] = "continue"  # near convergence few groups stay informative
    return small_args(Path(tmp), per_device_train_batch_size=16, num_generations=8, num_mini_batches=2,
                      max_completion_length=MAX_COMPLETION_LENGTH, overlong_buffer_len=OVERLONG_BUFFER,
                      max_steps=cap, learning_rate=3e-3, weight_decay=0.0, seed=seed, logging_steps=CHECK_EVERY,
                      log_samples_every=0, **over)


def _accuracy_callback(tiny, tok, reward):
    class ReachThreshold(common.TrainerCallback):
        def __init__(self):
            self.curve: list[tuple[int, float, int]] = []  # (step, sampled accuracy, completions generated)
            self.reached: tuple[int, int] | None = None

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % CHECK_EVERY:
                return
            acc = tiny.sampled_accuracy(model, tok)
            model.train()
            self.curve.append((state.global_step, acc, reward.completions))
            if acc >= THRESHOLD and self.reached is None:
                self.reached = (state.global_step, reward.completions)
                control.should_training_stop = True

    return ReachThreshold()


def _one_run(name: str, seed: int, cap: int) -> dict:
    from reward_function import make_overlong_reward
    from train_dapo import DAPOTrainer

    tiny, _ = common.toy_setup()
    tmp = common.tmpdir("learning")
    try:
        tok = tiny.toy_tokenizer()
        model = tiny.tiny_llama(tok, seed=seed)
        before = tiny.sampled_accuracy(model, tok)
        args = variant_config(tmp, name, seed, cap)
        reward = common.counting(tiny.make_toy_correctness(tok), "correctness")
        funcs = [reward]
        if args.apply_overlong_penalty:
            funcs.append(make_overlong_reward(args.max_completion_length, args.overlong_buffer_len,
                                              args.overlong_penalty_factor))
        cb = _accuracy_callback(tiny, tok, reward)
        trainer = DAPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=tiny.toy_dataset(),
                              processing_class=tok, callbacks=[cb])
        common.silence_printer(trainer)
        t = time.perf_counter()
        trainer.train()
        final = cb.curve[-1][1] if cb.curve else tiny.sampled_accuracy(trainer.model, tok)
        lengths = common.series(trainer.state.log_history, "completions/mean_length")
        return {
            "variant": name, "seed": seed, "accuracy_before": before, "accuracy_final": final,
            "steps_to_threshold": cb.reached[0] if cb.reached else None,
            "completions_to_threshold": cb.reached[1] if cb.reached else None,
            "steps_run": trainer.state.global_step, "completions_generated": reward.completions,
            "seconds": time.perf_counter() - t, "curve": cb.curve,
            "mean_length_first": lengths[0] if lengths else None, "mean_length_last": lengths[-1] if lengths else None,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def censored_spread(values: list, cap_label: str) -> dict:
    """Median / min / max where None means "not reached" (ranked above every reached value)."""
    vals = sorted((v if v is not None else math.inf) for v in values)
    med = statistics.median(vals) if vals else None

    def show(x):
        return cap_label if x is None or math.isinf(x) else x

    return {"median": show(med), "min": show(vals[0]), "max": show(vals[-1]),
            "reached": sum(v is not None for v in values), "n": len(values)}


def run(quick: bool = False) -> dict:
    common.one_thread()
    seeds = (0,) if quick else (0, 1, 2, 3, 4)
    cap = 120 if quick else 160
    t0 = time.perf_counter()
    runs = [_one_run(name, seed, cap) for seed in seeds for name in VARIANTS]
    summary = {}
    for name in VARIANTS:
        mine = [r for r in runs if r["variant"] == name]
        summary[name] = {
            "steps": censored_spread([r["steps_to_threshold"] for r in mine], f">{cap}"),
            "completions": censored_spread([r["completions_to_threshold"] for r in mine], "not reached"),
            "accuracy_before": statistics.median(r["accuracy_before"] for r in mine),
            "accuracy_final": statistics.median(r["accuracy_final"] for r in mine),
            "seconds": statistics.median(r["seconds"] for r in mine),
            "length_first": statistics.median(r["mean_length_first"] for r in mine),
            "length_last": statistics.median(r["mean_length_last"] for r in mine),
        }
    return {"quick": quick, "seeds": list(seeds), "cap_steps": cap, "threshold": THRESHOLD, "runs": runs,
            "summary": summary, "seconds": time.perf_counter() - t0}


def _cell(s: dict, digits: int = 0) -> str:
    def f(x):
        return x if isinstance(x, str) else fmt(float(x), digits)

    if s["min"] == s["max"]:
        return f"{f(s['median'])}"
    return f"{f(s['median'])} [{f(s['min'])}, {f(s['max'])}]"


def to_markdown(res: dict) -> str:
    lines = [
        f"Steps and generated completions until sampled accuracy >= {res['threshold']} (checked every rollout = "
        f"{CHECK_EVERY} optimizer steps; cap {res['cap_steps']} steps); median [min, max] over seeds "
        f"{', '.join(map(str, res['seeds']))}. 32 completions generated per rollout without filtering.",
        "",
        "| variant | optimizer steps | generated completions | reached | sampled accuracy start -> end | "
        "completion length first -> last rollout | s / run |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in res["summary"].items():
        lines.append(
            f"| {name} | {_cell(s['steps'])} | {_cell(s['completions'])} | {s['steps']['reached']}/{s['steps']['n']} | "
            f"{s['accuracy_before']:.2f} -> {s['accuracy_final']:.2f} | "
            f"{s['length_first']:.1f} -> {s['length_last']:.1f} | "
            f"{s['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    return common.cli(run, to_markdown, __doc__, argv)


if __name__ == "__main__":
    main()
