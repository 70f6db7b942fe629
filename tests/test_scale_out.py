"""Scale-out: accelerate configs, GPU recipes and their batch arithmetic, LoRA, the vLLM path, the
multi-process launcher. Everything here runs on a CPU; what needs GPUs is listed in docs/scaling.md."""

from __future__ import annotations

import dataclasses
import glob
import importlib.machinery
import os
import re
import socket
import subprocess
import sys
import time
import types

import pytest
import torch
import yaml

import train_dapo
from tests.test_train_dapo import small_args
from tests.tiny import first_token_parity_reward, tiny_llama, toy_dataset, toy_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "recipes", "*.yaml")))
CPU_RECIPES = {"quick_test.yaml", "cpu_demo.yaml", "cpu_learning.yaml"}

# configs/<name>.yaml -> distributed_type, ZeRO stage / offload device or FSDP version
EXPECTED_CONFIGS = {
    "single_gpu": ("NO", {}),
    "multi_gpu": ("MULTI_GPU", {}),
    "zero2": ("DEEPSPEED", {"zero_stage": 2, "offload_optimizer_device": "none", "offload_param_device": "none"}),
    "zero3": ("DEEPSPEED", {"zero_stage": 3, "offload_optimizer_device": "none", "offload_param_device": "none"}),
    "zero3_offload": ("DEEPSPEED", {"zero_stage": 3, "offload_optimizer_device": "cpu", "offload_param_device": "cpu"}),
    "fsdp2": ("FSDP", {"fsdp_version": 2}),
}


def _vllm_installed() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:
        return False
    return True


@pytest.fixture
def fake_vllm(monkeypatch):
    """A stand-in `vllm` module, so that DAPOConfig's "vllm importable" check passes on this CPU machine."""
    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**overrides: str) -> dict:
    """This environment without any variable run_dapo.sh or the Slurm example reads, plus `overrides`."""
    script = "".join(open(os.path.join(ROOT, f)).read() for f in ("run_dapo.sh", "examples/slurm_dapo.sbatch"))
    read = set(re.findall(r"^opt (\w+)", script, re.M)) | set(re.findall(r"\$\{?([A-Z][A-Z0-9_]+)", script))
    env = {k: v for k, v in os.environ.items() if k not in read and not k.startswith("SLURM_")}
    env.update({"HF_HUB_OFFLINE": "1", **overrides})
    return env


# ============================================================================ accelerate configs
def _launch_option_names() -> set[str]:
    from accelerate.commands.launch import launch_command_parser

    return {action.dest for action in launch_command_parser()._actions}


def check_accelerate_config(path: str):
    """Load with accelerate's own loader (the one `accelerate launch --config_file` uses). It rejects unknown
    top-level keys but copies the nested deepspeed_config / fsdp_config keys to launch options blindly, so
    those are checked here against `accelerate launch`'s options (a typo there would be silently ignored)."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(path)
    options = _launch_option_names()
    for section in ("deepspeed_config", "fsdp_config"):
        for key in getattr(config, section):
            if key not in options:
                raise ValueError(f"{path}: {section}.{key} is not an `accelerate launch` option")
    return config


def test_every_expected_config_exists():
    assert {os.path.basename(p)[:-5] for p in CONFIGS} == set(EXPECTED_CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p))
def test_accelerate_config_loads_with_expected_distributed_type(path):
    config = check_accelerate_config(path)
    name = os.path.basename(path)[:-5]
    distributed_type, settings = EXPECTED_CONFIGS[name]
    assert config.distributed_type.value == distributed_type
    assert config.mixed_precision == "bf16"
    assert config.num_processes == (1 if name == "single_gpu" else 8)
    nested = {**config.deepspeed_config, **config.fsdp_config}
    for key, value in settings.items():
        assert nested[key] == value, (name, key)
    if distributed_type == "DEEPSPEED":
        # A fixed value would make the Trainer reject any recipe whose gradient_accumulation_steps differs.
        assert "gradient_accumulation_steps" not in config.deepspeed_config
        assert config.deepspeed_config["deepspeed_multinode_launcher"] == "standard"
    if distributed_type == "FSDP":
        # With SHARDED_STATE_DICT, Trainer.save_model writes no model files.
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"


@pytest.mark.parametrize(
    "edit",
    [
        lambda text: text.replace("num_processes:", "num_procesess:"),  # top-level typo
        lambda text: text.replace("distributed_type:", "distributed_typ:"),  # required key misspelt
        lambda text: text.replace("zero_stage:", "zero_stag:"),  # nested typo (accelerate alone ignores it)
        lambda text: text.replace("distributed_type: DEEPSPEED", "distributed_type: DEEPSPEEED"),  # bad value
    ],
    ids=["top-level-key", "required-key", "nested-key", "value"],
)
def test_broken_accelerate_config_fails(tmp_path, edit):
    text = open(os.path.join(ROOT, "configs", "zero3.yaml")).read()
    broken = tmp_path / "broken.yaml"
    broken.write_text(edit(text))
    assert broken.read_text() != text
    with pytest.raises(ValueError):
        check_accelerate_config(str(broken))


def _deepspeed_plugin_from_launcher(config_path: str, monkeypatch):
    """What `accelerate launch --config_file X` hands to the training processes, turned into the DeepSpeed
    plugin the Accelerator builds from it (no GPU or deepspeed package needed for this part)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args = launch_command_parser().parse_args(
        ["--config_file", config_path, "--num_processes", "8", "--main_process_port", str(free_port()), "train_dapo.py"]
    )
    args, defaults, _ = _validate_launch_command(args)
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    _, env = prepare_deepspeed_cmd_env(args)
    for key in [k for k in os.environ if k.startswith("ACCELERATE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)
    return DeepSpeedPlugin()


@pytest.mark.parametrize("name", ["zero2", "zero3", "zero3_offload"])
def test_deepspeed_configs_leave_batch_sizes_to_the_trainer(name, monkeypatch, tmp_path):
    stage = EXPECTED_CONFIGS[name][1]
    plugin = _deepspeed_plugin_from_launcher(os.path.join(ROOT, "configs", f"{name}.yaml"), monkeypatch)
    ds = plugin.deepspeed_config
    # "auto": transformers fills them from --per_device_train_batch_size / --gradient_accumulation_steps.
    assert ds["gradient_accumulation_steps"] == "auto"
    assert ds["train_micro_batch_size_per_gpu"] == "auto"
    assert ds["zero_optimization"]["stage"] == stage["zero_stage"]
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == stage["offload_optimizer_device"]
    assert ds["zero_optimization"]["offload_param"]["device"] == stage["offload_param_device"]
    if stage["zero_stage"] == 3:
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    # Counter-check: the value `accelerate config` writes would pin DeepSpeed's accumulation to 1.
    pinned = tmp_path / "pinned.yaml"
    text = open(os.path.join(ROOT, "configs", f"{name}.yaml")).read()
    pinned.write_text(text.replace("deepspeed_config:\n", "deepspeed_config:\n  gradient_accumulation_steps: 1\n"))
    pinned_plugin = _deepspeed_plugin_from_launcher(str(pinned), monkeypatch)
    assert pinned_plugin.deepspeed_config["gradient_accumulation_steps"] == 1


def _launcher_command(env_overrides: dict, *extra: str) -> subprocess.CompletedProcess:
    """run_dapo.sh with PYTHON=echo: prints the launch command instead of running it."""
    env = clean_env(PYTHON="echo", **env_overrides)
    return subprocess.run(
        ["bash", "run_dapo.sh", *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_run_dapo_resolves_config_shortcuts_and_multi_node_variables():
    proc = _launcher_command(
        {"ACCELERATE_CONFIG": "zero3", "NUM_PROCESSES": "16", "NUM_MACHINES": "2", "MACHINE_RANK": "1",
         "MAIN_PROCESS_IP": "node-0", "MAIN_PROCESS_PORT": "29511", "CONFIG": "recipes/dapo_qwen2.5_32b.yaml"},
        "--max_steps", "3",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [
        "-m", "accelerate.commands.launch", "--num_processes", "16", "--config_file", "configs/zero3.yaml",
        "--num_machines", "2", "--machine_rank", "1", "--main_process_ip", "node-0", "--main_process_port", "29511",
        "train_dapo.py", "--config", "recipes/dapo_qwen2.5_32b.yaml", "--max_steps", "3",
    ]
    # A path works as before; without NUM_PROCESSES the config's num_processes applies.
    proc = _launcher_command({"ACCELERATE_CONFIG": "configs/fsdp2.yaml", "CONFIG": "recipes/quick_test.yaml"})
    assert proc.stdout.split()[:4] == ["-m", "accelerate.commands.launch", "--config_file", "configs/fsdp2.yaml"]
    # Unknown name, and several machines without a total process count: clear errors, nothing launched.
    proc = _launcher_command({"ACCELERATE_CONFIG": "zero4"})
    assert proc.returncode != 0 and "zero3_offload" in proc.stderr and proc.stdout == ""
    proc = _launcher_command({"ACCELERATE_CONFIG": "zero3", "NUM_MACHINES": "2"})
    assert proc.returncode != 0 and "NUM_PROCESSES" in proc.stderr and proc.stdout == ""


# ============================================================================ recipes
def parse_recipe(path: str, *extra: str):
    # --use_cpu: bf16: true is refused on a machine without a bf16 GPU; it changes no batch setting.
    return train_dapo.make_parser().parse_args_and_config(["--config", path, "--use_cpu", "true", *extra])


def dataclass_field_names() -> set[str]:
    return {f.name for cls in (train_dapo.DAPOScriptArguments, train_dapo.DAPOConfig, train_dapo.ModelConfig)
            for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: os.path.basename(p))
def test_recipe_parses_into_dapo_config(path, fake_vllm):
    raw = yaml.safe_load(open(path))
    unknown = set(raw) - dataclass_field_names()
    assert not unknown, f"{path}: unknown keys {unknown}"
    script_args, cfg, model_args = parse_recipe(path)
    assert isinstance(cfg, train_dapo.DAPOConfig)
    everything = {**vars(script_args), **vars(model_args), **vars(cfg)}
    for key, value in raw.items():  # every value arrives as written (report_to becomes a list)
        got = everything[key]
        assert got == value or (isinstance(got, list) and got == [value]), (key, got, value)


def test_trl_parser_rejects_unknown_recipe_keys(tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text(open(os.path.join(ROOT, "recipes", "quick_test.yaml")).read() + "num_generation: 4\n")
    with pytest.raises(ValueError, match="num_generation"):
        parse_recipe(str(recipe))


def recipe_scale(path: str) -> dict | None:
    """The recipe's `# scale: gpus=N prompts_per_rollout=P accelerate_config=...` line and its GPU table."""
    text = open(path).read()
    match = re.search(r"^# scale: (.*)$", text, re.M)
    if not match:
        return None
    scale = dict(item.split("=", 1) for item in match.group(1).split())
    scale["gpus"] = int(scale["gpus"])
    scale["prompts_per_rollout"] = int(scale["prompts_per_rollout"])
    scale["table"] = [tuple(int(x) for x in row) for row in
                      re.findall(r"^#\s+(\d+) \|\s+(\d+) \|\s+(\d+) \|\s+(\d+) \|\s+(\d+)\s*$", text, re.M)]
    return scale


def check_batch_arithmetic(gpus, per_device, grad_accum, num_mini_batches, num_generations, prompts_per_rollout):
    steps_per_generation = num_mini_batches * grad_accum
    rows_per_process = per_device * steps_per_generation  # completions each process generates per rollout
    assert prompts_per_rollout * num_generations == per_device * grad_accum * num_mini_batches * gpus
    assert rows_per_process % num_generations == 0, "each process must hold whole prompt groups"
    assert (rows_per_process * gpus) % num_generations == 0  # TRL's generation_batch_size check at this world size
    assert rows_per_process // num_generations * gpus == prompts_per_rollout


GPU_RECIPES = [p for p in RECIPES if os.path.basename(p) not in CPU_RECIPES]


def test_gpu_recipes_exist_and_state_their_scale():
    names = {os.path.basename(p) for p in GPU_RECIPES}
    assert {"dapo_qwen2.5_32b.yaml", "dapo_qwen2.5_7b_8gpu.yaml", "dapo_qwen2.5_1.5b_8gpu.yaml"} <= names
    assert all(recipe_scale(p) for p in GPU_RECIPES)


@pytest.mark.parametrize("path", GPU_RECIPES, ids=lambda p: os.path.basename(p))
def test_recipe_batch_arithmetic_holds_for_its_gpu_count(path, fake_vllm):
    scale = recipe_scale(path)
    _, cfg, _ = parse_recipe(path)
    G, nmb = cfg.num_generations, cfg.num_mini_batches
    check_batch_arithmetic(scale["gpus"], cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps, nmb, G,
                           scale["prompts_per_rollout"])
    assert cfg.steps_per_generation == nmb * cfg.gradient_accumulation_steps
    # The GPU table: every row keeps the rollout size; the recipe's own setting is one of the rows.
    assert scale["table"], "GPU table missing"
    for gpus, per_device, grad_accum, per_update, prompts in scale["table"]:
        assert per_update == per_device * grad_accum * gpus
        assert prompts == scale["prompts_per_rollout"]
        check_batch_arithmetic(gpus, per_device, grad_accum, nmb, G, prompts)
        if cfg.use_vllm and cfg.vllm_mode == "colocate":
            assert gpus % cfg.vllm_tensor_parallel_size == 0
    assert (scale["gpus"], cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps) in \
        [row[:3] for row in scale["table"]]
    assert os.path.isfile(os.path.join(ROOT, scale["accelerate_config"]))
    # Lengths: overlong buffer inside the response budget; vLLM context fits prompt + response.
    assert cfg.overlong_buffer_len < cfg.max_completion_length
    if cfg.use_vllm and cfg.vllm_max_model_length:
        assert cfg.vllm_max_model_length >= cfg.max_prompt_length + cfg.max_completion_length
    # Warmup: 10 rollout steps in optimizer steps.
    assert cfg.warmup_steps == cfg.warmup_rollout_steps * nmb * cfg.num_iterations


def test_batch_arithmetic_check_catches_a_wrong_table_row():
    with pytest.raises(AssertionError):
        check_batch_arithmetic(16, 1, 4, 16, 16, 512)  # 16 GPUs need grad_accum 32, not 4
    with pytest.raises(AssertionError):
        check_batch_arithmetic(8, 1, 1, 8, 16, 4)  # 8 completions per process: half a group


def test_reference_recipe_is_the_dapo_reference(fake_vllm):
    path = os.path.join(ROOT, "recipes", "dapo_qwen2.5_32b.yaml")
    script_args, cfg, model_args = parse_recipe(path)
    assert model_args.model_name_or_path == "Qwen/Qwen2.5-32B"
    assert script_args.dataset_name == "BytedTsinghua-SIA/DAPO-Math-17k"
    assert recipe_scale(path)["prompts_per_rollout"] == 512 and cfg.num_generations == 16
    assert (cfg.gen_batch_multiplier, cfg.max_filter_gen_batches, cfg.num_mini_batches) == (3, 10, 16)
    assert (cfg.learning_rate, cfg.warmup_rollout_steps) == (1e-6, 10)
    assert (cfg.epsilon, cfg.epsilon_high, cfg.delta, cfg.beta, cfg.loss_type) == (0.2, 0.28, 10.0, 0.0, "dapo")
    assert (cfg.max_prompt_length, cfg.max_completion_length) == (2048, 20480)
    assert (cfg.apply_overlong_penalty, cfg.overlong_buffer_len, cfg.overlong_penalty_factor) == (True, 4096, 1.0)
    assert cfg.filter_groups_enable and cfg.filter_groups_metric == "acc"
    from transformers.utils import is_torch_bf16_gpu_available

    # bf16 is automatic: on where the GPU supports it (the reference), off on this CPU.
    assert cfg.bf16 == is_torch_bf16_gpu_available() and "bf16" not in yaml.safe_load(open(path))
    assert cfg.use_vllm and cfg.vllm_mode == "colocate"
    assert {row[0] for row in recipe_scale(path)["table"]} >= {8, 16, 32, 64, 128}


# ============================================================================ LoRA
def test_main_passes_the_lora_config_from_the_model_flags_to_the_trainer(tmp_path, monkeypatch):
    """main() builds peft_config with TRL's get_peft_config(model_args); stop it at the trainer."""
    from peft import LoraConfig

    seen = {}

    class Stop(Exception):
        pass

    def fake_trainer(**kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(train_dapo, "DAPOTrainer", fake_trainer)
    args = train_dapo.make_parser().parse_args_and_config(
        ["--config", os.path.join(ROOT, "recipes", "quick_test.yaml"), "--output_dir", str(tmp_path / "o"),
         "--report_to", "none", "--use_peft", "--lora_r", "4", "--lora_alpha", "8",
         "--lora_target_modules", "q_proj", "v_proj"]
    )
    with pytest.raises(Stop):
        train_dapo.main(*args)
    peft_config = seen["peft_config"]
    assert isinstance(peft_config, LoraConfig)
    assert (peft_config.r, peft_config.lora_alpha, set(peft_config.target_modules)) == (4, 8, {"q_proj", "v_proj"})
    assert peft_config.task_type == "CAUSAL_LM"


def _base_name(peft_name: str) -> str:
    return peft_name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def test_lora_trains_only_the_adapter_and_the_saved_adapter_reproduces_the_model(tmp_path):
    from peft import PeftModel
    from trl import get_peft_config

    _, _, model_args = train_dapo.make_parser().parse_args_and_config(
        ["--output_dir", str(tmp_path), "--use_peft", "--lora_r", "4", "--lora_alpha", "8",
         "--lora_target_modules", "q_proj", "v_proj"]
    )
    tok = toy_tokenizer()
    model = tiny_llama(tok)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = train_dapo.DAPOTrainer(
        model=model,
        reward_funcs=[first_token_parity_reward],
        args=small_args(tmp_path, learning_rate=5e-2, filter_groups_enable=True, filter_groups_on_limit="continue"),
        train_dataset=toy_dataset(),
        processing_class=tok,
        peft_config=get_peft_config(model_args),
    )
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    trainer.train()

    base, lora = {}, {}
    for name, p in trainer.model.named_parameters():
        (lora if "lora_" in name else base)[name] = p.detach()
    assert {_base_name(n) for n in base} == set(before)
    for name, p in base.items():
        assert torch.equal(p, before[_base_name(name)]), f"base weight {name} changed"
    assert any(n.endswith("lora_B.default.weight") and p.abs().sum() > 0 for n, p in lora.items()), \
        "lora_B starts at zero; training must have moved it"

    out = tmp_path / "adapter"
    trainer.save_model(str(out))
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    assert not (out / "model.safetensors").exists()

    reloaded = PeftModel.from_pretrained(tiny_llama(tok), str(out)).eval()
    trained = trainer.model.eval()
    ids = tok(["A B C D t1 t2", "C t3"], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = trained(**ids).logits
        got = reloaded(**ids).logits
        untrained = tiny_llama(tok)(**ids).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(untrained, expected, atol=1e-4), "the adapter must matter"


# ============================================================================ vLLM (as far as a CPU allows)
def test_vllm_flags_reach_dapo_config(fake_vllm, tmp_path):
    _, cfg, _ = train_dapo.make_parser().parse_args_and_config(
        ["--output_dir", str(tmp_path), "--use_cpu", "true", "--use_vllm", "--vllm_mode", "colocate",
         "--vllm_gpu_memory_utilization", "0.5", "--vllm_enable_sleep_mode", "true",
         "--vllm_tensor_parallel_size", "2", "--vllm_max_model_length", "22528"]
    )
    assert (cfg.use_vllm, cfg.vllm_mode, cfg.vllm_gpu_memory_utilization) == (True, "colocate", 0.5)
    assert (cfg.vllm_enable_sleep_mode, cfg.vllm_tensor_parallel_size, cfg.vllm_max_model_length) == (True, 2, 22528)
    _, cfg, _ = train_dapo.make_parser().parse_args_and_config(
        ["--output_dir", str(tmp_path), "--use_cpu", "true", "--use_vllm", "true", "--vllm_mode", "server",
         "--vllm_server_host", "10.1.2.3", "--vllm_server_port", "8001"]
    )
    assert (cfg.vllm_mode, cfg.vllm_server_host, cfg.vllm_server_port) == ("server", "10.1.2.3", 8001)


def test_carry_over_with_vllm_needs_the_behaviour_logprobs(fake_vllm, tmp_path):
    """Carried-over groups need old_per_token_logps; with one update per rollout TRL computes them only
    for vLLM's importance-sampling correction (tests/test_vllm_colocate.py checks that on the real path)."""
    carry = dict(use_vllm=True, filter_groups_enable=True, filter_groups_carry_over=True, num_mini_batches=1)
    with pytest.raises(ValueError, match="--vllm_importance_sampling_correction true"):
        small_args(tmp_path, vllm_importance_sampling_correction=False, **carry)
    assert small_args(tmp_path, vllm_importance_sampling_correction=True, **carry).filter_groups_carry_over
    # Several updates per rollout: TRL computes them anyway, with or without the correction.
    assert small_args(tmp_path, **{**carry, "num_mini_batches": 2}, vllm_importance_sampling_correction=False)


@pytest.mark.skipif(_vllm_installed(), reason="vllm is installed here")
def test_use_vllm_without_vllm_is_a_config_error(tmp_path):
    with pytest.raises(ValueError, match=r"pip install -r requirements-vllm.txt"):
        small_args(tmp_path, use_vllm=True)


@pytest.mark.skipif(_vllm_installed(), reason="vllm is installed here")
def test_use_vllm_without_vllm_exits_before_loading_the_model(tmp_path):
    proc = subprocess.run(
        [sys.executable, "train_dapo.py", "--config", "recipes/quick_test.yaml", "--use_vllm", "true",
         "--output_dir", str(tmp_path / "o")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode != 0
    assert "pip install -r requirements-vllm.txt" in proc.stderr
    assert "Loading weights" not in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


# ============================================================================ two CPU processes through run_dapo.sh
def test_two_process_cpu_run_through_run_dapo_sh(tmp_path):
    out = tmp_path / "out"
    env = clean_env(USE_CPU="1", NUM_PROCESSES="2", MAIN_PROCESS_PORT=str(free_port()),
                    CONFIG="recipes/quick_test.yaml", OUTPUT_DIR=str(out), OMP_NUM_THREADS="1")
    start = time.monotonic()
    proc = subprocess.run(
        ["bash", "run_dapo.sh", "--filter_groups_enable", "true", "--filter_groups_on_limit", "continue",
         "--max_steps", "2", "--num_generations", "2", "--per_device_train_batch_size", "2", "--report_to", "none",
         "--max_completion_length", "24", "--overlong_buffer_len", "8",
         # Bounds the generation rounds: the 135M model rarely yields an informative group of 2 here, and with
         # the defaults (10 generation batches x 3) one step ran 30 rounds (> 10 minutes on the shared 2 cores).
         "--max_filter_gen_batches", "2", "--gen_batch_multiplier", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    elapsed = time.monotonic() - start
    print(f"two-process run_dapo.sh run: {elapsed:.1f} s")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "torch.distributed.run --nproc_per_node 2" in proc.stderr
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(str(out)).num_parameters() > 100_000_000


# ============================================================================ Slurm example
def test_slurm_example_launches_one_rank_per_node_with_a_consistent_batch(tmp_path, fake_vllm):
    """examples/slurm_dapo.sbatch with a stand-in srun (runs the task once per node) and scontrol, and
    a stand-in interpreter so that run_dapo.sh prints each node's launch command instead of training."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(
        '#!/bin/bash\nwhile [ "$1" != bash ]; do shift; done\n'
        'for ((i = 0; i < SLURM_NNODES; i++)); do SLURM_NODEID=$i "$@" || exit $?; done\n'
    )
    (bin_dir / "scontrol").write_text("#!/bin/bash\necho gpu-node-07\necho gpu-node-08\n")
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    # Stand-in interpreter: the real one for run_dapo.sh's cli.py (environment -> flags), echo for the launch.
    (bin_dir / "python").write_text(
        f'#!/bin/bash\nif [ "$1" = cli.py ]; then exec {sys.executable} "$@"; fi\necho "$@"\n'
    )
    (bin_dir / "python").chmod(0o755)
    env = clean_env(PYTHON=str(bin_dir / "python"), SLURM_NNODES="2", SLURM_JOB_NODELIST="gpu-node-[07-08]",
                    SLURM_JOB_ID="4242", SLURM_SUBMIT_DIR=ROOT)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    proc = subprocess.run(["bash", "examples/slurm_dapo.sbatch", "--save_steps", "80"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    commands = [line.split() for line in proc.stdout.splitlines()]
    assert len(commands) == 2
    for rank, cmd in enumerate(commands):
        launcher, train = cmd[:cmd.index("train_dapo.py")], cmd[cmd.index("train_dapo.py") + 1:]
        assert launcher == ["-m", "accelerate.commands.launch", "--num_processes", "16", "--config_file",
                            "configs/zero3.yaml", "--num_machines", "2", "--machine_rank", str(rank),
                            "--main_process_ip", "gpu-node-07", "--main_process_port", "29500"]
        assert train[-2:] == ["--save_steps", "80"]
        # What each node would train with: the 32B recipe at 16 GPUs still makes 512 prompts x 16 per rollout.
        _, cfg, _ = train_dapo.make_parser().parse_args_and_config([*train, "--use_cpu", "true"])
        assert (cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps) == (1, 32)
        assert cfg.output_dir == "outputs/dapo-4242"
        check_batch_arithmetic(16, cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps,
                               cfg.num_mini_batches, cfg.num_generations, 512)
    # A node count that cannot split the update evenly is refused before anything is launched.
    proc = subprocess.run(["bash", "examples/slurm_dapo.sbatch"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**env, "SLURM_NNODES": "3"})
    assert proc.returncode != 0 and proc.stdout == "" and "cannot be split" in proc.stderr
