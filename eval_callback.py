"""In-training evaluation: a TrainerCallback that evaluates the policy on a held-out set while DAPO trains.

It calls the same ``evaluation.evaluate_model`` as the command line (eval_cli.py), so a number logged during
training and one measured afterwards on a checkpoint agree for the same settings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os

from transformers import TrainerCallback

import config_checks
from evaluation import EvalResult, Scorer, evaluate_model, load_eval_dataset
from shared_settings import EVALUATE_MODEL_KEYWORDS, EvalSettings, PromptSettings

logger = logging.getLogger("dapo.evaluate")


class EvalCallback(TrainerCallback):
    """Evaluate the trainer's current policy on a held-out set with ``evaluate_model``.

    When: before training (``eval_on_start``, step 0: the baseline), every ``every_steps`` optimizer steps
    (0: no periodic evaluation) and after the last step (``eval_on_end``); a step is never evaluated twice
    (also not after resuming, using ``state.log_history``).
    What: metrics through ``trainer.log`` as ``eval_avg@{k}``, ``eval_pass@{k}``, ``eval_mean_length``,
    ``eval_truncated_ratio``, ``eval_num_problems``, ``eval_runtime`` (TensorBoard / W&B: ``eval/avg@{k}``, ...),
    and the per-sample records in ``<output_dir>/eval/step_<N>.jsonl``.
    Set ``callback.trainer = trainer`` after building the trainer: logging and unwrapping the model for
    generation need the trainer, which callbacks are not given.
    """

    def __init__(
        self,
        dataset,
        tokenizer,
        settings: EvalSettings,
        *,
        every_steps: int,
        reward_mode: str,
        reward_timeout: float,
        seed: int,
        output_dir: str | None = None,
        eval_on_start: bool = True,
        eval_on_end: bool = True,
        dataset_name: str | None = None,
        scorer: Scorer | None = None,
    ):
        problems = config_checks.check_eval_every_steps(every_steps)
        problems += config_checks.check_eval_settings(settings, names=EVALUATE_MODEL_KEYWORDS)
        config_checks.raise_if(problems)
        self.dataset = dataset
        self.tokenizer = tokenizer
        self.every_steps = every_steps
        self.k = settings.eval_num_samples
        self.eval_kwargs = dict(**settings.evaluate_model_kwargs(), reward_mode=reward_mode,
                                reward_timeout=reward_timeout, seed=seed, scorer=scorer)
        self.output_dir = output_dir
        self.eval_on_start = eval_on_start
        self.eval_on_end = eval_on_end
        self.dataset_name = dataset_name
        self.trainer = None
        self.history: dict[int, dict[str, float]] = {}  # step -> summary metrics
        self.last_result: EvalResult | None = None

    # -------------------------------------------------------------- events
    def on_train_begin(self, args, state, control, **kwargs):
        if self.eval_on_start:
            self._maybe_evaluate(args, state)

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        due = self.every_steps > 0 and step % self.every_steps == 0
        last = self.eval_on_end and state.max_steps > 0 and step >= state.max_steps
        if due or last:
            self._maybe_evaluate(args, state)

    # -------------------------------------------------------------- work
    def _already_logged(self, state) -> bool:
        key = f"eval_avg@{self.k}"
        return state.global_step in self.history or any(
            e.get("step") == state.global_step and key in e for e in state.log_history
        )

    def _maybe_evaluate(self, args, state) -> None:
        if self._already_logged(state):
            return
        if self.trainer is None:
            raise RuntimeError("EvalCallback.trainer is not set: assign `callback.trainer = trainer` after "
                               "building the trainer and before train().")
        self.evaluate(state.global_step)

    def evaluate(self, step: int) -> EvalResult:
        trainer = self.trainer
        acc = trainer.accelerator
        args = trainer.args
        from trl.models import unwrap_model_for_generation

        dist = getattr(trainer, "_dist", None)
        summon = dist.summon_full_params(trainer.model_wrapped, recurse=False) if dist else contextlib.nullcontext()
        # unwrap_model_for_generation unwraps DDP / gathers ZeRO-3 weights and turns gradient checkpointing off
        # for the duration (generation then uses the KV cache), re-enabling it afterwards.
        with (
            unwrap_model_for_generation(
                trainer.model_wrapped,
                acc,
                gather_deepspeed3_params=getattr(args, "ds3_gather_for_generation", True),
                gradient_checkpointing_kwargs=getattr(args, "gradient_checkpointing_kwargs", None),
            ) as model,
            summon,
        ):
            result = evaluate_model(model, self.tokenizer, self.dataset, accelerator=acc,
                                    progress=True, desc=f"eval step {step}", **self.eval_kwargs)
        self.history[step] = dict(result.metrics)
        self.last_result = result
        if acc.is_main_process:
            if self.output_dir:
                path = os.path.join(self.output_dir, "eval", f"step_{step}.jsonl")
                result.write_jsonl(path, extra={"step": step})
            m = result.metrics
            print(f"[eval step {step}] {self.dataset_name or 'eval set'}: avg@{self.k} {result.avg_at_k:.4f} "
                  f"pass@{self.k} {result.pass_at_k:.4f} len {m['mean_length']:.1f} "
                  f"truncated {m['truncated_ratio']:.3f} ({m['num_problems']} problems, {result.runtime:.0f}s)",
                  flush=True)
        self._log(result.log_metrics())
        return result

    def _log(self, logs: dict[str, float]) -> None:
        """``trainer.log`` without disturbing the step's regular training log.

        * The policy is in eval mode during the call, so TRL's GRPOTrainer.log averages (and clears) its *eval*
          metric buffer, which is empty, and leaves the training metrics of the step for the training log.
        * HF's CallbackHandler.on_log resets ``control.should_log``; called from on_step_end that would drop
          the step's training log, so the flag is restored.
        * The completions table of the last rollout is not printed a second time.
        """
        trainer = self.trainer
        model = trainer.model
        was_training = model.training
        control = trainer.control
        should_log = control.should_log
        log_completions = getattr(trainer, "log_completions", None)
        model.eval()
        try:
            if log_completions:
                trainer.log_completions = False
            trainer.log(dict(logs))
        finally:
            model.train(was_training)
            control.should_log = should_log
            trainer.control.should_log = should_log
            if log_completions:
                trainer.log_completions = log_completions


def make_eval_callback(script_args, training_args, tokenizer):
    """Build the in-training evaluation from ``DAPOScriptArguments`` / ``DAPOConfig``.

    The evaluation set is loaded here, before the model, so a bad name fails early. The training set's
    ``--prompt_column`` / ``--answer_column`` are only used if automatic column detection fails on it.
    Evaluates before training, every ``--eval_every_steps`` optimizer steps (0: only before and after
    training) and after the last step.
    """
    from dataset_utils import DatasetError

    # The training set's columns are a fallback: the held-out set may name its columns differently.
    detect = PromptSettings(prompt_template=script_args.prompt_template, system_prompt=script_args.system_prompt)
    options = dict(split=getattr(script_args, "dataset_test_split", None) or "test",
                   max_problems=script_args.eval_max_problems)
    try:
        dataset = load_eval_dataset(script_args.eval_dataset, prompt=detect, **options)
    except DatasetError as first:
        if not (script_args.prompt_column or script_args.answer_column):
            raise
        columns = dataclasses.replace(detect, prompt_column=script_args.prompt_column,
                                      answer_column=script_args.answer_column)
        try:
            dataset = load_eval_dataset(script_args.eval_dataset, prompt=columns, **options)
        except DatasetError:
            raise first from None
    settings = EvalSettings.of(script_args)
    if settings.eval_max_new_tokens is None:  # unset: as long as the training completions
        settings.eval_max_new_tokens = training_args.max_completion_length
    logger.info("evaluation set %s: %d problems x %d samples, every %s steps", script_args.eval_dataset,
                len(dataset), settings.eval_num_samples, script_args.eval_every_steps or "(start/end only)")
    return EvalCallback(
        dataset,
        tokenizer,
        settings,
        every_steps=script_args.eval_every_steps,
        reward_mode=training_args.reward_mode,
        reward_timeout=training_args.reward_timeout,
        seed=training_args.seed,
        output_dir=training_args.output_dir,
        dataset_name=script_args.eval_dataset,
    )
