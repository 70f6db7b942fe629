"""Benchmark 6: log-prob passes of dynamic sampling, per trained completion, and its step-time cost.

    python -m bench.bench_logprob_passes [--quick]

Three arms, interleaved in one process on one thread, same seed and model: dynamic sampling off;
dynamic sampling on with the old-policy log-prob pass run for every generated row (the per-round
pass, kept behind DAPOTrainer's private ``_defer_logprobs = False`` switch); dynamic sampling on with
the pass run only for the rows trained (the default). The informative fraction is fixed at f = 0.3 by
the synthetic reward of bench_gen_efficiency (exactly 3 prompts in 10 give a non-constant group),
--gen_batch_multiplier 3 (the reference), --max_filter_gen_batches 0; 2 updates per rollout, so TRL
needs the old-policy log-probs. Reported per arm: log-prob forward rows per trained completion (the
``perf/logprob_passes_per_trained_completion`` metric, cross-checked by a forward hook that counts the
rows of every no-grad log-prob forward) and seconds per optimizer step after a warm-up rollout;
the ratio DS-on / DS-off is taken per repeat.
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

from bench import common
from bench.bench_gen_efficiency import make_fraction_reward
from bench.common import fmt

K = 3  # informative fraction 0.3
GROUP = 4
ARMS = ("ds_off", "ds_on_per_round", "ds_on_trained_only")


def _one_run(arm: str, rollouts: int, seed: int = 0) -> dict:
    import torch

    from train_dapo import DAPOTrainer

    tiny, small_args = common.toy_setup()
    tmp = common.tmpdir("logprobs")
    try:
        tok = tiny.toy_tokenizer()
        reward = common.counting(make_fraction_reward(K), "correctness")
        ds = arm != "ds_off"
        args = small_args(Path(tmp), per_device_train_batch_size=16, num_generations=GROUP, num_mini_batches=2,
                          max_completion_length=24, max_steps=2 * rollouts, filter_groups_enable=ds,
                          gen_batch_multiplier=3, max_filter_gen_batches=0, seed=seed, log_samples_every=0)
        model = tiny.tiny_llama(tok, seed=seed, hidden=128, layers=4)
        trainer = DAPOTrainer(model=model, reward_funcs=[reward], args=args,
                              train_dataset=tiny.toy_dataset(25), processing_class=tok)
        trainer._defer_logprobs = arm != "ds_on_per_round"
        common.silence_printer(trainer)
        rows: list[int] = []

        def hook(module, a, kwargs):
            if "labels" in kwargs and not torch.is_grad_enabled():
                rows.append(kwargs["input_ids"].size(0))

        trainer.model.register_forward_pre_hook(hook, with_kwargs=True)
        clock = common.StepClock()
        trainer.add_callback(clock)
        trainer.train()
        logs = trainer.state.log_history
        passes = common.series(logs, "perf/logprob_passes_per_trained_completion")
        trained = 2 * rollouts * args.per_device_train_batch_size
        return {
            "arm": arm, "seed": seed,
            "passes_per_trained": statistics.mean(passes) if passes else None,
            "hook_rows_per_trained": sum(rows) / trained,
            "generated_per_trained": reward.completions / trained,
            "seconds_per_step": clock.seconds_per_step(skip=2),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(quick: bool = False) -> dict:
    common.one_thread()
    info = common.machine_info()
    rollouts, repeats = (3, 1) if quick else (6, 3)
    t0 = time.perf_counter()
    rows = []
    for rep in range(repeats):
        order = ARMS[rep % 3:] + ARMS[: rep % 3]  # rotate the order so a neighbour's burst hits every arm
        rows += [{**_one_run(arm, rollouts, seed=rep), "repeat": rep} for arm in order]
    return {"quick": quick, "rollouts": rollouts, "repeats": repeats, "machine": info, "rows": rows,
            "seconds": time.perf_counter() - t0, "loadavg_end": common.machine_info().get("loadavg_1min")}


def to_markdown(res: dict) -> str:
    by_arm: dict = {a: [r for r in res["rows"] if r["arm"] == a] for a in ARMS}

    def med(arm, key):
        vals = [r[key] for r in by_arm[arm] if r[key] is not None]
        return statistics.median(vals) if vals else None

    ratios = {a: [] for a in ARMS[1:]}
    for rep in range(res["repeats"]):
        base = [r for r in by_arm["ds_off"] if r["repeat"] == rep][0]["seconds_per_step"]
        for a in ARMS[1:]:
            ratios[a].append([r for r in by_arm[a] if r["repeat"] == rep][0]["seconds_per_step"] / base)
    names = {"ds_off": "dynamic sampling off", "ds_on_per_round": "DS on, log-probs of every generated row",
             "ds_on_trained_only": "DS on, log-probs of trained rows only (default)"}
    lines = [
        f"{common.machine_line(res['machine'])}; load {res.get('loadavg_end')} at the end. f = {K / 10:.1f}, x3 "
        f"generation batch, {res['rollouts']} rollouts x 2 updates x 16 completions per run, {res['repeats']} "
        "repeat(s), arms interleaved; tiny Llama (hidden 128, 4 layers), up to 24 completion tokens.",
        "",
        "| arm | log-prob passes per trained completion (metric / hook) | completions generated per trained | "
        "s per optimizer step (median) | step time / DS off (per repeat) |",
        "|---|---:|---:|---:|---:|",
    ]
    for a in ARMS:
        ratio = " / ".join(fmt(x, 2) for x in ratios[a]) if a in ratios else "1"
        lines.append(
            f"| {names[a]} | {fmt(med(a, 'passes_per_trained'), 2)} / {fmt(med(a, 'hook_rows_per_trained'), 2)} | "
            f"{fmt(med(a, 'generated_per_trained'), 2)} | {fmt(med(a, 'seconds_per_step'), 2)} | {ratio} |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    return common.cli(run, to_markdown, __doc__, argv)


if __name__ == "__main__":
    main()
