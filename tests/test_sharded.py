"""Sharded training on two CPU processes (gloo): DeepSpeed ZeRO-2, ZeRO-3, ZeRO-3 with CPU offload, FSDP2.

Each run is the dynamic-sampling script of tests/test_distributed.py, launched with `accelerate launch
--config_file configs/<name>.yaml --num_processes 2 --mixed_precision no` (fp32), and must
  * really be sharded (ZeRO stage and partitioned parameters / master weights; DTensor shards for FSDP2),
    so that a fallback to DDP or to independent single processes fails;
  * take the same decisions on both processes and train whole, distinct groups (tests/distributed.py);
  * equal the DDP run of the same scenario: same decisions and groups, per-step losses and final weights
    within TOLERANCE (fp32; only the order of the reductions differs, and DeepSpeed's own CPU Adam with offload);
  * save a final model that from_pretrained loads with the in-memory model's logits.
Checkpoint + resume under ZeRO-3 and FSDP2 continues exactly as the uninterrupted run.

Slow tier: DeepSpeed JIT-compiles its CPU ops on first use (a few minutes, cached in .cache/torch_extensions).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.distributed import (
    ROOT,
    check_run,
    check_saved_model_reproduces_logits,
    cpu_env,
    final_weights,
    free_port,
    launch,
    max_weight_difference,
)

pytestmark = pytest.mark.slow

# Measured differences to DDP: ~1e-7 (ZeRO-2/3, FSDP2), a few 1e-6 (ZeRO-3 offload: DeepSpeed's CPU Adam).
TOLERANCE = 2e-5

RUNS = {  # config -> scenario (both dynamic-sampling paths are covered by DeepSpeed and by FSDP2)
    "zero2": "limit",
    "zero3": "carry",
    "zero3_offload": "limit",
    "fsdp2": "carry",
}


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
    cache = {}

    def run(config: str):
        if config not in cache:
            out = tmp_path_factory.mktemp(config)
            cache[config] = (out, launch(out, RUNS[config], config=config))
        return cache[config]

    return run


def check_sharded_layout(config: str, ranks: list[dict]) -> None:
    for rank in ranks:
        lay = rank["layout"]
        full = lay["full_numel"]
        if config.startswith("zero"):
            stage = 2 if config == "zero2" else 3
            assert lay["distributed_type"] == "DEEPSPEED" and lay["zero_stage"] == stage, lay
            # Each process updates only its half of the fp32 master weights.
            assert 0 < lay["local_master_numel"] <= 0.51 * full, lay
            if stage == 3:
                assert lay["local_param_numel"] <= 0.51 * full, lay  # holds half the weights
                assert lay["params_partitioned"] > 0 and lay["params_released"] > 0, lay  # gathered only for use
            offload = "cpu" if config == "zero3_offload" else "none"
            assert lay["offload_optimizer"] == lay["offload_param"] == offload, lay
            if offload == "cpu":
                assert lay["inner_optimizer"] == "DeepSpeedCPUAdam", lay
        else:
            assert lay["distributed_type"] == "FSDP", lay
            assert lay["dtensor_params"] == lay["num_params"] > 0 and lay["mesh_size"] == 2, lay
            assert lay["placements"] == ["S(0)"], lay  # every parameter split along its first dimension
            assert lay["local_param_numel"] <= 0.51 * full, lay


@pytest.mark.parametrize("config", list(RUNS))
def test_sharded_run_is_sharded_and_equals_ddp(config, sharded_run, ddp_run):
    scenario = RUNS[config]
    out, ranks = sharded_run(config)
    check_sharded_layout(config, ranks)
    trained = check_run(ranks, scenario)
    ddp_out, ddp_ranks = ddp_run(scenario)
    assert trained == check_run(ddp_ranks, scenario)
    assert ranks[0]["history"] == ddp_ranks[0]["history"]
    for rank, ddp_rank in zip(ranks, ddp_ranks, strict=True):
        assert rank["rollouts"] == ddp_rank["rollouts"]
    losses, ddp_losses = ranks[0]["losses"], ddp_ranks[0]["losses"]
    assert losses.keys() == ddp_losses.keys() and len(losses) == 6
    for step in losses:
        assert abs(losses[step] - ddp_losses[step]) <= TOLERANCE, (step, losses[step], ddp_losses[step])
    weights, ddp_weights = final_weights(out), final_weights(ddp_out)
    assert max_weight_difference(weights, ddp_weights) <= TOLERANCE
    # Training moved the weights by far more than the tolerance (the comparison is not vacuous).
    from tests.dist_dynamic_sampling import HIDDEN, INIT_STD
    from tests.tiny import tiny_llama, toy_tokenizer

    fresh = tiny_llama(toy_tokenizer(), hidden=HIDDEN, init_std=INIT_STD)
    initial = {k: v for k, v in fresh.state_dict().items() if k in weights}
    assert max_weight_difference(weights, initial) > 100 * TOLERANCE
    check_saved_model_reproduces_logits(out)


@pytest.mark.parametrize("config", ["zero3", "fsdp2"])
def test_resume_from_a_rollout_boundary_equals_the_uninterrupted_run(config, sharded_run, tmp_path):
    """Resume in fresh processes, as after a kill, from the uninterrupted run's checkpoint at the end of a rollout
    that carried a kept group over into the next: the rest equals the uninterrupted run."""
    full_out, full = sharded_run(config)
    history = full[0]["history"]
    # The first rollout that trains a carried group; the checkpoint before it holds that group.
    i = next(i for i, h in enumerate(history) if h["dynamic_sampling/groups_reused"] > 0)
    saved = history[i]["step"] - 1
    checkpoint = full_out / "run" / f"checkpoint-{saved}"
    assert saved > 0 and (checkpoint / "trainer_state.json").exists()
    resumed = launch(tmp_path, RUNS[config], config=config, resume_from=str(checkpoint))
    check_sharded_layout(config, resumed)
    assert [r["rollouts"] for r in resumed] == [r["rollouts"][i:] for r in full]
    # trainer_state.json brings the logs up to the checkpoint back; the later ones are new.
    assert [h for h in resumed[0]["history"] if h["step"] > saved] == history[i:]
    later = [step for step in full[0]["losses"] if int(step) > saved]
    assert later and all(abs(resumed[0]["losses"][s] - full[0]["losses"][s]) <= 1e-6 for s in later)
    assert max_weight_difference(final_weights(tmp_path), final_weights(full_out)) <= 1e-6
    check_saved_model_reproduces_logits(tmp_path)


# ============================================================================ the real entry point
def _run_dapo(tmp_path, env: dict, *args: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    from tests.test_scale_out import clean_env

    env = clean_env(PYTHON=sys.executable, CONFIG="recipes/quick_test.yaml", OUTPUT_DIR=str(tmp_path / "out"),
                    MAIN_PROCESS_PORT=str(free_port()), **{k: v for k, v in cpu_env().items() if k in CPU_VARS}, **env)
    return subprocess.run(["bash", "run_dapo.sh", "--report_to", "none", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


CPU_VARS = ("OMP_NUM_THREADS", "TORCH_EXTENSIONS_DIR")


@pytest.mark.parametrize("config", ["zero3", "fsdp2"])
def test_run_dapo_sh_trains_the_embedded_model_sharded_on_two_cpu_processes(tmp_path, config):
    proc = _run_dapo(
        tmp_path, {"USE_CPU": "1", "NUM_PROCESSES": "2", "ACCELERATE_CONFIG": config},
        "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2",
        # Without filtering the 2-step run has a gradient: the 135M model rarely answers these prompts correctly,
        # but the overlong penalty differs between completions of a group. (Dynamic sampling under ZeRO-3 and
        # FSDP2 is tested above.)
        "--filter_groups_enable", "false", "--max_completion_length", "24", "--overlong_buffer_len", "8",
        "--weight_decay", "0",  # so that any change of a weight comes from a gradient
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    launch_line = next(line for line in proc.stderr.splitlines() if line.startswith("+ "))
    assert (f"accelerate.commands.launch --num_processes 2 --config_file configs/{config}.yaml --mixed_precision no"
            in launch_line)
    out = tmp_path / "out"
    checkpoint = out / "checkpoint-2"
    if config == "zero3":
        # DeepSpeed's own checkpoint: one ZeRO-3 partition of weights and optimizer state per process.
        zero_dir = checkpoint / "global_step2"
        model_states = sorted(p.name for p in zero_dir.glob("zero_pp_rank_*_model_states.pt"))
        assert model_states == [
            "zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt"
        ]
        assert len(list(zero_dir.glob("*zero_pp_rank_*_optim_states.pt"))) == 2
        states = torch.load(zero_dir / model_states[0], map_location="cpu", weights_only=False)
        assert states["ds_config"]["zero_optimization"]["stage"] == 3 and states["ds_version"] == "0.19.8"
    else:
        # accelerate writes this file only through its FSDP checkpoint path.
        assert (checkpoint / "pytorch_model_fsdp.bin").exists()
    # The final model: gathered from the shards into a normal checkpoint that from_pretrained loads.
    from transformers import AutoModelForCausalLM

    import model_utils

    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.num_parameters() > 100_000_000
    initial = AutoModelForCausalLM.from_pretrained(model_utils.embedded_model_dir("smollm2-135m")).state_dict()
    # Adam moves a weight that has a gradient by about the learning rate (1e-5) per step.
    change = max(float((p - initial[name]).abs().max()) for name, p in model.state_dict().items())
    assert 5e-6 < change < 1e-3 and all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("case", ["deepspeed-with-use_cpu", "deepspeed-without-gloo", "fsdp2-without-use_cpu"])
def test_a_sharded_launch_that_would_not_shard_stops_before_the_model_loads(tmp_path, case):
    env, args, message = {
        # accelerate turns DeepSpeed off under --use_cpu: it would train plain DDP.
        "deepspeed-with-use_cpu": ({"USE_CPU": "1", "ACCELERATE_CONFIG": "zero3"}, ["--use_cpu", "true"],
                                   "--use_cpu false --ddp_backend gloo"),
        # Without CUDA and without gloo, accelerate sees 1 process while DeepSpeed sees 2.
        "deepspeed-without-gloo": ({"ACCELERATE_CONFIG": "zero3"}, ["--use_cpu", "false", "--bf16", "false"],
                                   "started 2 processes but training sees a world of 1"),
        # FSDP without --use_cpu on a CPU machine: every process would train alone.
        "fsdp2-without-use_cpu": ({"ACCELERATE_CONFIG": "fsdp2"}, ["--use_cpu", "false", "--bf16", "false"],
                                  "every process would train alone"),
    }[case]
    proc = _run_dapo(tmp_path, {"NUM_PROCESSES": "2", **env}, *args, "--max_steps", "1", timeout=600)
    assert proc.returncode != 0
    assert message in proc.stderr and "error: " in proc.stderr, proc.stderr[-4000:]  # one line, no traceback
    assert "Loading weights" not in proc.stderr
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_the_train_begin_check_refuses_a_run_that_is_not_sharded_as_launched(tmp_path):
    """The second line of defence (after the launch check): the live accelerator state and wrapped model. Here a
    plain single-process trainer stands for a run whose sharding silently fell away."""
    import sharding
    from tests.test_train_dapo import small_args
    from tests.tiny import make_toy_correctness, tiny_llama, toy_dataset, toy_tokenizer
    from train_dapo import DAPOTrainer

    tok = toy_tokenizer()
    trainer = DAPOTrainer(model=tiny_llama(tok), reward_funcs=[make_toy_correctness(tok)],
                          args=small_args(tmp_path, use_cpu=True), train_dataset=toy_dataset(), processing_class=tok)
    model = trainer.model
    assert sharding.layout_problem(None, 1, model) is None
    assert "ZeRO-3 was asked for, accelerate runs NO" in sharding.layout_problem(
        {"kind": "deepspeed", "stage": 3}, 1, model
    )
    assert "FSDP was asked for" in sharding.layout_problem({"kind": "fsdp", "version": 2}, 1, model)
    assert "2 were started" in sharding.layout_problem({"kind": "fsdp", "version": 2}, 2, model)
    with pytest.raises(sharding.ShardingError, match="did not shard"):
        check = sharding.ShardingCheck({"kind": "deepspeed", "stage": 2}, 1)
        check.on_train_begin(trainer.args, None, None, model=model)
