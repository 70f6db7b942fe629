"""Dynamic sampling computes log-probs (old policy, reference model) only for the rows it trains on."""

from __future__ import annotations

import pytest
import torch

from tests.test_train_dapo import small_args
from tests.tiny import make_toy_correctness, tiny_llama, toy_dataset, toy_tokenizer
from train_dapo import DAPOTrainer

ROW_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")


def _trainer(tmp_path, defer: bool, **overrides):
    tok = toy_tokenizer()
    # num_mini_batches=2 with one accumulation step: the rollout is split into two updates, so TRL needs the
    # old-policy log-probs. The toy reward makes ~1 group in 4 informative: several rounds per step.
    options = dict(filter_groups_enable=True, per_device_train_batch_size=8, num_generations=4, num_mini_batches=2,
                   max_completion_length=3, gen_batch_multiplier=2, max_filter_gen_batches=0)
    options.update(overrides)
    model = tiny_llama(tok)
    if options.get("beta"):  # TRL loads the reference model from the policy's path
        model.save_pretrained(tmp_path / "model")
        model = str(tmp_path / "model")
    trainer = DAPOTrainer(model=model, reward_funcs=[make_toy_correctness(tok)],
                          args=small_args(tmp_path, **options), train_dataset=toy_dataset(), processing_class=tok)
    trainer._defer_logprobs = defer
    trainer.model.train()
    return trainer


def _logprob_pass_rows(trainer) -> list[int]:
    """Rows of every no-grad log-prob forward (TRL's log-prob pass is the only caller that passes labels)."""
    rows: list[int] = []

    def hook(module, args, kwargs):
        if "labels" in kwargs and not torch.is_grad_enabled():
            rows.append(kwargs["input_ids"].size(0))

    for model in {id(m): m for m in (trainer.model, trainer.ref_model) if m is not None}.values():
        model.register_forward_pre_hook(hook, with_kwargs=True)
    return rows


def _independent_logps(model, batch) -> torch.Tensor:
    """Completion-token log-probs from a plain forward of the model, one row at a time."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    width = batch["completion_ids"].size(1)
    out = []
    with torch.no_grad():
        for i in range(ids.size(0)):
            logits = model(input_ids=ids[i : i + 1], attention_mask=mask[i : i + 1]).logits[0, -width - 1 : -1]
            out.append(torch.log_softmax(logits.float(), -1).gather(1, ids[i, -width:, None]).squeeze(1))
    return torch.stack(out)


@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_trained_batch_is_identical_with_and_without_the_per_round_pass(tmp_path, beta):
    batches = {}
    for defer in (False, True):  # each trainer re-seeds: both draw the same prompts and completions
        trainer = _trainer(tmp_path / str(defer), defer, beta=beta)
        batches[defer] = trainer._generate_and_score_completions(None)
        passes = trainer._metrics["train"]["perf/logprob_passes_per_trained_completion"][-1]
        rounds = trainer._metrics["train"]["dynamic_sampling/num_gen_batches"][-1]
        if defer:
            assert passes == 1.0
        else:
            assert passes == rounds * 2, "the per-round path scores every generated row (2 rollouts per round)"
    before, after = batches[False], batches[True]
    assert rounds > 1, "the toy task needs several rounds, so rows were discarded"
    for key in ROW_KEYS:
        assert torch.equal(before[key], after[key]), key
    assert torch.equal(before["advantages"], after["advantages"])
    assert int(before["num_items_in_batch"]) == int(after["num_items_in_batch"])
    keys = ["old_per_token_logps"] + (["ref_per_token_logps"] if beta else [])
    assert sorted(k for k in after if k.endswith("logps")) == sorted(keys)
    mask = after["completion_mask"].bool()
    expected = _independent_logps(trainer.model, after)
    for key in keys:
        assert torch.allclose(before[key][mask], after[key][mask], atol=1e-5), key
        # Not the placeholder: the values are the model's log-probs of the sampled tokens.
        assert torch.allclose(after[key][mask], expected[mask], atol=1e-4), key


def test_discarded_groups_get_no_logprob_pass(tmp_path):
    trainer = _trainer(tmp_path, defer=True)
    rows = _logprob_pass_rows(trainer)
    batch = trainer._generate_and_score_completions(None)
    m = trainer._metrics["train"]
    generated = m["dynamic_sampling/groups_generated"][-1] * trainer.num_generations
    trained = batch["completion_ids"].size(0)
    assert generated > trained, "some generated groups were discarded"
    assert sum(rows) == trained, f"log-prob rows {rows} for {trained} trained of {generated} generated completions"

    legacy = _trainer(tmp_path / "legacy", defer=False)
    legacy_rows = _logprob_pass_rows(legacy)
    legacy._generate_and_score_completions(None)
    assert sum(legacy_rows) == legacy._metrics["train"]["dynamic_sampling/groups_generated"][-1] * 4


def test_carried_groups_keep_the_log_probs_of_the_step_that_generated_them(tmp_path):
    def always_informative(completion_ids, **kwargs):  # first of each group of 4 right, others wrong
        return [1.0 if i % 4 == 0 else -1.0 for i in range(len(completion_ids))]

    always_informative.__name__ = "correctness"
    tok = toy_tokenizer()
    args = small_args(tmp_path, filter_groups_enable=True, per_device_train_batch_size=8, num_generations=4,
                      num_mini_batches=2, max_completion_length=3, gen_batch_multiplier=3,
                      filter_groups_carry_over=True)
    trainer = DAPOTrainer(model=tiny_llama(tok), reward_funcs=[always_informative], args=args,
                          train_dataset=toy_dataset(), processing_class=tok)
    trainer.model.train()
    rows = _logprob_pass_rows(trainer)
    trainer._generate_and_score_completions(None)
    carry = trainer._carry
    assert carry["completion_ids"].size(0) == 8 * 4, "8 surplus groups carried"
    assert sum(rows) == 16 + 32, "trained rows plus carried rows, once each"
    mask = carry["completion_mask"].bool()
    assert torch.allclose(carry["old_per_token_logps"][mask], _independent_logps(trainer.model, carry)[mask],
                          atol=1e-4)
    # The next step trains on carried rows only: their log-probs are reused, no new pass.
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.01)
    rows.clear()
    batch = trainer._generate_and_score_completions(None)
    assert trainer._metrics["train"]["dynamic_sampling/groups_reused"][-1] == 4 and sum(rows) == 0
    assert torch.equal(
        batch["old_per_token_logps"], carry["old_per_token_logps"][:16, : batch["completion_ids"].size(1)]
    )
