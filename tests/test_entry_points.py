"""The three ways to start a run (train_dapo.py flags, run_dapo.sh environment variables, a YAML recipe) agree,
take every default from the config dataclasses, and refuse bad settings with one line before any weights load."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

import cli
import config_checks
from train_dapo import DAPOConfig, make_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHON": sys.executable}
# The settings the three entry points are given (a recipe key, a flag and an environment variable each).
SETTINGS = {"model_name_or_path": "smollm2-135m", "dataset_name": "arithmetic_easy", "learning_rate": "3e-06",
            "num_generations": "4", "per_device_train_batch_size": "4", "num_mini_batches": "2",
            "gradient_accumulation_steps": "1", "max_completion_length": "32", "overlong_buffer_len": "8",
            "filter_groups_on_limit": "continue", "report_to": "tensorboard", "system_prompt": "Be brief."}


def _clean_env(**extra) -> dict:
    """The test process's environment without any variable that run_dapo.sh would turn into a flag."""
    names = set(cli.env_flags())
    return {**{k: v for k, v in ENV.items() if k not in names}, **extra}


def _dry_run(cmd, env, tmp_path) -> dict:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    settings = json.loads(proc.stdout[proc.stdout.index("{"):])
    return settings


def _defaults() -> dict:
    return {name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            for name, f in cli.all_fields().items()}


# ----------------------------------------------------------------------------- one home for every default
def test_flags_environment_and_recipe_give_identical_training_arguments(tmp_path):
    out = str(tmp_path / "o")
    flags = [x for k, v in SETTINGS.items() for x in (f"--{k}", v)]
    by_flags = _dry_run([sys.executable, "train_dapo.py", *flags, "--output_dir", out, "--dry_run", "true"],
                        _clean_env(), tmp_path)
    env = _clean_env(**{k.upper(): v for k, v in SETTINGS.items()}, OUTPUT_DIR=out, DRY_RUN="true")
    env["MODEL_PATH"] = env.pop("MODEL_NAME_OR_PATH")  # the short name works like the long one
    by_env = _dry_run(["bash", "run_dapo.sh"], env, tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**{k: yaml.safe_load(v) for k, v in SETTINGS.items()}, "output_dir": out}))
    by_recipe = _dry_run(["bash", "run_dapo.sh", "--dry_run", "true"], _clean_env(CONFIG=str(recipe)), tmp_path)
    differing = {k: (by_flags[k], by_env.get(k), by_recipe.get(k)) for k in by_flags
                 if not (by_flags[k] == by_env.get(k) == by_recipe.get(k))}
    assert not differing
    assert by_flags["learning_rate"] == 3e-6 and by_flags["report_to"] == ["tensorboard"]
    # Everything not given is the dataclass default: the script adds nothing of its own.
    defaults = _defaults()
    for name in ("epsilon", "epsilon_high", "delta", "beta", "loss_type", "temperature", "top_p", "weight_decay",
                 "filter_groups_enable", "max_filter_gen_batches", "gen_batch_multiplier", "auto_resume"):
        assert by_env[name] == defaults[name], name


def test_report_to_defaults_to_tensorboard_from_flags_and_recipes(tmp_path):
    _, cfg, _ = make_parser().parse_args_and_config(["--output_dir", str(tmp_path)])
    assert cfg.report_to == ["tensorboard"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model_name_or_path: smollm2-135m\n")
    _, cfg, _ = make_parser().parse_args_and_config(["--config", str(recipe), "--output_dir", str(tmp_path)])
    assert cfg.report_to == ["tensorboard"]
    _, cfg, _ = make_parser().parse_args_and_config(["--output_dir", str(tmp_path), "--report_to", "none"])
    assert cfg.report_to == []


def test_defaults_are_the_reference_recipe_and_resume_exactly(tmp_path, recwarn, caplog):
    cfg = DAPOConfig(output_dir=str(tmp_path))
    assert cfg.filter_groups_enable and cfg.filter_groups_on_limit == "error"  # dynamic sampling is on
    rollout = cfg.num_mini_batches * cfg.num_iterations
    assert cfg.save_steps % rollout == 0, "default checkpoints must land on rollout boundaries"
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)], [str(w.message) for w in recwarn]
    assert "not a multiple" not in caplog.text
    assert cfg.activation_checkpointing is True and cfg.bf16 is False  # no bf16 GPU here: auto is off
    assert cfg.dataloader_pin_memory is False  # no CUDA: pinning would only warn


def test_gradient_checkpointing_alias_still_works_without_a_warning(tmp_path, recwarn):
    cfg = DAPOConfig(output_dir=str(tmp_path), gradient_checkpointing=False)
    assert cfg.activation_checkpointing is False and cfg.gradient_checkpointing is False
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]


def test_recipes_restate_no_default():
    defaults = _defaults()
    for name in sorted(os.listdir(os.path.join(ROOT, "recipes"))):
        recipe = yaml.safe_load(open(os.path.join(ROOT, "recipes", name)))
        for key, value in recipe.items():
            assert key in defaults, f"{name}: {key} is not a setting"
            default = defaults[key]
            assert value != default and [value] != default, f"{name} restates the default {key}: {value}"


def test_run_script_has_no_settings_of_its_own():
    script = open(os.path.join(ROOT, "run_dapo.sh")).read()
    code = "\n".join(line.split("#")[0] for line in script.split("# Launcher:")[0].splitlines())
    flags = re.findall(r"--(?!config\b)[a-z_]{3,}", code)
    assert flags == [], f"run_dapo.sh passes flags of its own: {flags}"


# ----------------------------------------------------------------------------- environment variables
def test_environment_variables_become_flags_and_typos_are_refused():
    argv = cli.env_to_argv({"LEARNING_RATE": "2e-6", "MODEL_PATH": "m", "FILTER_GROUPS": "false", "HOME": "/root",
                            "REPORT_TO": "tensorboard,wandb", "SYSTEM_PROMPT": "two words", "SEED": ""})
    assert argv == ["--filter_groups_enable", "false", "--learning_rate", "2e-6", "--model_name_or_path", "m",
                    "--report_to", "tensorboard", "wandb", "--system_prompt", "two words"]
    with pytest.raises(config_checks.ConfigError, match="LEARNIG_RATE is not a setting.*LEARNING_RATE"):
        cli.env_to_argv({"LEARNIG_RATE": "1e-6"})
    with pytest.raises(config_checks.ConfigError, match="NUM_GENERATION is not a setting.*NUM_GENERATIONS"):
        cli.env_to_argv({"NUM_GENERATION": "8"})
    # Another program's variables are left alone.
    assert cli.env_to_argv({"VLLM_CPU_KVCACHE_SPACE": "4", "PATH": "/bin", "PYTHONPATH": "."}) == []


def test_misspelled_environment_variable_stops_run_dapo_sh():
    proc = subprocess.run(["bash", "run_dapo.sh"], cwd=ROOT, env=_clean_env(LEARNIG_RATE="1e-6"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "error: environment variable LEARNIG_RATE is not a setting" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_scripts_without_a_virtualenv_say_to_run_make_setup(tmp_path):
    for name in ("run_dapo.sh", "test_dapo.sh"):
        shutil.copy(os.path.join(ROOT, name), tmp_path / name)
    env = {k: v for k, v in _clean_env().items() if k != "PYTHON"}
    proc = subprocess.run(["bash", str(tmp_path / "test_dapo.sh")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "make setup" in proc.stderr, proc.stderr


# ----------------------------------------------------------------------------- early, one-line errors
BAD = [
    ("--temperature", "0"), ("--temperature", "-1"), ("--learning_rate", "-1"), ("--per_device_train_batch_size", "0"),
    ("--max_completion_length", "0"), ("--max_completion_length", "-5"), ("--num_generations", "0"),
    ("--num_generations", "1"), ("--reward_timeout", "-1"), ("--save_steps", "0"), ("--top_p", "0"),
    ("--top_p", "1.5"), ("--epsilon", "0"), ("--epsilon_high", "1.2"), ("--delta", "0.5"), ("--beta", "-0.1"),
    ("--num_mini_batches", "0"), ("--gradient_accumulation_steps", "0"), ("--num_iterations", "0"),
    ("--weight_decay", "-1"), ("--max_grad_norm", "-1"), ("--warmup_rollout_steps", "-1"),
    ("--max_prompt_length", "0"), ("--overlong_penalty_factor", "-1"), ("--max_filter_gen_batches", "-1"),
    ("--gen_batch_multiplier", "0"), ("--max_nonfinite_updates", "0"), ("--num_samples_to_log", "0"),
    ("--log_samples_every", "-1"), ("--logging_steps", "0"), ("--max_steps", "0"), ("--num_train_epochs", "0"),
    ("--save_total_limit", "0"), ("--vllm_gpu_memory_utilization", "1.5"), ("--max_train_samples", "0"),
    ("--eval_num_samples", "0"), ("--eval_top_p", "0"), ("--eval_temperature", "-1"), ("--eval_batch_size", "0"),
    ("--eval_every_steps", "-2"), ("--reward_batch_timeout", "-1"), ("--eval_max_new_tokens", "0"),
    ("--prompt_template", "chatml"),
]


@pytest.mark.parametrize("flag, value", BAD)
def test_every_numeric_flag_is_range_checked_at_parse_time(tmp_path, flag, value):
    argv = ["--output_dir", str(tmp_path), "--num_generations", "4", "--per_device_train_batch_size", "4",
            "--gradient_accumulation_steps", "1", "--num_mini_batches", "2", "--max_completion_length", "64",
            "--overlong_buffer_len", "16", flag, value]
    with pytest.raises(config_checks.ConfigError) as info:
        make_parser().parse_args_and_config(argv)
    line = next(p for p in info.value.problems if p.startswith(flag + " "))
    assert re.match(rf"{flag} \S+: (must|is) ", line), line


def test_cli_prints_one_error_line_per_problem_without_traceback(tmp_path):
    base = [sys.executable, "train_dapo.py", "--config", "recipes/quick_test.yaml", "--output_dir", str(tmp_path / "o")]
    proc = subprocess.run([*base, "--temperature", "0", "--num_generations", "0"], cwd=ROOT, env=_clean_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert [e.split(":")[1].split()[0] for e in errors] == ["--num_generations", "--temperature"], proc.stderr
    assert "Traceback" not in proc.stderr
    # A mistyped flag: one line with the nearest flag, not argparse's page of usage.
    proc = subprocess.run([*base, "--lerning_rate", "1e-5"], cwd=ROOT, env=_clean_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "--lerning_rate: unknown flag; did you mean --learning_rate?" in proc.stderr
    assert len(proc.stderr.splitlines()) <= 3, proc.stderr
    # An output directory that is a file; DAPO_DEBUG=1 shows the traceback instead.
    afile = tmp_path / "file"
    afile.write_text("x")
    argv = [sys.executable, "train_dapo.py", "--config", "recipes/quick_test.yaml", "--output_dir", str(afile)]
    proc = subprocess.run(argv, cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and f"error: --output_dir {afile}: is a file" in proc.stderr
    assert "Traceback" not in proc.stderr and "Loading weights" not in proc.stderr
    proc = subprocess.run(argv, cwd=ROOT, env=_clean_env(DAPO_DEBUG="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr


def test_unwritable_output_dir_is_refused(tmp_path):
    if os.geteuid() == 0:
        problems = config_checks.check_output_dir("/proc/dapo-output")  # not writable even for root
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        problems = config_checks.check_output_dir(str(locked / "out"))
    assert problems and "cannot be written" in problems[0]


def test_short_help_leads_with_dapo_options_and_help_all_has_everything():
    short = subprocess.run([sys.executable, "train_dapo.py", "--help"], cwd=ROOT, env=_clean_env(),
                           capture_output=True, text=True, timeout=300).stdout
    lines = short.splitlines()
    assert len(lines) < 250
    first_dapo = next(i for i, line in enumerate(lines) if line.startswith("  --epsilon_high"))
    assert first_dapo < 150 and "--filter_groups_enable  (default: True)" in short
    assert "--help_all" in lines[-1]
    full = subprocess.run([sys.executable, "train_dapo.py", "--help_all"], cwd=ROOT, env=_clean_env(),
                          capture_output=True, text=True, timeout=300).stdout
    assert "--adam_beta2" in full and "--epsilon_high" in full and len(full.splitlines()) > 4 * len(lines)


# ----------------------------------------------------------------------------- a real run, read as a newcomer
def test_quick_test_is_quiet_and_leaves_a_documented_loadable_model(tmp_path):
    out = tmp_path / "qt"
    proc = subprocess.run(["bash", "test_dapo.sh", "--output_dir", str(out), "--log_samples_every", "1"],
                          cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=1800)
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-3000:]
    for noise in ("FutureWarning", "UserWarning", "pin_memory", "Traceback", "deprecated"):
        assert noise not in console, noise
    assert console.count("loaded 10 prompts") == 1, "the dataset is logged once"
    assert console.count("Run finished") == 1
    # The model card names the base model, the data, DAPO and its paper, and the key settings.
    card = (out / "README.md").read_text()
    for expected in ("smollm2-135m", "arithmetic_easy", "DAPO", "2503.14476", "@article{yu2025dapo",
                     "epsilon / epsilon_high (clip-higher) | 0.2 / 0.28", "dynamic sampling | off"):
        assert expected in card, expected
    assert "[None]" not in card
    # training_args.bin loads in any script that can import the project.
    code = ("import torch, sys; a = torch.load(sys.argv[1], weights_only=False); "
            "print(type(a).__module__, type(a).__name__, a.epsilon_high, a.num_generations)")
    loaded = subprocess.run([sys.executable, "-c", code, str(out / "training_args.bin")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert loaded.stdout.split() == ["train_dapo", "DAPOConfig", "0.28", "2"], loaded.stderr[-2000:]
    # Samples carry the problem, the answer, the prediction, the score and the advantage as fields.
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert rows and rows[0]["step"] == 1  # one sample log per rollout (a rollout here spans steps 1-2)
    for row in rows:
        assert re.fullmatch(r"What is \d [+-] \d\?", row["problem"]), row["problem"]
        assert row["problem"] in row["prompt"] and row["prompt"] != row["problem"]
        assert row["answer"] == str(eval(row["problem"][8:-1]))  # the ground truth of "What is a + b?"
        assert row["score"] in (-1.0, 1.0) and isinstance(row["advantage"], float) and "pred" in row


def test_report_to_wandb_works_offline_after_the_normal_setup(tmp_path, monkeypatch):
    from tests.test_train_dapo import small_args
    from tests.tiny import first_token_parity_reward, tiny_llama, toy_dataset, toy_tokenizer
    from train_dapo import DAPOTrainer

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    tok = toy_tokenizer()
    args = small_args(tmp_path, report_to=["wandb"], max_steps=2)
    trainer = DAPOTrainer(model=tiny_llama(tok), reward_funcs=[first_token_parity_reward], args=args,
                          train_dataset=toy_dataset(), processing_class=tok)
    trainer.train()
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0


def test_log_level_governs_the_projects_console_lines(tmp_path):
    base = [sys.executable, "train_dapo.py", "--config", "recipes/quick_test.yaml", "--dry_run", "true"]
    default = subprocess.run([*base, "--output_dir", str(tmp_path / "a")], cwd=ROOT, env=_clean_env(),
                             capture_output=True, text=True, timeout=600)
    quiet = subprocess.run([*base, "--output_dir", str(tmp_path / "b"), "--log_level", "warning"], cwd=ROOT,
                           env=_clean_env(), capture_output=True, text=True, timeout=600)
    assert default.returncode == 0 and quiet.returncode == 0, quiet.stderr[-2000:]
    assert "INFO dapo.data: loaded 10 prompts" in default.stderr
    assert "INFO dapo" not in quiet.stderr
