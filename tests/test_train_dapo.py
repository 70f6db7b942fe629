"""DAPOConfig / DAPOTrainer: flags, reference defaults, validation, clipping, end-to-end training, learning."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from tests.tiny import (
    first_token_parity_reward,
    make_toy_correctness,
    sampled_accuracy,
    tiny_llama,
    toy_dataset,
    toy_tokenizer,
)
from train_dapo import DAPOConfig, DAPOTrainer, make_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_args(tmp_path, **overrides) -> DAPOConfig:
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        gradient_accumulation_steps=1,
        num_mini_batches=2,
        num_generations=4,
        max_completion_length=4,
        apply_overlong_penalty=False,
        max_steps=2,
        learning_rate=1e-3,
        warmup_rollout_steps=0,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        gradient_checkpointing=False,
        max_prompt_length=None,
        filter_groups_enable=False,
        seed=0,
    )
    base.update(overrides)
    return DAPOConfig(**base)


# ----------------------------------------------------------------------------- flags and defaults
SEED_FLAGS = {
    "--loss_type": ("bnpo", "loss_type", "bnpo"),
    "--epsilon": ("0.15", "epsilon", 0.15),
    "--epsilon_high": ("0.3", "epsilon_high", 0.3),
    "--num_generations": ("8", "num_generations", 8),
    "--overlong_buffer_len": ("512", "overlong_buffer_len", 512),
    "--overlong_penalty_factor": ("0.5", "overlong_penalty_factor", 0.5),
    "--filter_groups_enable": ("true", "filter_groups_enable", True),
    "--max_filter_gen_batches": ("4", "max_filter_gen_batches", 4),
    "--beta": ("0.01", "beta", 0.01),
    "--entropy_coeff": ("0.002", "entropy_coef", 0.002),
    "--max_prompt_length": ("1024", "max_prompt_length", 1024),
    "--max_completion_length": ("2048", "max_completion_length", 2048),
    "--temperature": ("0.9", "temperature", 0.9),
    "--top_p": ("0.95", "top_p", 0.95),
    "--learning_rate": ("2e-6", "learning_rate", 2e-6),
    "--per_device_train_batch_size": ("2", "per_device_train_batch_size", 2),
    "--gradient_accumulation_steps": ("4", "gradient_accumulation_steps", 4),
    "--max_grad_norm": ("0.5", "max_grad_norm", 0.5),
    "--num_train_epochs": ("2", "num_train_epochs", 2.0),
}


def test_every_seed_flag_parses_and_reaches_the_config(tmp_path):
    argv = ["--output_dir", str(tmp_path), "--model_name_or_path", "smollm2-135m", "--dataset_name", "gsm8k"]
    for flag, (value, _, _) in SEED_FLAGS.items():
        argv += [flag, value]
    argv += ["--apply_overlong_penalty", "--bf16", "false", "--report_to", "none"]
    script, cfg, model = make_parser().parse_args_and_config(argv)
    for flag, (_, attr, expected) in SEED_FLAGS.items():
        assert getattr(cfg, attr) == expected, flag
    assert cfg.apply_overlong_penalty is True and cfg.bf16 is False
    assert cfg.report_to == [] or cfg.report_to == ["none"] or cfg.report_to == "none"
    assert script.dataset_name == "gsm8k" and model.model_name_or_path == "smollm2-135m"
    # 2 x 4 x 16 mini-batches = 128 completions per rollout per process: 16 optimizer updates.
    assert cfg.steps_per_generation == 4 * 16 and cfg.num_mini_batches == 16
    assert cfg.overlong_buffer_len == 512


def test_yaml_recipe_and_cli_override(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model_name_or_path: smollm2-135m\nepsilon_high: 0.3\nnum_generations: 4\n"
                      "max_completion_length: 64\noverlong_buffer_len: 16\ngradient_accumulation_steps: 2\n"
                      "per_device_train_batch_size: 2\n")
    _, cfg, model = make_parser().parse_args_and_config(
        ["--config", str(recipe), "--output_dir", str(tmp_path), "--num_generations", "2"]
    )
    assert cfg.epsilon_high == 0.3 and cfg.num_generations == 2 and model.model_name_or_path == "smollm2-135m"


def test_defaults_reproduce_the_reference_recipe(tmp_path):
    cfg = DAPOConfig(output_dir=str(tmp_path))
    assert (cfg.epsilon, cfg.epsilon_high, cfg.delta) == (0.2, 0.28, 10.0)
    assert cfg.loss_type == "dapo" and cfg.beta == 0.0 and cfg.entropy_coef == 0.0
    assert cfg.learning_rate == 1e-6 and cfg.lr_scheduler_type == "constant_with_warmup"
    assert cfg.weight_decay == 0.1 and cfg.max_grad_norm == 1.0
    assert (cfg.temperature, cfg.top_p, cfg.num_generations) == (1.0, 1.0, 16)
    assert cfg.max_completion_length == 20480 and cfg.overlong_buffer_len == 4096 and cfg.overlong_penalty_factor == 1.0
    assert cfg.apply_overlong_penalty and cfg.max_prompt_length == 2048
    # 16 optimizer updates per rollout; 10 rollout steps of warmup = 160 optimizer steps.
    assert cfg.num_mini_batches == 16 and cfg.steps_per_generation == 16 * cfg.gradient_accumulation_steps
    assert cfg.warmup_steps == 160
    assert (cfg.filter_groups_metric, cfg.max_filter_gen_batches, cfg.gen_batch_multiplier) == ("acc", 10, 3)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (dict(epsilon_high=0.1), "--epsilon_high 0.1: is below --epsilon"),
        (dict(max_completion_length=64, overlong_buffer_len=64), "must be smaller than --max_completion_length"),
        (dict(per_device_train_batch_size=3, gradient_accumulation_steps=1, num_mini_batches=1, num_generations=2),
         "not a multiple of --num_generations"),
        (dict(reward_mode="fuzzy"), "--reward_mode 'fuzzy': is not one of"),
        (dict(filter_groups_enable=True, filter_groups_metric="accuracy"),
         "--filter_groups_metric 'accuracy': must be one of"),
        (dict(filter_groups_enable=True, filter_groups_carry_over=True, num_mini_batches=1),
         "--filter_groups_carry_over: trains on groups generated one rollout earlier"),
    ],
)
def test_bad_settings_are_refused_with_actionable_messages(tmp_path, overrides, expected):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=1,
                num_mini_batches=2, num_generations=4, max_completion_length=64, overlong_buffer_len=16)
    base.update(overrides)
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        DAPOConfig(**base)


def test_cli_errors_stop_before_the_model_loads(tmp_path):
    """A wrong setting exits with the message and never gets as far as loading weights."""
    bad_data = tmp_path / "no_answer.jsonl"
    bad_data.write_text('{"problem": "1+1?"}\n{"problem": "2+2?"}\n')
    cases = [
        (["--epsilon_high", "0.1"], "--epsilon_high 0.1: is below --epsilon"),
        (["--dataset_name", str(bad_data)], "answer"),
        (["--model_name_or_path", "some-org/some-model-that-is-not-cached"], "smollm2-135m"),
    ]
    for extra, message in cases:
        proc = subprocess.run(
            [sys.executable, "train_dapo.py", "--config", "recipes/quick_test.yaml",
             "--output_dir", str(tmp_path / "o"), *extra],
            cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        assert proc.returncode != 0, extra
        assert message in proc.stderr + proc.stdout, (extra, proc.stderr[-2000:])
        assert "Loading weights" not in proc.stderr, "the model was loaded before the error"


# ----------------------------------------------------------------------------- clipping
def _clip_metrics(tmp_path, epsilon_high, ratios, advantages):
    tok = toy_tokenizer()
    model = tiny_llama(tok)
    args = small_args(tmp_path, epsilon_high=epsilon_high, delta=None)
    trainer = DAPOTrainer(model=model, reward_funcs=[first_token_parity_reward], args=args,
                          train_dataset=toy_dataset(), processing_class=tok)
    B, T = len(ratios), len(ratios[0])
    prompt_ids = torch.full((B, 1), tok.convert_tokens_to_ids("A"))
    completion_ids = torch.full((B, T), tok.convert_tokens_to_ids("t1"))
    mask = torch.ones(B, T, dtype=torch.long)
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.cat([prompt_ids, completion_ids], 1), torch.ones(B, T + 1, dtype=torch.long), T)
    inputs = {
        "prompt_ids": prompt_ids, "prompt_mask": torch.ones_like(prompt_ids), "completion_ids": completion_ids,
        "completion_mask": mask, "advantages": torch.tensor(advantages, dtype=torch.float),
        # ratio = exp(logp - old_logp): choose old_logp so that the ratios are exactly the given ones
        "old_per_token_logps": logps - torch.log(torch.tensor(ratios)),
        "num_items_in_batch": mask.sum() * args.steps_per_generation,
    }
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # normally set by Trainer's training loop
    trainer._metrics["train"].clear()
    trainer._compute_loss(trainer.model, inputs)
    m = trainer._metrics["train"]
    return m["clip_ratio/low_mean"][-1], m["clip_ratio/high_mean"][-1]


def test_clip_higher_changes_which_tokens_clip(tmp_path):
    ratios = [[1.1, 1.25, 1.3, 1.5], [0.7, 0.9, 1.25, 0.75]]
    advantages = [1.0, -1.0]
    # eps_high 0.2: row 0 tokens 1.25, 1.3, 1.5 exceed 1.2 (3 of 8 tokens); eps_high 0.28: only 1.3 and 1.5 (2 of 8).
    # Low side (A<0, ratio < 0.8): 0.7 and 0.75 (2 of 8) in both cases.
    low_20, high_20 = _clip_metrics(tmp_path, 0.2, ratios, advantages)
    low_28, high_28 = _clip_metrics(tmp_path, 0.28, ratios, advantages)
    assert high_20 == pytest.approx(3 / 8, abs=1e-5) and high_28 == pytest.approx(2 / 8, abs=1e-5)
    assert low_20 == pytest.approx(2 / 8, abs=1e-5) and low_28 == pytest.approx(2 / 8, abs=1e-5)


def _train(tmp_path, reward, **overrides):
    tok = toy_tokenizer()
    args = small_args(tmp_path, **overrides)
    trainer = DAPOTrainer(model=tiny_llama(tok), reward_funcs=[reward], args=args,
                          train_dataset=toy_dataset(), processing_class=tok)
    trainer.train()
    return trainer, tok


def _series(trainer, key):
    return [h[key] for h in trainer.state.log_history if key in h]


def test_clip_fractions_nonzero_only_with_several_updates_per_rollout(tmp_path):
    reward = first_token_parity_reward
    several, _ = _train(tmp_path / "a", reward, num_mini_batches=4, max_steps=8, learning_rate=0.05,
                        per_device_train_batch_size=8)
    clipped = sum(_series(several, "clip_ratio/region_mean"))
    assert clipped > 0, "with 4 mini-batches per rollout the ratio must move and some tokens clip"
    single, _ = _train(tmp_path / "b", reward, num_mini_batches=1, max_steps=4, learning_rate=0.05,
                       per_device_train_batch_size=8)
    assert sum(_series(single, "clip_ratio/region_mean")) == 0, "one update per rollout: the ratio is exactly 1"


# ----------------------------------------------------------------------------- end to end
def test_end_to_end_with_dapo_rewards_and_tensorboard(tmp_path):
    """The real reward functions (correctness + overlong shaping) through a tiny model, logged to TensorBoard."""
    from reward_function import make_correctness_reward, make_overlong_reward

    tok = toy_tokenizer()
    args = small_args(tmp_path, apply_overlong_penalty=True, max_completion_length=8, overlong_buffer_len=4,
                      report_to="tensorboard", max_steps=2)
    trainer = DAPOTrainer(
        model=tiny_llama(tok), args=args, train_dataset=toy_dataset(), processing_class=tok,
        reward_funcs=[make_correctness_reward(mode="dapo"), make_overlong_reward(8, 4, 1.0)],
    )
    trainer.train()
    logs = trainer.state.log_history
    # A random model never writes "Answer:": every correctness score is -1, so reward = -1 + overlong penalty.
    first = next(h for h in logs if "reward" in h)
    assert first["rewards/correctness/mean"] == -1.0
    assert first["reward"] == pytest.approx(-1.0 + first["rewards/overlong_penalty/mean"], abs=1e-6)
    assert all(math.isfinite(h["loss"]) for h in logs if "loss" in h)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dirs = [os.path.join(d, f) for d, _, files in os.walk(args.output_dir) for f in files if "tfevents" in f]
    assert run_dirs, "no TensorBoard event file"
    acc = EventAccumulator(os.path.dirname(run_dirs[0]))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for name in ["loss", "reward/mean", "reward/std", "learning_rate",
                 "clip_ratio/low_mean", "clip_ratio/high_mean", "entropy"]:
        assert f"train/{name}" in tags, name


# ----------------------------------------------------------------------------- learning
def _learn(tmp_path, **overrides):
    tok = toy_tokenizer()
    model = tiny_llama(tok, seed=0)
    before = sampled_accuracy(model, tok)
    # One generation batch (of gen_batch_multiplier 3 prompt batches) per rollout: 50 rollouts = exactly 150
    # generation rounds, learning or not. Unbounded resampling would make the flipped-sign run, whose policy
    # learns to avoid the target and so finds almost no informative group, cost ~7x more rounds.
    args = small_args(tmp_path, per_device_train_batch_size=16, num_generations=8, max_completion_length=2,
                      max_steps=100, learning_rate=3e-3, weight_decay=0.0, filter_groups_enable=True,
                      filter_groups_on_limit="continue", max_filter_gen_batches=1, logging_steps=10, **overrides)
    trainer = DAPOTrainer(model=model, reward_funcs=[make_toy_correctness(tok)], args=args,
                          train_dataset=toy_dataset(), processing_class=tok)
    trainer.train()
    return before, sampled_accuracy(trainer.model, tok)


def test_dapo_with_dynamic_sampling_learns_the_toy_task(tmp_path):
    # Chance is ~1/16; measured: 0.05 -> 0.95 in 100 steps (~10 s).
    before, after = _learn(tmp_path)
    assert before < 0.1
    assert after > 0.8


def test_learning_test_fails_if_the_gradient_sign_is_flipped(tmp_path, monkeypatch):
    """Mutation check: with negated advantages the same test must not pass."""
    import train_dapo

    original = train_dapo.group_advantages
    monkeypatch.setattr(train_dapo, "group_advantages", lambda *a, **k: -original(*a, **k))
    before, after = _learn(tmp_path)
    assert after < before + 0.05


def test_readme_documents_the_variables_that_are_not_flags():
    """Flags are documented by --help (from the dataclasses); the README lists only the short environment
    names and the launcher's own variables, which --help cannot show."""
    import cli

    readme = open(os.path.join(ROOT, "README.md")).read()
    for var in [*cli.ENV_ALIASES, *cli.LAUNCHER_ENV, "USE_CPU"]:
        assert f"`{var}`" in readme, f"{var} is not documented in README.md"
