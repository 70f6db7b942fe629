"""Every check of the settings: training's, run while the arguments are parsed (before any weights load), and the
evaluation's and the verifier mode's, shared by training, the evaluator (eval_cli.py) and the library functions.

Each problem becomes one line naming the flag, the value given and the fix. All problems of a configuration are
reported together, so a user fixes them in one round instead of one model load per mistake.
"""

from __future__ import annotations

import os

FILTER_METRICS = ("acc", "score", "seq_reward")


class ConfigError(ValueError):
    """A setting that cannot work; the message lists every such setting with its fix."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def raise_if(problems: list[str]) -> None:
    if problems:
        raise ConfigError(problems)


def _num(cfg, name: str, ok, rule: str, why: str = "") -> list[str]:
    value = getattr(cfg, name, None)
    if value is None or ok(value):
        return []
    return [f"--{name} {value}: must be {rule}{'; ' + why if why else ''}."]


def check_numbers(cfg) -> list[str]:
    """Range checks of the numeric training settings (each either impossible or a silently useless run)."""
    positive, non_negative = (lambda v: v > 0), (lambda v: v >= 0)
    at_least_1 = lambda v: v >= 1  # noqa: E731
    fraction = lambda v: 0 < v <= 1  # noqa: E731
    p = []
    p += _num(cfg, "learning_rate", positive, "> 0", "the reference uses 1e-6")
    p += _num(cfg, "per_device_train_batch_size", at_least_1, ">= 1")
    p += _num(cfg, "gradient_accumulation_steps", at_least_1, ">= 1")
    p += _num(cfg, "num_generations", lambda v: v >= 2, ">= 2",
              "advantages compare the responses of one prompt, so a group needs at least two (reference: 16)")
    p += _num(cfg, "num_iterations", at_least_1, ">= 1")
    p += _num(cfg, "num_mini_batches", at_least_1, ">= 1", "updates per rollout (reference: 16)")
    p += _num(cfg, "temperature", positive, "> 0", "sampling needs a positive temperature (reference: 1.0)")
    p += _num(cfg, "top_p", fraction, "in (0, 1]", "1.0 samples the full distribution (reference)")
    p += _num(cfg, "top_k", non_negative, ">= 0 (0 = off)")
    p += _num(cfg, "min_p", lambda v: 0 <= v <= 1, "in [0, 1]")
    p += _num(cfg, "max_completion_length", at_least_1, ">= 1 token", "the reference uses 20480")
    p += _num(cfg, "max_prompt_length", at_least_1, ">= 1 token (or omit it for no limit)")
    p += _num(cfg, "epsilon", lambda v: 0 < v < 1, "in (0, 1)", "the reference uses 0.2")
    p += _num(cfg, "epsilon_high", lambda v: 0 < v < 1, "in (0, 1)", "the reference uses 0.28")
    p += _num(cfg, "delta", lambda v: v > 1, "> 1 (or omit it to turn the dual clip off)", "the reference uses 10")
    p += _num(cfg, "beta", non_negative, ">= 0", "DAPO uses 0")
    p += _num(cfg, "weight_decay", non_negative, ">= 0")
    p += _num(cfg, "max_grad_norm", non_negative, ">= 0 (0 = no clipping)")
    p += _num(cfg, "warmup_steps", non_negative, ">= 0")
    p += _num(cfg, "warmup_rollout_steps", non_negative, ">= 0")
    p += _num(cfg, "num_train_epochs", positive, "> 0")
    p += _num(cfg, "max_steps", lambda v: v == -1 or v > 0, "> 0 (or -1 to train for --num_train_epochs)")
    p += _num(cfg, "logging_steps", positive, "> 0")
    p += _num(cfg, "overlong_buffer_len", non_negative, ">= 0")
    p += _num(cfg, "overlong_penalty_factor", non_negative, ">= 0")
    p += _num(cfg, "reward_timeout", positive, "> 0 seconds",
              "with no time to verify, every math_verify score would be -1")
    p += _num(cfg, "reward_batch_timeout", lambda v: v >= 0, ">= 0 seconds (0 = no budget)")
    p += _num(cfg, "max_filter_gen_batches", non_negative, ">= 0 (0 = unlimited)")
    p += _num(cfg, "gen_batch_multiplier", at_least_1, ">= 1")
    p += _num(cfg, "log_samples_every", non_negative, ">= 0 (0 = off)")
    p += _num(cfg, "num_samples_to_log", at_least_1, ">= 1")
    p += _num(cfg, "max_nonfinite_updates", at_least_1, ">= 1")
    p += _num(cfg, "seed", non_negative, ">= 0")
    p += _num(cfg, "dataloader_num_workers", non_negative, ">= 0")
    p += _num(cfg, "vllm_gpu_memory_utilization", fraction, "in (0, 1]")
    if getattr(cfg, "save_strategy", None) == "steps" and cfg.save_steps is not None and cfg.save_steps <= 0:
        p.append(f"--save_steps {cfg.save_steps}: must be > 0, or the run never checkpoints; pass "
                 "--save_strategy no to train without checkpoints.")
    if getattr(cfg, "save_total_limit", None) is not None and cfg.save_total_limit < 1:
        p.append(f"--save_total_limit {cfg.save_total_limit}: must be >= 1 (or omit it to keep every checkpoint).")
    return p


def check_dapo(cfg) -> list[str]:
    """Checks across DAPO settings, run on the derived values (steps_per_generation set)."""
    p = []
    if cfg.epsilon_high is not None and cfg.epsilon_high < cfg.epsilon:
        p.append(f"--epsilon_high {cfg.epsilon_high}: is below --epsilon ({cfg.epsilon}); clip-higher needs "
                 "epsilon_high >= epsilon (reference 0.28 vs 0.2).")
    if cfg.apply_overlong_penalty and cfg.max_completion_length and cfg.max_completion_length >= 1:
        if cfg.overlong_buffer_len <= 0:
            p.append(f"--overlong_buffer_len {cfg.overlong_buffer_len}: must be > 0 with overlong shaping, or pass "
                     "--apply_overlong_penalty false.")
        elif cfg.overlong_buffer_len >= cfg.max_completion_length:
            p.append(f"--overlong_buffer_len {cfg.overlong_buffer_len}: must be smaller than --max_completion_length "
                     f"({cfg.max_completion_length}); e.g. a fifth of it (reference 4096 of 20480), or pass "
                     "--apply_overlong_penalty false.")
    p += check_reward_mode(cfg.reward_mode)
    if cfg.use_vllm:
        try:
            import vllm  # noqa: F401
        except Exception as exc:  # not installed, or built against a torch it cannot use
            p.append(f"--use_vllm: vllm cannot be imported ({type(exc).__name__}: {exc}). Install it on a CUDA "
                     "machine with `pip install -r requirements-vllm.txt`, or on a CPU with `make setup-vllm` and run "
                     "with .venv-vllm/bin/python (see docs/scaling.md); or drop --use_vllm.")
    if cfg.num_generations and cfg.num_generations >= 1 and cfg.per_device_train_batch_size >= 1:
        rows = cfg.per_device_train_batch_size * (cfg.steps_per_generation or cfg.gradient_accumulation_steps)
        if cfg.generation_batch_size is None and rows % cfg.num_generations:
            p.append(
                f"--num_generations {cfg.num_generations}: each process generates per_device_train_batch_size x "
                f"steps_per_generation = {cfg.per_device_train_batch_size} x {cfg.steps_per_generation} = {rows} "
                "completions per rollout, which is not a multiple of --num_generations. Change "
                "--per_device_train_batch_size, --gradient_accumulation_steps or --num_mini_batches so that it is.")
    if cfg.filter_groups_enable:
        p += check_filtering(cfg)
    return p


def check_filtering(cfg) -> list[str]:
    p = []
    if cfg.filter_groups_metric not in FILTER_METRICS:
        p.append(f"--filter_groups_metric {cfg.filter_groups_metric!r}: must be one of {', '.join(FILTER_METRICS)}.")
    if cfg.filter_groups_on_limit not in ("error", "continue"):
        p.append(f"--filter_groups_on_limit {cfg.filter_groups_on_limit!r}: must be 'error' or 'continue'.")
    if cfg.multi_objective_aggregation != "sum_then_normalize":
        p.append(f"--multi_objective_aggregation {cfg.multi_objective_aggregation}: dynamic sampling supports "
                 "sum_then_normalize only (or pass --filter_groups_enable false).")
    generate_every = cfg.steps_per_generation * cfg.num_iterations
    # TRL computes the behaviour policy's log-probs (old_per_token_logps) when a rollout spans several updates,
    # or with vLLM when its importance-sampling correction is on; carried-over groups need them.
    old_logps = cfg.gradient_accumulation_steps % generate_every != 0 or (
        cfg.use_vllm and cfg.vllm_importance_sampling_correction)
    if cfg.filter_groups_carry_over and not old_logps:
        p.append(
            "--filter_groups_carry_over: trains on groups generated one rollout earlier, which needs the behaviour "
            "policy's log-probs; they are only computed when one rollout is split into several updates, or with "
            "--use_vllm and --vllm_importance_sampling_correction true. Set --num_mini_batches > 1 (or "
            "--num_iterations > 1)" + (", or --vllm_importance_sampling_correction true." if cfg.use_vllm else "."))
    return p


def check_script_args(args) -> list[str]:
    """Checks of the data and evaluation settings (DAPOScriptArguments)."""
    p = []
    p += _num(args, "max_train_samples", lambda v: v >= 1, ">= 1 (or omit it to use every prompt)")
    p += check_eval_every_steps(args.eval_every_steps)
    p += check_eval_settings(args)
    p += check_prompt_template(args.prompt_template)
    return p


def check_reward_mode(mode: str, flag: str = "--reward_mode") -> list[str]:
    """The verifier mode, for training, the evaluator and the verifier itself (``flag``: how the caller names it)."""
    from reward_function import MODES

    return [] if mode in MODES else [f"{flag} {mode!r}: is not one of {', '.join(MODES)}."]


#: The named prompt templates (dataset_utils renders them); any other template is a text containing {problem}.
PROMPT_TEMPLATES = ("dapo", "boxed", "none")


def check_prompt_template(template: str, flag: str = "--prompt_template") -> list[str]:
    if template in PROMPT_TEMPLATES or "{problem}" in str(template):
        return []
    return [f"{flag} {template!r}: must be dapo, boxed, none or a text containing {{problem}}."]


def check_eval_every_steps(every_steps: int) -> list[str]:
    if every_steps is not None and every_steps >= 0:
        return []
    return [f"--eval_every_steps {every_steps}: must be >= 0 (0 = only before the first and after the last step)."]


# EvalSettings field, test, rule, and what omitting it (None) means for the training flag.
EVAL_RULES = (
    ("eval_num_samples", lambda v: v >= 1, ">= 1", None),
    ("eval_max_problems", lambda v: v >= 1, ">= 1", "or omit it to evaluate every problem"),
    ("eval_temperature", lambda v: v >= 0, ">= 0 (0 = greedy)", None),
    ("eval_top_p", lambda v: 0 < v <= 1, "in (0, 1]", None),
    ("eval_max_new_tokens", lambda v: v >= 1, ">= 1", "or omit it to use --max_completion_length"),
    ("eval_batch_size", lambda v: v >= 1, ">= 1", None),
)


def check_eval_settings(settings, names: dict[str, str] | None = None) -> list[str]:
    """Range checks of the evaluation settings (shared_settings.EvalSettings), wherever they come from.

    Without ``names``: the training flags, where a setting left unset (None) takes its default
    (``--eval_num_samples 0: must be >= 1.``). With ``names`` (field -> how the caller spells it: the evaluator's
    ``--k``, evaluate_model's ``k``): only those settings, as generation receives them, so the length must be
    set (``--k must be >= 1, got 0``).
    """
    p = []
    for name, ok, rule, omitted in EVAL_RULES:
        if names is not None and name not in names:
            continue
        value = getattr(settings, name)
        # Unset, a training flag takes its default; generation itself needs a length.
        may_be_unset = omitted is not None and not (names is not None and name == "eval_max_new_tokens")
        if (value is None and may_be_unset) or (value is not None and ok(value)):
            continue
        if names is None:
            p.append(f"--{name} {value}: must be {rule}{f' ({omitted})' if omitted else ''}.")
        else:
            p.append(f"{names[name]} must be {rule}, got {value}")
    return p


def check_output_dir(path: str) -> list[str]:
    """The output directory must be a directory this process can write (checked before any weights load)."""
    if os.path.exists(path) and not os.path.isdir(path):
        return [f"--output_dir {path}: is a file, not a directory; choose another --output_dir."]
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write_test.{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as exc:
        return [f"--output_dir {path}: cannot be written ({exc.strerror or exc}); choose a writable --output_dir."]
    return []
