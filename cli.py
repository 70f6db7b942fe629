"""The command line of train_dapo.py: a short --help, one-line errors, and environment variables as flags.

    python train_dapo.py --help          the DAPO, data and model options
    python train_dapo.py --help_all      every TRL / transformers option as well
    python cli.py env-args               (used by run_dapo.sh) the flags that the environment variables ask for

Known user errors (settings, data, model, output directory, run identity) print `error:` lines and exit with
status 2; DAPO_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
import textwrap

from trl import ModelConfig, TrlParser

import train_dapo
from shared_settings import EvalSettings, PromptSettings
from train_dapo import DAPOConfig, DAPOScriptArguments

# Names kept from the original run_dapo.sh interface; every other setting is its flag in upper case.
ENV_ALIASES = {
    "MODEL_PATH": "model_name_or_path",
    "PER_DEVICE_BATCH_SIZE": "per_device_train_batch_size",
    "FILTER_GROUPS": "filter_groups_enable",
    "RESUME": "auto_resume",
}
# Read by run_dapo.sh itself (the launcher), not flags.
LAUNCHER_ENV = ("CONFIG", "PYTHON", "NUM_PROCESSES", "ACCELERATE_CONFIG", "NUM_MACHINES", "MACHINE_RANK",
                "MAIN_PROCESS_IP", "MAIN_PROCESS_PORT", "DAPO_DEBUG")
# Flag names too generic to take from a shell environment (another tool may have set them).
NOT_FROM_ENV = {"debug", "local_rank", "project", "config"}
# Model options shown by the short --help (the rest are under --help_all).
MODEL_HELP = ("model_name_or_path", "dtype", "attn_implementation", "use_peft", "lora_r", "lora_alpha",
              "lora_target_modules")
# TRL / transformers options users of this script change most, shown by the short --help.
TRAINING_HELP = ("output_dir", "per_device_train_batch_size", "gradient_accumulation_steps", "num_iterations",
                 "max_steps", "num_train_epochs", "seed", "bf16", "use_cpu", "use_vllm", "vllm_mode",
                 "mask_truncated_completions", "save_strategy", "save_total_limit", "resume_from_checkpoint",
                 "log_level", "push_to_hub")


ARGUMENT_CLASSES = (DAPOScriptArguments, DAPOConfig, ModelConfig)


def all_fields() -> dict[str, dataclasses.Field]:
    """Every setting of the three argument dataclasses, by flag name."""
    return {f.name: f for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls) if f.init}


class DAPOParser(TrlParser):
    """TrlParser with a short error for a mistyped flag (argparse prints the whole usage first)."""

    def error(self, message):
        hint = ""
        if "unrecognized arguments" in message:
            words = [w for w in message.split(":", 1)[1].split() if w.startswith("--")]
            known = [s for a in self._actions for s in a.option_strings if s.startswith("--")]
            close = [m for w in words for m in difflib.get_close_matches(w.split("=")[0], known, n=1)]
            if close:
                hint = f" (did you mean {', '.join(close)}?)"
        sys.stderr.write(f"error: {message}{hint}\nRun with --help for the DAPO options, --help_all for all.\n")
        sys.exit(2)


def make_parser() -> DAPOParser:
    return DAPOParser(ARGUMENT_CLASSES)


def _own_fields(cls) -> list[dataclasses.Field]:
    """Fields declared in the class body itself (DAPO options and the reference overrides of TRL defaults)."""
    own = cls.__dict__.get("__annotations__", {})
    return [f for f in dataclasses.fields(cls) if f.name in own and f.init]


def short_help() -> str:
    """The options users of this script change, grouped; defaults come from the dataclasses."""
    fields = all_fields()
    script = [f.name for f in _own_fields(DAPOScriptArguments) if f.name != "dataset_name"]
    prompt = [f.name for f in dataclasses.fields(PromptSettings)]
    evaluation = [f.name for f in dataclasses.fields(EvalSettings)]
    groups = [
        ("Data", ["dataset_name", "dataset_train_split", *prompt, *[n for n in script if not n.startswith("eval_")]]),
        ("Evaluation during training", [n for n in script if n.startswith("eval_")] + evaluation),
        ("DAPO (defaults: the reference recipe)", [f.name for f in _own_fields(DAPOConfig)]),
        ("Training", [n for n in TRAINING_HELP if n not in {f.name for f in _own_fields(DAPOConfig)}]),
        ("Model", list(MODEL_HELP)),
    ]
    out = ["usage: train_dapo.py [--config RECIPE.yaml] [--flag value ...]", "",
           "DAPO training on TRL. Flags override the recipe; the recipe overrides the defaults below.", ""]
    for title, names in groups:
        out.append(f"{title}:")
        for name in names:
            f = fields[name]
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            help_text = f.metadata.get("help", "").replace("%%", "%")
            out.append(f"  --{name}  (default: {default})")
            out += textwrap.wrap(help_text, width=100, initial_indent="      ", subsequent_indent="      ")
        out.append("")
    out.append("Every environment variable of run_dapo.sh is one of these flags in upper case (LEARNING_RATE=1e-6).")
    out.append("All TRL / transformers options: --help_all.")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- environment
def env_flags() -> dict[str, str]:
    """Environment variable name -> flag name, for every setting of the three argument dataclasses."""
    mapping = {n.upper(): n for n in all_fields() if n not in NOT_FROM_ENV}
    mapping.update(ENV_ALIASES)
    return mapping


def env_to_argv(environ: dict[str, str]) -> list[str]:
    """The command-line flags that the set environment variables ask for (empty values are ignored).

    A variable that is not a setting but is spelled like one (LEARNIG_RATE) is an error rather than silently
    ignored. Variables owned by other tools (VLLM_*, NCCL_*, ...) are only taken when they match exactly.
    """
    mapping, fields = env_flags(), all_fields()
    argv, problems = [], []
    known = set(mapping) | set(LAUNCHER_ENV) | {"USE_CPU"}
    for var in sorted(environ):
        value = environ[var]
        if var in mapping:
            if value == "":
                continue
            flag = mapping[var]
            argv += [f"--{flag}", *(value.replace(",", " ").split() if "list" in str(fields[flag].type) else [value])]
        elif (
            var not in known
            and var.isupper()
            and not var.startswith(("VLLM_", "NCCL_", "TORCH", "CUDA", "HF_", "WANDB_", "SLURM"))
        ):
            close = difflib.get_close_matches(var, known, n=1, cutoff=0.88)
            if close:
                problems.append(f"environment variable {var} is not a setting of run_dapo.sh; did you mean "
                                f"{close[0]}? (unset {var} if it belongs to another program)")
    if problems:
        raise train_dapo.config_checks.ConfigError(problems)
    return argv


# ---------------------------------------------------------------------------------------------- entry point
def user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by what the user asked for: printed as one message, without a traceback."""
    import logging_utils
    import reliability
    import sharding
    from dataset_utils import DatasetError
    from model_utils import ModelResolutionError

    return (train_dapo.config_checks.ConfigError, DatasetError, ModelResolutionError, reliability.RunIdentityError,
            logging_utils.ReportingError, train_dapo.FilterLimitError, reliability.NonFiniteUpdateError,
            sharding.ShardingError)


def _explain(message: str, parser: DAPOParser) -> list[str]:
    """Parser messages in the project's form; an unknown flag gets its nearest known name."""
    in_recipe = "Unknown arguments from config file" in message
    if "arguments are not used" not in message and not in_recipe:
        return message.strip().splitlines()
    import ast

    try:
        unused = ast.literal_eval(message[message.index("["):message.rindex("]") + 1])
    except (ValueError, SyntaxError):
        return message.strip().splitlines()
    known = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
    problems = []
    for word in unused:
        if not str(word).startswith("-"):
            continue
        close = difflib.get_close_matches(str(word).split("=")[0], known, n=1)
        hint = f"; did you mean {close[0]}?" if close else "; see --help (or --help_all for every flag)"
        if in_recipe:
            hint = f"; did you mean {close[0].lstrip('-')}?" if close else ""
            problems.append(f"{str(word).lstrip('-')}: unknown key in the --config recipe{hint}")
        else:
            problems.append(f"{word}: unknown flag{hint}")
    return problems or message.strip().splitlines()


def _print_error(exc: BaseException) -> None:
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    if isinstance(exc, train_dapo.config_checks.ConfigError):
        text = "\n".join(f"error: {line}" for line in lines)
    else:
        text = "error: " + "\n       ".join(lines)
    sys.stderr.write(text + "\n(DAPO_DEBUG=1 shows the traceback)\n")


def run(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(short_help())
        return
    parser = make_parser()
    if "--help_all" in argv:
        parser.print_help()
        return
    debug = os.environ.get("DAPO_DEBUG", "") not in ("", "0")
    try:
        try:
            script_args, training_args, model_args = parser.parse_args_and_config(argv)
        except ValueError as exc:  # any __post_init__ check (ours, TRL's, transformers')
            if isinstance(exc, train_dapo.config_checks.ConfigError):
                raise
            raise train_dapo.config_checks.ConfigError(_explain(str(exc), parser)) from exc
        train_dapo.main(script_args, training_args, model_args)
    except user_errors() as exc:
        if debug:
            raise
        _print_error(exc)
        sys.exit(2)


if __name__ == "__main__":
    if sys.argv[1:2] == ["env-args"]:
        # For run_dapo.sh: NUL-separated flags, so that values with spaces survive.
        try:
            sys.stdout.write("".join(a + "\0" for a in env_to_argv(dict(os.environ))))
        except train_dapo.config_checks.ConfigError as exc:
            _print_error(exc)
            sys.exit(2)
    else:
        sys.exit(f"usage: python cli.py env-args (train with: python train_dapo.py {' '.join(sys.argv[1:])})")
