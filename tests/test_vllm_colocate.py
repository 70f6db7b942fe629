"""vLLM generation for real, through TRL's colocate mode, with the embedded SmolLM2-135M on the CPU build of vLLM.

Runs only where vllm is importable: `make test-vllm` (the .venv-vllm of `make setup-vllm`); the main suite
skips this file. One DAPOTrainer with --use_vllm (one engine: its start-up dominates the cost) serves every
test below, in this order of the fixture: the weight-sync probe on the fresh trainer (restored afterwards),
then two optimizer steps of DAPO with dynamic sampling.

The engine is built eagerly (enforce_eager): torch.compile only changes vLLM's kernels, not the weight sync
or sampling path these tests check, and costs minutes of start-up on a shared CPU.
"""

from __future__ import annotations

import functools
import math
import os

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; otherwise vLLM reads TRL's memory fraction as RAM share
vllm = pytest.importorskip("vllm", reason="vLLM tests run in .venv-vllm (make setup-vllm; make test-vllm)")

import torch  # noqa: E402

import vllm_cpu  # noqa: E402

# bf16 (vLLM) against fp32 (trainer) on a 30-layer model: per-token log-prob differences measured here were
# 0.03 nat on average and 0.17 at worst (TRL's sampling/sampling_logp_difference, 32 completions); a weight
# sync that did not arrive moves them by whole nats (the halved-logits probe below).
MEAN_TOL, MAX_TOL = 0.06, 1.0
PROMPTS = 4  # prompt groups per probe


def vllm_model(trainer):
    # The colocated engine runs in this process (external_launcher): the same object TRL loads weights into.
    return trainer.vllm_generation.llm.llm_engine.model_executor.driver_worker.model_runner.model


def vllm_weights_equal_trainer(trainer) -> bool:
    """Every vLLM parameter equals the trainer's (fused q/k/v and gate/up concatenated), in vLLM's dtype."""
    hf = dict(trainer.model.named_parameters())
    for name, param in vllm_model(trainer).named_parameters():
        if ".qkv_proj." in name:
            parts = [hf[name.replace("qkv_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
        elif ".gate_up_proj." in name:
            parts = [hf[name.replace("gate_up_proj", p)] for p in ("gate_proj", "up_proj")]
        else:
            parts = [hf[name]]
        expected = torch.cat([p.detach() for p in parts], dim=0).to(param.dtype)
        if not torch.equal(param.data, expected):
            return False
    return True


def vllm_checksum(trainer) -> float:
    return float(sum(p.detach().double().sum() for p in vllm_model(trainer).parameters()))


def trainer_logprobs(model, prompt_ids, completion_ids) -> list[torch.Tensor]:
    """Log-probs of the sampled tokens under the trainer's model, computed here with a plain forward pass."""
    out = []
    with torch.no_grad():
        for p, c in zip(prompt_ids, completion_ids, strict=True):
            ids = torch.tensor([list(p) + list(c)])
            logits = model(input_ids=ids).logits[0, len(p) - 1 : -1].float()
            out.append(torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(list(c))[:, None])[:, 0])
    return out


def generate(trainer, prompt_ids):
    """TRL's own path: push the trainer's weights into vLLM, then sample (as _generate_single_turn does)."""
    trainer.vllm_generation.sync_weights()
    _, completions, logprobs, _ = trainer.vllm_generation.generate(prompts=prompt_ids, images=None, num_generations=1)
    return completions, [torch.tensor([lp[0] for lp in seq]) for seq in logprobs]


def diffs(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(x - y).abs() for x, y in zip(a, b, strict=True)])


def make_trainer(tmp_path):
    from transformers import AutoTokenizer

    import model_utils
    from dataset_utils import load_dapo_dataset
    from train_dapo import DAPOConfig, DAPOTrainer, build_reward_funcs

    path = str(model_utils.embedded_model_dir("smollm2-135m"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    dataset = load_dapo_dataset("arithmetic_easy", max_samples=64, shuffle=True, seed=0)
    args = DAPOConfig(
        output_dir=str(tmp_path / "out"), report_to="none", save_strategy="no", logging_steps=1, seed=0,
        use_vllm=True, vllm_mode="colocate", vllm_max_model_length=512,
        # Dynamic sampling; gen_batch_multiplier 2 = at least two generation rounds in every step.
        filter_groups_enable=True, gen_batch_multiplier=2, max_filter_gen_batches=2, filter_groups_on_limit="continue",
        # One optimizer step per rollout: each step generates anew, so each step must sync first.
        per_device_train_batch_size=8, num_generations=4, gradient_accumulation_steps=1, num_mini_batches=1,
        max_steps=2, max_prompt_length=256, max_completion_length=16, overlong_buffer_len=4, reward_mode="last_number",
        # Large enough that one Adam step changes the bf16 copy of the weights in vLLM.
        learning_rate=1e-3, warmup_rollout_steps=0, gradient_checkpointing=False,
    )
    trainer = DAPOTrainer(model=path, reward_funcs=build_reward_funcs(args), args=args, train_dataset=dataset,
                          processing_class=tokenizer)
    prompt_ids = [tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True,
                                                return_dict=False) for row in dataset.select(range(PROMPTS))]
    return trainer, prompt_ids


def weight_sync_probe(trainer, prompt_ids) -> dict:
    """Change the trainer's weights, sync through TRL, and compare vLLM's sampling log-probs with predictions."""
    model = trainer.model
    norm = model.model.norm.weight
    original = norm.detach().clone()
    res = {"vocab": model.config.vocab_size}
    try:
        completions, lp = generate(trainer, prompt_ids)
        res["same"] = diffs(lp, trainer_logprobs(model, prompt_ids, completions))
        with torch.no_grad():
            norm.zero_()  # final hidden state 0 -> all logits 0 -> every token has log-prob -log(vocab)
        completions, lp = generate(trainer, prompt_ids)
        res["zeroed"] = torch.cat(lp)
        with torch.no_grad():
            norm.copy_(original * 0.5)  # logits halved: a different, computable distribution
        completions, lp = generate(trainer, prompt_ids)
        predicted = trainer_logprobs(model, prompt_ids, completions)
        res["halved_vs_predicted"] = diffs(lp, predicted)
        with torch.no_grad():
            norm.copy_(original)
        res["halved_vs_original"] = diffs(lp, trainer_logprobs(model, prompt_ids, completions))
    finally:
        with torch.no_grad():
            norm.copy_(original)
        trainer.vllm_generation.sync_weights()
    res["restored"] = vllm_weights_equal_trainer(trainer)
    return res


def instrument(trainer) -> dict:
    """Record every weight sync and every vLLM generation round with the step it happened in."""
    rec = {"syncs": [], "rounds": [], "batches": []}
    gen = trainer.vllm_generation
    sync, generate_, score = gen.sync_weights, gen.generate, trainer._generate_and_score_completions

    @functools.wraps(sync)
    def sync_wrapper(*a, **k):
        rec["syncs"].append(trainer.state.global_step)
        return sync(*a, **k)

    @functools.wraps(generate_)
    def generate_wrapper(*a, **k):
        rec["rounds"].append({"step": trainer.state.global_step, "checksum": vllm_checksum(trainer),
                              "equals_trainer": vllm_weights_equal_trainer(trainer)})
        return generate_(*a, **k)

    @functools.wraps(score)
    def score_wrapper(*a, **k):
        out = score(*a, **k)
        rec["batches"].append(sorted(out))
        return out

    gen.sync_weights, gen.generate = sync_wrapper, generate_wrapper
    trainer._generate_and_score_completions = score_wrapper
    return rec


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import trl.generation.vllm_generation as trl_vllm

    original_llm = trl_vllm.LLM
    trl_vllm.LLM = functools.partial(original_llm, enforce_eager=True)
    try:
        trainer, prompt_ids = make_trainer(tmp_path_factory.mktemp("vllm"))
    finally:
        trl_vllm.LLM = original_llm
    probe = weight_sync_probe(trainer, prompt_ids)
    rec = instrument(trainer)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    same, predicted, original = (probe[key] for key in ("same", "halved_vs_predicted", "halved_vs_original"))
    print(f"\nvLLM vs trainer log-probs (mean/max |diff|): same weights {same.mean():.4f}/{same.max():.4f}, "
          f"halved logits vs predicted {predicted.mean():.4f}/{predicted.max():.4f}, "
          f"vs the old weights {original.mean():.4f}/{original.max():.4f}")
    yield {"trainer": trainer, "probe": probe, "rec": rec, "logs": logs}


def test_the_cpu_workaround_is_in_place():
    assert vllm_cpu.vllm_runs_on_cpu(), "these tests expect the CPU build of vLLM"
    import vllm.model_executor.layers.utils as layer_utils

    assert vllm_cpu.apply_if_cpu() and layer_utils.dispatch_cpu_unquantized_gemm._dapo_plain_cpu_linear


def test_weight_sync_reaches_vllm_and_moves_logprobs_as_predicted(run):
    probe = run["probe"]
    # Zeroed final norm: the exact known value, log(1/vocab) for every sampled token.
    assert torch.allclose(probe["zeroed"], torch.full_like(probe["zeroed"], -math.log(probe["vocab"])), atol=1e-4)
    # Halved logits: vLLM samples from the changed weights, as the trainer's own forward pass predicts...
    assert probe["halved_vs_predicted"].mean() < MEAN_TOL and probe["halved_vs_predicted"].max() < MAX_TOL
    # ...which the old weights do not explain.
    assert probe["halved_vs_original"].mean() > 10 * probe["halved_vs_predicted"].mean()
    assert probe["restored"], "after restoring, every vLLM weight equals the trainer's again"


def test_vllm_sampling_logprobs_agree_with_the_trainer_on_the_same_weights(run):
    same = run["probe"]["same"]
    assert same.numel() > 0 and same.mean() < MEAN_TOL and same.max() < MAX_TOL, (same.mean(), same.max())


def test_dapo_with_dynamic_sampling_trains_on_vllm_rollouts(run):
    trainer, rec, logs = run["trainer"], run["rec"], run["logs"]
    assert trainer.state.global_step == 2 and len(logs) == 2
    steps = sorted({r["step"] for r in rec["rounds"]})
    assert steps == [0, 1]
    for step in steps:
        rounds = [r for r in rec["rounds"] if r["step"] == step]
        assert len(rounds) >= 2, f"step {step}: {len(rounds)} generation round(s)"
        assert all(r["equals_trainer"] for r in rounds), f"step {step}: a round sampled from stale weights"
        assert len({r["checksum"] for r in rounds}) == 1, f"step {step}: rounds sampled from different weights"
    # One sync per optimizer step, before its first round; the synced weights changed with the update.
    assert rec["syncs"] == [0, 1]
    first = {r["step"]: r["checksum"] for r in rec["rounds"]}
    assert first[0] != first[1]
    assert all(log["dynamic_sampling/num_gen_batches"] >= 1 for log in logs)
    assert all(math.isfinite(log["loss"]) for log in logs)


def test_importance_sampling_correction_is_computed_and_logged(run):
    logs, rec = run["logs"], run["rec"]
    for log in logs:
        assert log["sampling/sampling_logp_difference/mean"] < MEAN_TOL
        assert 0.8 < log["sampling/importance_sampling_ratio/mean"] < 1.25
        assert log["sampling/importance_sampling_ratio/min"] <= 1 <= log["sampling/importance_sampling_ratio/max"]
    # One optimizer step per rollout, yet the behaviour policy's log-probs are computed (what carry-over needs).
    assert all({"old_per_token_logps", "sampling_per_token_logps", "importance_sampling_ratio"} <= set(b)
               for b in rec["batches"])
