"""Dynamic sampling across 2 training processes, for tests/test_distributed.py and tests/test_sharded.py.

    <launcher> tests/dist_dynamic_sampling.py OUT_DIR SCENARIO [MODE] [RESUME_FROM]

MODE is how the processes share the model: "ddp" (torchrun, gloo), "deepspeed" (accelerate launch with a
configs/zero*.yaml, DS_ACCELERATOR=cpu) or "fsdp" (accelerate launch with configs/fsdp2.yaml). Each process
writes OUT_DIR/rank<R>.json: the prompt of every row it trained on, per rollout, the logged decisions and
losses, and how its model and optimizer are laid out (so a test can tell a sharded run from a fallback).
Rank 0 also saves the final model to OUT_DIR/final and the in-memory model's logits on a fixed input.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import sharding  # noqa: E402
from tests.test_train_dapo import small_args  # noqa: E402
from tests.tiny import first_token_parity_reward, make_toy_correctness, tiny_llama, toy_tokenizer, unique_toy_dataset  # noqa: E402
from train_dapo import DAPOTrainer  # noqa: E402

# Each scenario trains 3 rollouts of 2 optimizer steps on 2 processes.
SCENARIOS = {
    # Resampling until 4 informative groups of 4 are kept; surplus groups are carried into the next step.
    "carry": dict(per_device_train_batch_size=4, num_generations=4, max_filter_gen_batches=0, gen_batch_multiplier=2,
                  filter_groups_carry_over=True),
    # One generation batch of 4 groups of 2 per step: fewer informative groups than needed -> partial batches.
    "limit": dict(per_device_train_batch_size=2, num_generations=2, max_filter_gen_batches=1, gen_batch_multiplier=1,
                  filter_groups_on_limit="continue"),
}
PROBE = "A B C D t1 t2"
# Wide enough that ZeRO-3 partitions the large matrices: DeepSpeed keeps parameters under 1e5 elements whole on
# every process (stage3_param_persistence_threshold).
# The weights' spread shrinks with the width (1/sqrt) so that the first-token distribution stays as flat as at
# width 32, and rewards stay informative often enough.
HIDDEN = 384
INIT_STD = 0.02 * (32 / HIDDEN) ** 0.5


def layout(trainer) -> dict:
    """How parameters and optimizer state are held by this process (read from the objects themselves)."""
    import torch.distributed as dist

    acc = trainer.accelerator
    info = {"distributed_type": str(acc.distributed_type).split(".")[-1], "world": acc.num_processes,
            "torch_world": dist.get_world_size() if dist.is_initialized() else 1,
            "optimizer": type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__}
    params = list(trainer.model.parameters())
    info["full_numel"] = sum(int(getattr(p, "ds_numel", p.numel())) for p in params)
    engine = trainer.model_wrapped
    if type(engine).__name__ == "DeepSpeedEngine":
        info["zero_stage"] = engine.zero_optimization_stage()
        for what in ("optimizer", "param"):  # device "none" or "cpu"
            config = getattr(engine, f"zero_offload_{what}")()
            device = getattr(config, "device", None) or "none"
            info[f"offload_{what}"] = str(getattr(device, "value", device))
        zero_opt = engine.optimizer
        info["zero_optimizer"] = type(zero_opt).__name__
        info["inner_optimizer"] = type(zero_opt.optimizer).__name__
        # fp32 master weights this process updates: its partition only.
        groups = getattr(zero_opt, "single_partition_of_fp32_groups", None) or getattr(
            zero_opt, "fp32_partitioned_groups_flat", []
        )
        info["local_master_numel"] = sum(int(g.numel()) for g in groups)
        if info["zero_stage"] == 3:
            info["local_param_numel"] = sum(int(p.ds_tensor.numel()) for p in params)
            # Parameters above DeepSpeed's persistence threshold live only as shards between uses.
            info["params_partitioned"] = sum(int(not p.ds_persist) for p in params)
            info["params_released"] = sum(int(p.numel() == 0) for p in params)
    from torch.distributed.tensor import DTensor

    dtensors = [p for p in params if isinstance(p, DTensor)]
    info["dtensor_params"] = len(dtensors)
    info["num_params"] = len(params)
    info["plain_params"] = [n for n, p in trainer.model.named_parameters() if not isinstance(p, DTensor)]
    if dtensors:
        info["mesh_size"] = dtensors[0].device_mesh.size()
        info["placements"] = sorted({str(pl) for p in dtensors for pl in p.placements})
        info["local_param_numel"] = sum(int(p.to_local().numel()) for p in dtensors)
    return info


def main(out_dir: str, scenario: str, mode: str = "ddp", resume_from: str | None = None) -> None:
    out = Path(out_dir)
    if mode == "fsdp":
        sharding.enable_fsdp_on_cpu()
    tok = toy_tokenizer()
    # DeepSpeed disables itself when accelerate is told use_cpu; on CPU it runs over gloo instead.
    device_args = dict(use_cpu=False, ddp_backend="gloo") if mode == "deepspeed" else dict(use_cpu=True)
    args = small_args(out, filter_groups_enable=True, num_mini_batches=2, max_completion_length=2, max_steps=6,
                      save_strategy="steps", save_steps=2, output_dir=str(out / "run"), **SCENARIOS[scenario],
                      **device_args)
    reward = make_toy_correctness(tok) if scenario == "carry" else first_token_parity_reward
    trainer = DAPOTrainer(model=tiny_llama(tok, hidden=HIDDEN, init_std=INIT_STD), reward_funcs=[reward], args=args,
                          train_dataset=unique_toy_dataset(), processing_class=tok)
    rollouts = []
    original = trainer._dynamic_sampling_batch

    def recording():
        batch = original()
        prompts = [
            tok.decode(ids[mask.bool()]) for ids, mask in zip(batch["prompt_ids"], batch["prompt_mask"], strict=True)
        ]
        rollouts.append({"step": trainer.state.global_step, "prompts": prompts,
                         "local_tokens": int(batch["completion_mask"].sum()),
                         "num_items_in_batch": int(batch["num_items_in_batch"])})
        return batch

    trainer._dynamic_sampling_batch = recording
    trainer.train(resume_from_checkpoint=resume_from)
    lay = layout(trainer)  # before the forward pass below: FSDP2 keeps the root's weights gathered after one

    keys = ["dynamic_sampling/groups_trained", "dynamic_sampling/groups_kept", "dynamic_sampling/num_gen_batches",
            "dynamic_sampling/zero_spread_frac_trained", "dynamic_sampling/groups_carried_over",
            "dynamic_sampling/groups_reused", "dynamic_sampling/partial_batch", "dynamic_sampling/prompts_consumed"]
    history = [
        {"step": h["step"], **{k: h[k] for k in keys if k in h}} for h in trainer.state.log_history if keys[0] in h
    ]
    losses = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}

    # Every process takes part: saving and forward passes gather sharded weights collectively.
    trainer.save_model(str(out / "final"))
    probe = tok(PROBE, return_tensors="pt")
    trainer.model.eval()
    with torch.no_grad():
        logits = trainer.model(**probe).logits
    rank = trainer.accelerator.process_index
    if rank == 0:
        torch.save(logits.float().cpu(), out / "logits.pt")
    with open(out / f"rank{rank}.json", "w") as f:
        json.dump({"world": trainer.accelerator.num_processes, "rollouts": rollouts, "history": history,
                   "losses": losses, "layout": lay}, f)
    trainer.accelerator.wait_for_everyone()
    sharding.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
