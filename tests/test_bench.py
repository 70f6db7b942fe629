"""The pure (non-timing) parts of the benchmarks in bench/: no timing is asserted anywhere."""

from __future__ import annotations

import pytest

from bench import bench_embedded, bench_gen_efficiency, bench_learning, bench_overhead, run_all
from tests.tiny import toy_dataset


@pytest.mark.parametrize("k", range(0, 11))
def test_fraction_reward_makes_exactly_k_tenths_of_the_prompts_informative(k):
    data = toy_dataset(25)  # 100 prompts, row ids toy:0 .. toy:99
    reward = bench_gen_efficiency.make_fraction_reward(k)
    assert bench_gen_efficiency.informative_fraction(data, reward, group=4) == pytest.approx(k / 10)


def test_fraction_reward_scores_one_success_per_informative_group_and_none_elsewhere():
    reward = bench_gen_efficiency.make_fraction_reward(3)
    row_ids = [rid for rid in ["toy:12", "toy:17", "toy:20"] for _ in range(4)]
    scores = reward(completion_ids=[[5]] * len(row_ids), row_id=row_ids)
    assert scores[:4] == [1.0, -1.0, -1.0, -1.0]  # 12 % 10 = 2 < 3: informative
    assert scores[4:8] == [-1.0] * 4  # 17 % 10 = 7: constant
    assert scores[8:] == [1.0, -1.0, -1.0, -1.0]  # 20 % 10 = 0: informative
    assert reward.__name__ == "correctness"  # the filter's acc metric reads the "correctness" column


def test_overhead_compares_identical_grpo_and_dapo_configurations(tmp_path):
    dcfg = bench_overhead.dapo_config(str(tmp_path), steps=4, seed=0)
    gcfg = bench_overhead.grpo_config(dcfg, str(tmp_path))
    assert bench_overhead.config_differences(dcfg, gcfg) == []
    assert gcfg.steps_per_generation == bench_overhead.NUM_MINI_BATCHES and not dcfg.filter_groups_enable


def test_learning_variants_differ_from_vanilla_grpo_only_in_their_component(tmp_path):
    base = bench_learning.variant_config(str(tmp_path), "GRPO (vanilla)", seed=0, cap=10)
    assert (base.epsilon, base.epsilon_high, base.loss_type) == (0.2, 0.2, "grpo")
    assert not base.filter_groups_enable and not base.apply_overlong_penalty and base.num_mini_batches == 2
    changed = {
        "+ clip-higher (0.28)": {"epsilon_high"},
        "+ token-level loss": {"loss_type"},
        "+ overlong shaping": {"apply_overlong_penalty"},
        "+ dynamic sampling": {"filter_groups_enable", "filter_groups_on_limit"},
    }
    fields = ["epsilon", "epsilon_high", "loss_type", "apply_overlong_penalty", "filter_groups_enable",
              "filter_groups_on_limit", "learning_rate", "max_completion_length", "overlong_buffer_len", "delta",
              "per_device_train_batch_size", "num_generations", "steps_per_generation", "seed", "weight_decay"]
    for name, expected in changed.items():
        cfg = bench_learning.variant_config(str(tmp_path), name, seed=0, cap=10)
        diff = {f for f in fields if getattr(cfg, f) != getattr(base, f)}
        assert diff == expected, name


def test_censored_spread_ranks_unreached_runs_above_the_cap():
    s = bench_learning.censored_spread([40, None, 60], ">200")
    assert (s["median"], s["min"], s["max"], s["reached"]) == (60, 40, ">200", 2)
    assert bench_learning.censored_spread([None, None, 10], ">200")["median"] == ">200"


def test_embedded_summary_arithmetic():
    recipe = {"num_generations": 2, "per_device_train_batch_size": 2, "num_mini_batches": 2}
    logs = [
        {"step": 1, "step_time": 10.0, "timing/generation_s": 6.0, "timing/scoring_s": 1.0,
         "completions/mean_length": 20.0, "num_tokens": 400.0},
        {"step": 2, "step_time": 4.0},
        {"step": 2, "train_runtime": 15.0},
    ]
    s = bench_embedded.summarize(logs, recipe, [])
    assert s["optimizer_steps"] == 2 and s["s_per_step"] == 7.0 and s["first_step_s"] == 10.0
    assert s["completions_generated"] == 4 and s["completion_tokens_generated"] == 80.0
    assert s["gen_tokens_per_s"] == pytest.approx(80 / 6) and s["update_s"] == pytest.approx(7.0)
    assert s["update_seq_tokens_per_s"] == pytest.approx(400 / 7)
    # With filtering, counts come from the dynamic-sampling counters.
    recipe_f = {**recipe, "filter_groups_enable": True}
    logs[0].update({"dynamic_sampling/groups_generated": 6, "dynamic_sampling/groups_trained": 2})
    s = bench_embedded.summarize(logs, recipe_f, [])
    assert s["completions_generated"] == 12 and s["completions_trained"] == 4


def test_rewriting_keeps_the_text_outside_the_markers():
    start, end = run_all.markers(quick=False)
    text = f"# Title\n\nintro\n\n{start}\nold numbers\n{end}\n\n## Notes\n\nkeep me\n"
    new = run_all.rewrite_section(text, "new numbers", start, end)
    assert new == f"# Title\n\nintro\n\n{start}\nnew numbers\n{end}\n\n## Notes\n\nkeep me\n"
    assert run_all.rewrite_section(new, "new numbers", start, end) == new  # idempotent
    # The quick section has its own markers and leaves the full one alone.
    qs, qe = run_all.markers(quick=True)
    both = run_all.rewrite_section(new, "quick numbers", qs, qe)
    assert both.startswith(new) and both.endswith(f"{qs}\nquick numbers\n{qe}\n")
    assert run_all.rewrite_section(both, "newer", start, end).count("quick numbers") == 1


def _geneff_entry(date="2025-01-01 00:00 UTC", value=2.0):
    return {
        "date": date, "command": "python -m bench.run_all --only geneff", "seconds": 60.0,
        "machine": {"cpu": "Test CPU", "nproc": 2, "ram_gib": 24.0, "torch": "x", "trl": "y"},
        "result": {"rollouts": 1, "group": 4, "rollout_groups": 8, "rows": [
            {"k": 5, "multiplier": m, "carry_over": c, "generated_per_trained": value, "kept_fraction": 0.5,
             "counters_match_reward_calls": True, "groups_reused": 0, "groups_trained": 8}
            for m, c in bench_gen_efficiency.SETTINGS]},
    }


def test_rendered_section_names_command_machine_and_tables():
    text = run_all.render({"geneff": _geneff_entry()}, quick=False, machine={"cpu": "Test CPU", "nproc": 2},
                          total_s=600.0, date="today")
    assert "make bench" in text and "Test CPU" in text and "| 0.5 | 2.00 |" in text and "10.0 min" in text
    assert text.count("Not run yet.") == len(run_all.BENCHMARKS) - 1


def test_a_partial_run_rewrites_only_its_own_subsection():
    start, end = run_all.markers(quick=False)
    full = run_all.render({"geneff": _geneff_entry()}, quick=False, machine={"cpu": "Test CPU"}, total_s=60.0,
                          date="today")
    text = f"intro\n\n{start}\n{full}\n{end}\n\nnotes\n"
    new = run_all.update_doc(text, {"geneff": _geneff_entry("2025-02-02 00:00 UTC", 3.0)}, quick=False,
                             partial=True, machine={}, total_s=None, date=None)
    assert "| 0.5 | 2.00 | 3.00 |" in new and "2.00 | 2.00 | 2.00" not in new
    assert new.startswith("intro\n\n") and new.endswith(f"{end}\n\nnotes\n")
    assert "All five took 1.0 min" in new and new.count("Not run yet.") == len(run_all.BENCHMARKS) - 1
