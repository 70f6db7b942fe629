"""Dynamic sampling: building blocks, single-process trainer behaviour, limits, carry-over, resume."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

from dynamic_sampling import (
    PromptStream,
    concat_rows,
    group_advantages,
    informative_groups,
    trim_padding,
    usable_group_count,
)
from tests.test_train_dapo import small_args
from tests.tiny import make_toy_correctness, tiny_llama, toy_dataset, toy_tokenizer
from train_dapo import DAPOTrainer, FilterLimitError


# ----------------------------------------------------------------------------- building blocks
def test_prompt_stream_is_seeded_covers_each_epoch_and_resumes():
    a, b = PromptStream(10, seed=3), PromptStream(10, seed=3)
    first = a.take(7) + a.take(3)
    assert sorted(first) == list(range(10)), "one pass visits every prompt exactly once"
    assert first == b.take(10)
    assert a.epoch == 1 and a.offset == 0 and a.consumed == 10
    second = a.take(10)
    assert sorted(second) == list(range(10)) and second != first, "a new permutation each epoch"
    c = PromptStream(10, seed=3)
    c.take(4)
    state = c.state_dict()
    d = PromptStream(10, seed=3)
    d.load_state_dict(state)
    assert d.take(12) == c.take(12)
    with pytest.raises(ValueError, match="same dataset, filters and --seed"):
        PromptStream(11, seed=3).load_state_dict(state)


def test_informative_groups_matches_the_reference_rule():
    metric = torch.tensor([1, 1, 1, 1, 1, 0, 1, 1, 0, 0, 0, 0, 0.5, 0.5, float("nan"), 0.7], dtype=torch.float)
    assert informative_groups(metric, 4).tolist() == [False, True, False, True]
    assert informative_groups(torch.tensor([1.0, 1.0]), 1).tolist() == [True, True], "size-1 groups are kept"


def test_concat_rows_pads_each_field_on_its_side():
    a = {"prompt_ids": torch.tensor([[5, 6]]), "prompt_mask": torch.tensor([[1, 1]]),
         "completion_ids": torch.tensor([[7]]), "completion_mask": torch.tensor([[1]]),
         "advantages": torch.tensor([0.5]), "num_items_in_batch": torch.tensor(1)}
    b = {"prompt_ids": torch.tensor([[8, 9, 10]]), "prompt_mask": torch.tensor([[1, 1, 1]]),
         "completion_ids": torch.tensor([[11, 12]]), "completion_mask": torch.tensor([[1, 1]]),
         "advantages": torch.tensor([-0.5]), "num_items_in_batch": torch.tensor(2)}
    out = concat_rows([a, b], pad_token_id=0)
    assert out["prompt_ids"].tolist() == [[0, 5, 6], [8, 9, 10]]
    assert out["prompt_mask"].tolist() == [[0, 1, 1], [1, 1, 1]]
    assert out["completion_ids"].tolist() == [[7, 0], [11, 12]]
    assert out["completion_mask"].tolist() == [[1, 0], [1, 1]]
    assert out["advantages"].tolist() == [0.5, -0.5] and "num_items_in_batch" not in out
    trimmed = trim_padding({k: v[:1] for k, v in out.items()})
    assert trimmed["prompt_ids"].tolist() == [[5, 6]] and trimmed["completion_ids"].tolist() == [[7]]
    with pytest.raises(NotImplementedError, match="pixel_values"):
        concat_rows([{**a, "pixel_values": torch.zeros(1, 3)}], 0)


def test_usable_group_count_and_advantages():
    # 2 processes, groups of 4, 4 mini-batches: per-process rows must split in 4 -> groups per process even.
    assert usable_group_count(7, 2, 4, 4) == 6 - 2 * 0 and usable_group_count(7, 2, 4, 8) == 4
    assert usable_group_count(1, 2, 4, 1) == 0
    rewards = torch.tensor([1.0, -1.0, -1.0, -1.0])
    # mean -0.5, unbiased std = 1.0: (1.5, -0.5, -0.5, -0.5) / (1 + 1e-4)
    expected = torch.tensor([1.5, -0.5, -0.5, -0.5]) / (1.0 + 1e-4)
    assert torch.allclose(group_advantages(rewards, 4, "group"), expected)
    assert torch.allclose(group_advantages(rewards, 4, "none"), torch.tensor([1.5, -0.5, -0.5, -0.5]))


# ----------------------------------------------------------------------------- trainer, one process
def _trainer(tmp_path, reward, **overrides):
    tok = toy_tokenizer()
    defaults = dict(filter_groups_enable=True, per_device_train_batch_size=8, num_generations=4, num_mini_batches=2,
                    max_completion_length=2, max_steps=3, gen_batch_multiplier=1)
    defaults.update(overrides)
    args = small_args(tmp_path, **defaults)
    return DAPOTrainer(model=tiny_llama(tok), reward_funcs=[reward], args=args,
                       train_dataset=toy_dataset(), processing_class=tok), tok


def _steps(trainer, key):
    return [h[key] for h in trainer.state.log_history if key in h]


def test_filtering_trains_on_full_fully_informative_batches_with_resampling(tmp_path):
    tok = toy_tokenizer()
    # Chance of the target token is ~1/16, so with 4 samples only ~1 group in 4 is informative:
    # several generation batches are needed per step.
    trainer, _ = _trainer(tmp_path, make_toy_correctness(tok), max_steps=4)
    trainer.train()
    need = 8 * 2 // 4  # per_device_train_batch_size x steps_per_generation / num_generations
    assert _steps(trainer, "dynamic_sampling/groups_trained") == [need] * 2
    assert _steps(trainer, "dynamic_sampling/zero_spread_frac_trained") == [0.0, 0.0]
    assert max(_steps(trainer, "dynamic_sampling/num_gen_batches")) > 1
    kept = _steps(trainer, "dynamic_sampling/groups_kept")
    generated = _steps(trainer, "dynamic_sampling/groups_generated")
    assert all(k >= need for k in kept) and all(
        g == need * n for g, n in zip(generated, _steps(trainer, "dynamic_sampling/num_gen_batches"), strict=True)
    )


def test_the_returned_batch_is_the_trained_one(tmp_path):
    """Advantages and the token normaliser are recomputed for the kept groups only."""
    tok = toy_tokenizer()
    trainer, _ = _trainer(tmp_path, make_toy_correctness(tok))
    trainer.model.train()
    batch = trainer._dynamic_sampling_batch()
    rows = trainer.args.per_device_train_batch_size * trainer.args.steps_per_generation
    assert batch["completion_ids"].shape[0] == rows and batch["advantages"].shape == (rows,)
    assert int(batch["num_items_in_batch"]) == int(batch["completion_mask"].sum())
    groups = batch["advantages"].view(-1, 4)
    assert torch.allclose(groups.sum(dim=1), torch.zeros(groups.size(0)), atol=1e-4), "advantages are centred per group"
    assert (groups.abs().sum(dim=1) > 0).all(), "no zero-advantage (uninformative) group is trained"


def test_generation_batch_limit_errors_by_default_and_continue_trains_smaller(tmp_path):
    def never_informative(completion_ids, **kwargs):
        return [-1.0] * len(completion_ids)

    never_informative.__name__ = "correctness"
    trainer, _ = _trainer(tmp_path / "a", never_informative, max_filter_gen_batches=2)
    with pytest.raises(FilterLimitError) as err:
        trainer.train()
    message = str(err.value)
    assert "kept 0 of the 4 informative groups" in message and "after 2 generation batches" in message
    assert "0 of 8 generated groups (0.0%)" in message and "--filter_groups_on_limit continue" in message

    trainer, _ = _trainer(tmp_path / "b", never_informative, max_filter_gen_batches=2,
                          filter_groups_on_limit="continue", max_steps=2)
    trainer.train()
    assert _steps(trainer, "dynamic_sampling/partial_batch") == [1.0]
    assert _steps(trainer, "dynamic_sampling/groups_trained") == [0]
    assert all(loss == 0 for loss in _steps(trainer, "loss"))


def test_carry_over_reuses_surplus_groups_once(tmp_path):
    def always_informative(completion_ids, **kwargs):  # first of each group of 4 right, others wrong
        return [1.0 if i % 4 == 0 else -1.0 for i in range(len(completion_ids))]

    always_informative.__name__ = "correctness"
    trainer, _ = _trainer(tmp_path, always_informative, filter_groups_carry_over=True, gen_batch_multiplier=3,
                          max_steps=6)
    trainer.train()
    need = 4
    carried = _steps(trainer, "dynamic_sampling/groups_carried_over")
    reused = _steps(trainer, "dynamic_sampling/groups_reused")
    generated = _steps(trainer, "dynamic_sampling/groups_generated")
    # Step 1 generates 3 x 4 groups, trains 4, carries 8. Step 2 uses 4 carried + (none needed) -> no generation;
    # its 4 unused carried groups are dropped (never carried twice). Then the cycle repeats.
    assert reused[0] == 0 and carried[0] == 8 and generated[0] == 12
    assert reused[1] == need and generated[1] == 0 and carried[1] == 0
    assert reused[2] == 0 and generated[2] == 12


class _StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def _recording_reward(log):
    def correctness(completion_ids, row_id, **kwargs):
        log.extend(row_id[::4])
        return [1.0 if i % 4 == 0 else -1.0 for i in range(len(completion_ids))]

    return correctness


def test_resume_continues_the_prompt_stream(tmp_path):
    full: list = []
    trainer, _ = _trainer(tmp_path / "full", _recording_reward(full), max_steps=6, save_strategy="steps", save_steps=2)
    trainer.train()

    part: list = []
    trainer, _ = _trainer(tmp_path / "part", _recording_reward(part), max_steps=6, save_strategy="steps", save_steps=2)
    trainer.add_callback(_StopAt(2))
    trainer.train()
    assert part == full[: len(part)]
    resumed: list = []
    trainer, _ = _trainer(
        tmp_path / "part", _recording_reward(resumed), max_steps=6, save_strategy="steps", save_steps=2
    )
    trainer.train(resume_from_checkpoint=str(tmp_path / "part" / "out" / "checkpoint-2"))
    assert part + resumed == full, "the resumed run draws exactly the prompts the uninterrupted run drew"


def test_an_empty_rollout_leaves_the_weights_untouched(tmp_path):
    """With --filter_groups_on_limit continue and no informative group, AdamW must not step: weight decay and
    momentum would move the weights although the gradient is 0."""

    def never_informative(completion_ids, **kwargs):
        return [-1.0] * len(completion_ids)

    never_informative.__name__ = "correctness"
    trainer, _ = _trainer(tmp_path, never_informative, max_filter_gen_batches=1, filter_groups_on_limit="continue",
                          max_steps=4, weight_decay=0.1)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert _steps(trainer, "dynamic_sampling/groups_trained") == [0, 0]
    assert trainer.state.global_step == 4
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("metric", ["acc", "seq_reward"])
def test_an_unscorable_completion_does_not_make_a_group_informative(tmp_path, metric):
    """A group of three correct answers and one unscorable (None -> NaN) trains with all-zero advantages, so
    it must not count as informative."""
    tok = toy_tokenizer()
    trainer, _ = _trainer(tmp_path, make_toy_correctness(tok), filter_groups_metric=metric)
    nan = float("nan")
    rewards_per_func = torch.tensor([[1.0], [1.0], [1.0], [nan], [1.0], [-1.0], [nan], [1.0]])
    assert informative_groups(trainer._filter_metric(rewards_per_func), 4).tolist() == [False, True]
    assert group_advantages(trainer._seq_rewards(rewards_per_func), 4, "group")[:4].tolist() == [0.0] * 4
