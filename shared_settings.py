"""The settings that training (train_dapo.py) and the standalone evaluator (eval_cli.py) share, declared once.

PromptSettings: how a dataset row becomes a chat prompt, so that a held-out set is asked like the training set.
EvalSettings: how a model is evaluated (k samples of each of the first N problems, sampling, batch size).

The field names are the training flags (--eval_num_samples, ...; EVAL_NUM_SAMPLES for run_dapo.sh): there
--temperature and --top_p already mean the rollout's. The evaluator adds its short spellings (--k, ...; see
eval_cli.py). The range checks live in config_checks.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass
class PromptSettings:
    """How rows are turned into prompts (the same for training prompts and evaluation problems)."""

    prompt_column: str | None = field(default=None, metadata={"help": "Column holding the problem (auto-detected)."})
    answer_column: str | None = field(default=None, metadata={"help": "Column holding the answer (auto-detected)."})
    prompt_template: str = field(
        default="dapo",
        metadata={"help": "dapo (Answer: line, reference), boxed, none (problem text as is), or a text with "
                          "{problem}."},
    )
    system_prompt: str | None = field(default=None, metadata={"help": "Optional system message for every prompt."})


#: EvalSettings field -> the keyword of evaluation.evaluate_model that takes it.
EVALUATE_MODEL_KEYWORDS = {
    "eval_num_samples": "k",
    "eval_temperature": "temperature",
    "eval_top_p": "top_p",
    "eval_max_new_tokens": "max_new_tokens",
    "eval_batch_size": "batch_size",
}


@dataclass
class EvalSettings:
    """How a model is evaluated: k samples per problem, scored by the training verifier (avg@k, pass@k)."""

    eval_num_samples: int = field(
        default=4, metadata={"help": "k: samples per problem (avg@k, pass@k). DAPO's AIME number is k=32."}
    )
    eval_max_problems: int | None = field(
        default=None, metadata={"help": "Evaluate the first N problems (default: all)."}
    )
    eval_temperature: float = field(
        default=1.0, metadata={"help": "Sampling temperature; 0 = greedy (reference validation: 1.0)."}
    )
    eval_top_p: float = field(default=0.7, metadata={"help": "Nucleus sampling (reference validation: 0.7)."})
    eval_max_new_tokens: int | None = field(
        default=None, metadata={"help": "Completion length limit in tokens (default: --max_completion_length)."}
    )
    eval_batch_size: int = field(default=32, metadata={"help": "Completions generated per generate() call."})

    def evaluate_model_kwargs(self) -> dict:
        """The settings as keywords of ``evaluation.evaluate_model`` (k=..., temperature=..., ...)."""
        return {keyword: getattr(self, name) for name, keyword in EVALUATE_MODEL_KEYWORDS.items()}

    @classmethod
    def of(cls, args) -> EvalSettings:
        """The evaluation settings held by a larger argument object (DAPOScriptArguments)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})
