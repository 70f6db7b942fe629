"""Benchmark 1: per-step overhead of DAPOTrainer over TRL's stock GRPOTrainer.

    python -m bench.bench_overhead [--quick]

Same tiny Llama built from a config (same seed), same toy data, reward, batch and lengths, clip-higher
and token-level loss in both, dynamic sampling off; DAPO's ``num_mini_batches=2`` is stock GRPO's
``steps_per_generation=2``. The two GRPOConfig views of the configurations are compared field by field
and every difference is reported (there should be none besides the output directory). The trainers run
alternately in one process (the order alternates every repeat), a fresh trainer and model per repeat;
the first rollout (warm-up) is excluded from the step time. Reported: the ratio DAPO / GRPO of seconds
per optimizer step, per repeat (min / median / max). A third arm, DAPO with dynamic sampling on, is
reported in seconds per *trained* group (GRPO trains every group; DAPO only informative ones, and
generates more to find them).
"""

from __future__ import annotations

import dataclasses
import shutil
import time

from bench import common
from bench.common import fmt, spread

NUM_MINI_BATCHES = 2
SETTINGS = dict(
    per_device_train_batch_size=16,  # completions per optimizer step
    gradient_accumulation_steps=1,
    num_generations=8,               # 2 mini-batches x 16 = 32 completions = 4 prompt groups per rollout
    max_completion_length=32,
    learning_rate=1e-3,
    weight_decay=0.0,
)
MODEL = dict(hidden=128, layers=4)
IGNORED_FIELDS = {"output_dir", "logging_dir", "run_name"}


def dapo_config(tmp: str, steps: int, seed: int, **extra):
    _, small_args = common.toy_setup()
    from pathlib import Path

    return small_args(Path(tmp), max_steps=steps, seed=seed, num_mini_batches=NUM_MINI_BATCHES,
                      **SETTINGS, **extra)


def grpo_config(dcfg, tmp: str):
    """Stock GRPOConfig with the DAPO configuration's values (explicitly: DAPOConfig changes some defaults)."""
    from trl import GRPOConfig

    keys = ["per_device_train_batch_size", "gradient_accumulation_steps", "num_generations", "max_completion_length",
            "max_steps", "learning_rate", "lr_scheduler_type", "weight_decay", "max_grad_norm", "warmup_steps",
            "epsilon", "epsilon_high", "delta", "beta", "loss_type", "temperature", "top_p", "bf16", "save_strategy",
            "logging_steps", "gradient_checkpointing", "seed", "steps_per_generation", "save_steps",
            "dataloader_pin_memory"]
    kwargs = {k: getattr(dcfg, k) for k in keys}
    return GRPOConfig(output_dir=tmp + "/out", report_to="none", **kwargs)


def config_differences(dcfg, gcfg) -> list[str]:
    """Every GRPOConfig field whose value differs between the two configurations."""
    from trl import GRPOConfig

    diffs = []
    for f in dataclasses.fields(GRPOConfig):
        if f.name in IGNORED_FIELDS:
            continue
        a, b = getattr(dcfg, f.name, None), getattr(gcfg, f.name, None)
        if a != b:
            diffs.append(f"{f.name}: DAPO {a!r} vs GRPO {b!r}")
    return diffs


def _one_run(kind: str, steps: int, seed: int) -> dict:
    from trl import GRPOTrainer

    from train_dapo import DAPOTrainer

    tiny, _ = common.toy_setup()
    tmp = common.tmpdir(f"overhead_{kind}")
    try:
        tok = tiny.toy_tokenizer()
        model = tiny.tiny_llama(tok, seed=seed, **MODEL)
        extra = {}
        if kind == "dapo_ds":
            extra = dict(filter_groups_enable=True, filter_groups_on_limit="continue")
        dcfg = dapo_config(tmp, steps, seed, **extra)
        clock = common.StepClock()
        reward = tiny.make_toy_correctness(tok)
        if kind == "grpo":
            args = grpo_config(dcfg, tmp)
            cls = GRPOTrainer
        else:
            args, cls = dcfg, DAPOTrainer
        trainer = cls(model=model, reward_funcs=[reward], args=args, train_dataset=tiny.toy_dataset(16),
                      processing_class=tok, callbacks=[clock])
        common.silence_printer(trainer)
        trainer.train()
        skip = NUM_MINI_BATCHES  # first rollout = warm-up
        out = {"s_per_step": clock.seconds_per_step(skip), "s_per_step_median_rollout":
               clock.median_rollout_seconds(NUM_MINI_BATCHES, skip) / NUM_MINI_BATCHES, "steps": len(clock.times),
               "rewards": common.series(trainer.state.log_history, "reward")}
        rollouts_after_warmup = (len(clock.times) - skip) / NUM_MINI_BATCHES
        secs = clock.times[-1] - clock.times[skip - 1]
        if kind == "dapo_ds":
            trained = common.series(trainer.state.log_history, "dynamic_sampling/groups_trained")
            generated = common.series(trainer.state.log_history, "dynamic_sampling/groups_generated")
            out["groups_trained"] = sum(trained[1:])
            out["groups_generated"] = sum(generated[1:])
        else:
            groups = SETTINGS["per_device_train_batch_size"] * NUM_MINI_BATCHES // SETTINGS["num_generations"]
            out["groups_trained"] = out["groups_generated"] = groups * rollouts_after_warmup
        out["s_per_trained_group"] = secs / out["groups_trained"] if out["groups_trained"] else None
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(quick: bool = False) -> dict:
    common.one_thread()
    repeats, steps = (2, 8) if quick else (5, 16)
    tmp = common.tmpdir("overhead_cfg")
    dcfg = dapo_config(tmp, steps, 0)
    diffs = config_differences(dcfg, grpo_config(dcfg, tmp))
    shutil.rmtree(tmp, ignore_errors=True)

    arms = ["grpo", "dapo", "dapo_ds"]
    runs: dict[str, list[dict]] = {a: [] for a in arms}
    order_log = []
    t0 = time.perf_counter()
    for r in range(repeats):
        order = arms[r % 3:] + arms[: r % 3]  # rotate the order every repeat
        order_log.append(order)
        for kind in order:
            runs[kind].append(_one_run(kind, steps, seed=r))
    ratios = [d["s_per_step"] / g["s_per_step"] for d, g in zip(runs["dapo"], runs["grpo"], strict=True)]
    robust = [
        d["s_per_step_median_rollout"] / g["s_per_step_median_rollout"]
        for d, g in zip(runs["dapo"], runs["grpo"], strict=True)
    ]
    same_work = all(d["rewards"] == g["rewards"] for d, g in zip(runs["dapo"], runs["grpo"], strict=True))
    ds_ratios = [
        d["s_per_trained_group"] / g["s_per_trained_group"] for d, g in zip(runs["dapo_ds"], runs["grpo"], strict=True)
    ]
    return {
        "quick": quick,
        "repeats": repeats,
        "steps_per_repeat": steps,
        "warmup_steps_excluded": NUM_MINI_BATCHES,
        "settings": {**SETTINGS, "num_mini_batches": NUM_MINI_BATCHES, "model": MODEL},
        "config_differences": diffs,
        "order": order_log,
        "runs": runs,
        "ratio_dapo_over_grpo": spread(ratios),
        "ratios": ratios,
        "ratio_median_rollout": spread(robust),
        "identical_rewards": same_work,
        "s_per_step": {a: spread([x["s_per_step"] for x in runs[a]]) for a in arms},
        "s_per_trained_group": {a: spread([x["s_per_trained_group"] for x in runs[a]]) for a in arms},
        "ds_group_ratio_over_grpo": spread(ds_ratios),
        "ds_generated_per_trained": spread(
            [x["groups_generated"] / x["groups_trained"] for x in runs["dapo_ds"] if x["groups_trained"]]),
        "seconds": time.perf_counter() - t0,
    }


def to_markdown(res: dict) -> str:
    r = res["ratio_dapo_over_grpo"]
    s = res["s_per_step"]
    g = res["s_per_trained_group"]
    lines = [
        f"{res['repeats']} repeats x {res['steps_per_repeat']} optimizer steps per arm, alternating, first rollout "
        f"({res['warmup_steps_excluded']} steps) excluded; tiny Llama (hidden {res['settings']['model']['hidden']}, "
        f"{res['settings']['model']['layers']} layers), 16 completions per step, 8 per prompt, "
        f"{res['settings']['max_completion_length']} tokens max, 2 updates per rollout. "
        f"Config differences (GRPOConfig fields): {'; '.join(res['config_differences']) or 'none'}.",
        "",
        "| arm | s / optimizer step (median, min-max) | s / trained group (median) | "
        "ratio to GRPO (min / median / max) |",
        "|---|---:|---:|---:|",
        f"| TRL GRPOTrainer | {fmt(s['grpo']['median'], 3)} ({fmt(s['grpo']['min'], 3)}-{fmt(s['grpo']['max'], 3)}) "
        f"| {fmt(g['grpo']['median'], 3)} | 1 |",
        f"| DAPOTrainer, dynamic sampling off | {fmt(s['dapo']['median'], 3)} ({fmt(s['dapo']['min'], 3)}-"
        f"{fmt(s['dapo']['max'], 3)}) | {fmt(g['dapo']['median'], 3)} | **{fmt(r['min'], 3)} / {fmt(r['median'], 3)} / "
        f"{fmt(r['max'], 3)}** per step |",
    ]
    rr = res["ratio_median_rollout"]
    lines.append(
        f"| (same, from the median rollout of each run) | | | {fmt(rr['min'], 3)} / {fmt(rr['median'], 3)} / "
        f"{fmt(rr['max'], 3)} per step |"
    )
    d = res["ds_group_ratio_over_grpo"]
    lines.append(
        f"| DAPOTrainer, dynamic sampling on | {fmt(s['dapo_ds']['median'], 3)} ({fmt(s['dapo_ds']['min'], 3)}-"
        f"{fmt(s['dapo_ds']['max'], 3)}) | {fmt(g['dapo_ds']['median'], 3)} | "
        f"{fmt(d['min'], 2)} / {fmt(d['median'], 2)} / "
        f"{fmt(d['max'], 2)} per trained group ({fmt(res['ds_generated_per_trained']['median'], 2)} groups generated "
        "per group trained) |"
    )
    lines += ["", f"GRPO and DAPO (filtering off) produced identical per-step rewards in every repeat (same work): "
              f"{'yes' if res['identical_rewards'] else 'NO'}."]
    return "\n".join(lines)


def main(argv=None) -> dict:
    return common.cli(run, to_markdown, __doc__, argv)


if __name__ == "__main__":
    main()
