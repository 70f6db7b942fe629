"""The standalone evaluator: avg@k / pass@k of a model or checkpoint on a math set, every completion to JSONL.

    python eval_cli.py --model smollm2-135m --dataset gsm8k_test --k 4 --max_problems 50 \\
        --temperature 1.0 --top_p 0.7 --max_new_tokens 256 --reward_mode dapo --output results.jsonl

    accelerate launch eval_cli.py ...     splits the problems across processes

Arguments, model loading (model directory, TRL checkpoint, PEFT adapter, Hub id, embedded model) and the
run; the generation and the metrics are evaluation.evaluate_model's. Every setting is checked, and the
dataset loaded, before any weights load: bad input stops the run with `error:` lines and exit status 2.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import types
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser

import config_checks
from config_checks import ConfigError
from evaluation import EvalResult, evaluate_model, load_eval_dataset
from shared_settings import EVALUATE_MODEL_KEYWORDS, EvalSettings, PromptSettings

logger = logging.getLogger("dapo.evaluate")


@dataclass
class EvalCLIArguments:
    """What to evaluate and where the results go (the settings of the evaluation itself: EvalSettings)."""

    model: str = field(
        metadata={"help": "Embedded name (smollm2-135m), local model dir, TRL checkpoint dir (output/checkpoint-N), "
                          "PEFT adapter dir (adapter_config.json) or Hugging Face Hub id."}
    )
    dataset: str = field(
        default="gsm8k_test",
        metadata={"help": "Bundled name (gsm8k_test, math500, aime24, aime25, amc23, arithmetic_test, ...), "
                          "a .jsonl/.json/.parquet file or a Hub id (owner/name[:config])."},
    )
    split: str = field(default="test", metadata={"help": "Split of a Hub dataset / saved dataset dict."})
    reward_mode: str = field(
        default="dapo",
        metadata={"help": "Verifier: dapo (Answer: line, reference), strict_box, boxed, math_verify, last_number."},
    )
    reward_timeout: float = field(default=5.0, metadata={"help": "Per-completion time limit of math_verify (s)."})
    output: str | None = field(
        default=None,
        metadata={"help": "JSONL file for every completion with its score (and <output>.summary.json); "
                          "without it nothing is written."},
    )
    seed: int = field(default=0, metadata={"help": "Sampling seed."})
    dtype: str | None = field(
        default=None,
        metadata={"help": "float32, bfloat16, float16 or auto (the checkpoint's). Default: float32 on CPU, "
                          "auto on GPU."},
    )
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1, ... (default: cuda if available)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})
    no_progress: bool = field(default=False, metadata={"help": "Hide the progress bar."})


@dataclass
class EvaluatorSettings(EvalSettings):
    # Standalone there is no training run whose --max_completion_length the length could follow.
    eval_max_new_tokens: int | None = field(default=1024, metadata={"help": "Completion length limit in tokens."})


#: The evaluator's short spellings of the shared settings (the training flags' names work too).
SHORT_FLAGS = {
    **{name: f"--{keyword}" for name, keyword in EVALUATE_MODEL_KEYWORDS.items()},  # --k, --temperature, ...
    "eval_max_problems": "--max_problems",
    "prompt_template": "--template",
}


class EvalArgumentParser(HfArgumentParser):
    """HfArgumentParser that also accepts the evaluator's short spelling of a shared setting (SHORT_FLAGS)."""

    @staticmethod
    def _parse_dataclass_field(parser, setting):
        # Override: the spellings are the evaluator's only, so they cannot sit in the shared fields' metadata
        # ("aliases"), where the training parser would take --temperature for the evaluation's temperature.
        if setting.name in SHORT_FLAGS:
            setting = copy.copy(setting)
            setting.metadata = types.MappingProxyType({**setting.metadata, "aliases": [SHORT_FLAGS[setting.name]]})
        HfArgumentParser._parse_dataclass_field(parser, setting)


def _adapter_base(path: str) -> str | None:
    config = os.path.join(path, "adapter_config.json")
    if not os.path.isfile(config):
        return None
    with open(config, encoding="utf-8") as f:
        base = json.load(f).get("base_model_name_or_path")
    if not base:
        raise ConfigError([f"{config} names no base_model_name_or_path; cannot load the adapter's base model."])
    return base


def check_model(name: str) -> dict:
    """Cheap checks (no weights) of ``--model``; returns {"kind", "path", "adapter", "base"}."""
    import model_utils

    def check(ref: str, what: str = "") -> str:
        try:
            return model_utils.check_model_reference(ref)
        except model_utils.ModelResolutionError as exc:
            raise ConfigError([what + str(exc).replace("--model_name_or_path", "--model")]) from None

    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded) and not any(
        os.path.isfile(os.path.join(expanded, f)) for f in ("config.json", "adapter_config.json")
    ):
        checkpoints = sorted(
            (d for d in os.listdir(expanded) if d.startswith("checkpoint-") and d.split("-")[-1].isdigit()),
            key=lambda d: int(d.split("-")[-1]),
        )
        if checkpoints:
            raise ConfigError([
                f"--model {name!r} is a training output directory without a final model; it holds "
                f"{', '.join(checkpoints)}. Pass one checkpoint, e.g. --model {os.path.join(name, checkpoints[-1])}"
            ])
    if os.path.isdir(expanded):
        name = expanded
    kind = check(name)
    base = _adapter_base(name) if os.path.isdir(name) else None
    if base is not None:
        check(base, f"the base model {base!r} of the PEFT adapter {name!r}: ")
        import importlib.util

        if importlib.util.find_spec("peft") is None:
            raise ConfigError([f"{name} is a PEFT adapter; install peft (pip install peft) to evaluate it."])
    return {"kind": kind, "path": name, "adapter": base is not None, "base": base}


def _torch_dtype(name: str | None, device: str):
    if name is None:
        return torch.float32 if device == "cpu" else "auto"
    if name == "auto":
        return "auto"
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ConfigError([f"--dtype {name!r}: use float32, bfloat16, float16 or auto."])
    return value


def load_model_and_tokenizer(info: dict, *, dtype=None, device: str = "cpu", trust_remote_code: bool = False):
    """Load what ``check_model`` accepted: a model dir / hub id / embedded model, or base + PEFT adapter."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import model_utils

    base = info["base"] if info["adapter"] else info["path"]
    base_path = model_utils.resolve_model_path(base)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype, trust_remote_code=trust_remote_code)
    tokenizer = None
    tokenizer_sources = [info["path"], base_path] if info["adapter"] else [base_path]
    for source in tokenizer_sources:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
            break
        except Exception as exc:  # an adapter dir often has no tokenizer files
            last = exc
    if tokenizer is None:
        raise ConfigError([f"cannot load a tokenizer for {info['path']!r}: {last}"])
    if info["adapter"]:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, info["path"])
        model = model.merge_and_unload()  # plain model: faster generation
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer


def run_cli(args: EvalCLIArguments, prompt: PromptSettings, settings: EvalSettings) -> EvalResult:
    from dataset_utils import DatasetError

    # 1. Everything checkable without weights: settings, dataset, model reference.
    problems = config_checks.check_reward_mode(args.reward_mode)
    problems += config_checks.check_prompt_template(prompt.prompt_template, flag="--template")
    problems += config_checks.check_eval_settings(settings, names=SHORT_FLAGS)
    config_checks.raise_if(problems)
    try:
        dataset = load_eval_dataset(args.dataset, split=args.split, prompt=prompt,
                                    max_problems=settings.eval_max_problems)
    except DatasetError as exc:
        raise ConfigError([f"--dataset {args.dataset!r}: {str(exc).replace('--dataset_name', '--dataset')}"]) from None
    info = check_model(args.model)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = _torch_dtype(args.dtype, device.split(":")[0])

    # 2. Weights, then the evaluation (distributed when launched with `accelerate launch`).
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes > 1:
        device = str(state.device)
    logger.info("loading %s (%s%s)", args.model, info["kind"], ", PEFT adapter" if info["adapter"] else "")
    model, tokenizer = load_model_and_tokenizer(info, dtype=dtype, device=device,
                                                trust_remote_code=args.trust_remote_code)
    result = evaluate_model(
        model, tokenizer, dataset, **settings.evaluate_model_kwargs(), reward_mode=args.reward_mode,
        reward_timeout=args.reward_timeout, seed=args.seed, accelerator=state if state.num_processes > 1 else None,
        progress=not args.no_progress,
    )
    if state.is_main_process:
        result.settings.update(model=args.model, dataset=args.dataset, template=prompt.prompt_template,
                               num_problems=len(dataset))
        if args.output:
            result.write_jsonl(args.output)
            summary_path = (args.output[: -len(".jsonl")] if args.output.endswith(".jsonl") else args.output)
            with open(summary_path + ".summary.json", "w", encoding="utf-8") as f:
                json.dump({"metrics": result.metrics, "runtime_s": result.runtime, "settings": result.settings},
                          f, indent=2)
        title = (f"{args.model} on {args.dataset}: {result.metrics['num_problems']} problems x {result.k} samples, "
                 f"temperature {settings.eval_temperature}, top_p {settings.eval_top_p}, "
                 f"max_new_tokens {settings.eval_max_new_tokens}, reward {args.reward_mode}")
        print(result.table(title), flush=True)
        if args.output:
            print(f"completions: {args.output}", flush=True)
    return result


def make_parser() -> EvalArgumentParser:
    from dataset_utils import describe_bundled

    parser = EvalArgumentParser((EvalCLIArguments, PromptSettings, EvaluatorSettings),
                                description=__doc__.split("\n")[0])
    parser.epilog = "Bundled datasets (offline):\n" + describe_bundled()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args, prompt, settings = make_parser().parse_args_into_dataclasses(args=argv)
    try:
        run_cli(args, prompt, settings)
    except ConfigError as exc:
        print("\n".join(f"error: {line}" for line in exc.problems), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
