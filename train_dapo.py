"""DAPO on Hugging Face TRL: DAPOConfig(GRPOConfig), DAPOTrainer(GRPOTrainer) and the training entry point.

    python train_dapo.py --config recipes/cpu_demo.yaml
    python train_dapo.py --model_name_or_path Qwen/Qwen2.5-7B --dataset_name BytedTsinghua-SIA/DAPO-Math-17k ...

Clip-higher, token-level loss, the dual clip and overlong filtering are TRL options that DAPOConfig
sets to the reference values. What TRL lacks, dynamic sampling with resampling, lives in
DAPOTrainer._generate_and_score_completions; overlong reward shaping is a reward function
(reward_function.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field

import torch
from trl import GRPOConfig, GRPOTrainer, ModelConfig, ScriptArguments, get_peft_config

import config_checks
import logging_utils
import reliability
import run_report
import sharding
from dynamic_sampling import (
    PromptStream,
    concat_rows,
    group_advantages,
    informative_groups,
    select_rows,
    trim_padding,
    usable_group_count,
)
from shared_settings import EvalSettings, PromptSettings

logger = logging.getLogger("dapo")

DAPO_STATE_FILE = "dapo_state.json"


@dataclass
class DAPOConfig(GRPOConfig):
    """GRPOConfig with the DAPO reference recipe as defaults, plus the DAPO-only options.

    Defaults follow the official DAPO recipe (see README, "Defaults"), except where a
    default only makes sense on a large GPU cluster; the recipes in recipes/ set those.
    """

    # --- reference defaults for existing TRL options -------------------------------------------
    learning_rate: float = field(default=1e-6, metadata={"help": "AdamW learning rate (reference: 1e-6)."})
    lr_scheduler_type: str = field(
        default="constant_with_warmup", metadata={"help": "Reference: linear warmup, then constant."}
    )
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (reference: 0.1)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (reference: 1.0)."})
    epsilon: float = field(default=0.2, metadata={"help": "Lower clip range eps_low (reference: 0.2)."})
    epsilon_high: float = field(
        default=0.28, metadata={"help": "Upper clip range eps_high, DAPO's clip-higher (reference: 0.28)."}
    )
    delta: float | None = field(
        default=10.0, metadata={"help": "Dual clip: cap on the ratio for negative advantages (reference c=10)."}
    )
    beta: float = field(default=0.0, metadata={"help": "KL coefficient; DAPO uses no KL term (0.0)."})
    loss_type: str = field(
        default="dapo",
        metadata={"help": "dapo = token-level loss (reference); grpo = per-sequence mean; bnpo; dr_grpo."},
    )
    num_generations: int = field(default=16, metadata={"help": "Responses sampled per prompt (reference: 16)."})
    temperature: float = field(default=1.0, metadata={"help": "Rollout sampling temperature (reference: 1.0)."})
    top_p: float = field(default=1.0, metadata={"help": "Rollout nucleus sampling (reference: 1.0)."})
    max_completion_length: int = field(
        default=20480, metadata={"help": "Maximum response length in tokens (reference: 20480)."}
    )
    per_device_train_batch_size: int = field(default=1, metadata={"help": "Completions per device per micro-step."})
    gradient_accumulation_steps: int = field(default=32, metadata={"help": "Micro-steps per optimizer update."})
    logging_steps: float = field(default=1, metadata={"help": "Log every N optimizer steps."})
    output_dir: str | None = field(
        default="outputs/DAPO-TRL", metadata={"help": "Where checkpoints, logs and the final model go."}
    )
    bf16: bool | None = field(
        default=None, metadata={"help": "bf16 mixed precision (default: on where the GPU supports it, off on CPU)."}
    )
    # A list default (not a str): the argument parser reads `list[str] | str` as nargs="+" with no default.
    report_to: list[str] = field(
        default_factory=lambda: ["tensorboard"],
        metadata={"help": "Where metrics go: tensorboard (default), wandb, none, or several."},
    )
    save_steps: float = field(
        default=64,
        metadata={"help": "Checkpoint every N optimizer steps; a multiple of the rollout's optimizer steps "
                  "(num_mini_batches x num_iterations) resumes exactly."},
    )
    # TRL defaults to checkpointing activations under the name transformers deprecates, which warns on every run;
    # both names stay accepted and resolve to activation_checkpointing in __post_init__.
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Alias of --activation_checkpointing."}
    )
    activation_checkpointing: bool | None = field(
        default=None,
        metadata={"help": "Recompute activations in the backward pass: less memory, ~20% slower (default: on)."},
    )
    dataloader_pin_memory: bool | None = field(
        default=None, metadata={"help": "Pin data-loader memory (default: on when CUDA is available)."}
    )

    # --- DAPO options -----------------------------------------------------------------------------
    num_mini_batches: int = field(
        default=16,
        metadata={
            "help": "Optimizer updates per rollout: the rollout (generation batch) is split into this many "
            "mini-batches of per_device_train_batch_size*gradient_accumulation_steps*processes completions "
            "(reference: 16). With 1 the importance ratio is always 1 and clipping never acts. Ignored if "
            "--steps_per_generation or --generation_batch_size is given."
        },
    )
    warmup_rollout_steps: int = field(
        default=10,
        metadata={
            "help": "Learning-rate warmup in rollout steps (reference: 10); converted to optimizer steps "
            "(x num_mini_batches x num_iterations). A positive --warmup_steps (optimizer steps) takes precedence."
        },
    )
    max_prompt_length: int | None = field(
        default=2048, metadata={"help": "Drop training prompts longer than this many tokens (reference: 2048)."}
    )
    apply_overlong_penalty: bool = field(
        default=True, metadata={"help": "Overlong reward shaping: soft length penalty added to the +-1 score."}
    )
    overlong_buffer_len: int = field(
        default=4096, metadata={"help": "Length of the penalty buffer before max_completion_length (reference: 4096)."}
    )
    overlong_penalty_factor: float = field(
        default=1.0, metadata={"help": "Penalty at max_completion_length (reference: 1.0)."}
    )
    reward_mode: str = field(
        default="dapo",
        metadata={
            "help": "Verifier: dapo (Answer: line, reference), strict_box, boxed, math_verify (symbolic), "
            "last_number (lenient, for tiny models)."
        },
    )
    reward_timeout: float = field(default=5.0, metadata={"help": "Per-completion time limit of math_verify (s)."})
    reward_batch_timeout: float = field(
        default=120.0,
        metadata={"help": "Time budget of math_verify per batch of completions (s); what is not scored by then gets -1 "
                  "as a timeout (0 = no budget)."},
    )
    filter_groups_enable: bool = field(
        default=True,
        metadata={"help": "Dynamic sampling: train only on groups with non-constant metric, resampling new prompts."},
    )
    filter_groups_metric: str = field(
        default="acc", metadata={"help": "Metric whose spread decides a group: acc, score (+-1), seq_reward."}
    )
    max_filter_gen_batches: int = field(
        default=10, metadata={"help": "Generation batches allowed per step when filtering (0 = unlimited)."}
    )
    gen_batch_multiplier: int = field(
        default=3, metadata={"help": "Generation batch = this many train batches of prompts (reference: 3)."}
    )
    filter_groups_on_limit: str = field(
        default="error",
        metadata={"help": "At max_filter_gen_batches: error (reference) or continue with a smaller batch."},
    )
    filter_groups_carry_over: bool = field(
        default=False,
        metadata={"help": "Keep surplus informative groups for the next step (used once, one rollout later)."},
    )
    entropy_coeff: float | None = field(
        default=None, metadata={"help": "Alias of --entropy_coef (entropy bonus; DAPO uses 0)."}
    )
    log_samples_every: int = field(
        default=10,
        metadata={
            "help": "Log sampled completions (TensorBoard text, W&B table, samples.jsonl) every N steps (0 = off)."
        },
    )
    num_samples_to_log: int = field(default=8, metadata={"help": "Completions per sample log."})
    max_nonfinite_updates: int = field(
        default=3,
        metadata={"help": "Stop after this many optimizer steps in a row with NaN/inf gradients (each is skipped)."},
    )

    def __post_init__(self):
        if self.bf16 is None and not self.fp16:
            # TRL turns bf16 on by default, which transformers then rejects on a machine without a bf16 GPU.
            # Auto: bf16 where the accelerator supports it (reference), fp32 otherwise (CPU demo).
            from transformers.utils import is_torch_bf16_gpu_available

            self.bf16 = bool(is_torch_bf16_gpu_available()) and not self.use_cpu
        if self.activation_checkpointing is None:
            self.activation_checkpointing = True if self.gradient_checkpointing is None else self.gradient_checkpointing
        self.gradient_checkpointing = None  # mirrored from activation_checkpointing by TrainingArguments
        if self.dataloader_pin_memory is None:
            self.dataloader_pin_memory = torch.cuda.is_available() and not self.use_cpu
        if self.entropy_coeff is not None:
            self.entropy_coef = self.entropy_coeff
        # Ranges first: TRL's own __post_init__ divides by some of these values.
        config_checks.raise_if(config_checks.check_numbers(self))
        if self.steps_per_generation is None and self.generation_batch_size is None:
            self.steps_per_generation = self.num_mini_batches * self.gradient_accumulation_steps
        config_checks.raise_if(config_checks.check_dapo(self))
        super().__post_init__()
        # TRL derives steps_per_generation from generation_batch_size if only that was given.
        self.num_mini_batches = max(1, self.steps_per_generation // self.gradient_accumulation_steps)
        if not self.warmup_steps:
            self.warmup_steps = self.warmup_rollout_steps * self.num_mini_batches * self.num_iterations
        if self.filter_groups_enable:
            config_checks.raise_if(config_checks.check_filtering(self))


class FilterLimitError(RuntimeError):
    """Dynamic sampling reached --max_filter_gen_batches without a full batch of informative groups."""


class DAPOTrainer(GRPOTrainer):
    """GRPOTrainer plus DAPO dynamic sampling (group filtering with resampling of new prompts).

    Overrides, each narrow:
      * _calculate_rewards: remember the gathered per-function rewards (the filter metric needs them).
      * _generate_and_score_completions: with filtering on, loop generation rounds over our own prompt
        stream until a full batch of informative groups is kept, then return exactly that batch.
      * _get_per_token_logps_and_entropies: with filtering on, defer the old-policy / reference log-probs
        of the generation rounds, so they are computed once, for the rows trained.
      * _save_checkpoint / _load_optimizer_and_scheduler: persist the prompt stream (and carried groups).
      * log: the run monitor (logging_utils) adds the metric aliases, derived metrics and completion samples.
    """

    # The saved model card (create_model_card) names DAPO, its paper and tags.
    _tag_names = ["trl", "dapo", "grpo"]
    _name = "DAPO"
    _paper = {
        "title": "DAPO: An Open-Source LLM Reinforcement Learning System at Scale",
        "id": "2503.14476",
        "citation": "@article{yu2025dapo,\n"
        "    title   = {{DAPO: An Open-Source LLM Reinforcement Learning System at Scale}},\n"
        "    author  = {Qiying Yu and Zheng Zhang and Ruofei Zhu and Yufeng Yuan and Xiaochen Zuo and others},\n"
        "    year    = 2025,\n"
        "    eprint  = {arXiv:2503.14476},\n"
        "}",
    }

    def __init__(self, *args, base_model_name: str | None = None, dataset_name: str | None = None, **kwargs):
        # base_model_name / dataset_name: what the user asked for (the model may load from a resolved local path),
        # for the model card.
        self._card_base_model, self._card_dataset = base_model_name, dataset_name
        config = kwargs.get("args", args[2] if len(args) > 2 else None)
        if config is not None and config.use_vllm and config.vllm_mode == "colocate":
            # Before TRL builds the colocated engine: on a CPU, make its weight syncs take effect (vllm_cpu.py).
            import vllm_cpu

            vllm_cpu.apply_if_cpu()
        super().__init__(*args, **kwargs)
        self._last_rewards_per_func: torch.Tensor | None = None
        # Surplus kept groups of the previous step (--filter_groups_carry_over): this process's rows, and
        # (owner process, position) of every carried group, identical on all processes.
        self._carry: dict | None = None
        self._carry_index: list[tuple[int, int]] = []
        self._carry_groups = 0
        self._prompt_stream = None
        if self.args.filter_groups_enable:
            self._prompt_stream = PromptStream(len(self.train_dataset), seed=self.args.seed)
        self._timing = {"generation": 0.0, "scoring": 0.0}
        self._logps_placeholder = False
        self._logprob_rows = 0
        self._nonfinite = {"skipped": 0, "in_a_row": 0}
        # Monitoring, called from log(): tokens are counted from where train() (re)starts.
        self.run_monitor = logging_utils.RunMonitor(logging_utils.steps_per_rollout(self.args), initial_tokens=None)
        logging_utils.quiet_step_logs(self)  # with the one-line console, no raw metric dict per step

    def create_optimizer(self, *args, **kwargs):
        # Override: skip (and count) optimizer steps with non-finite gradients (reliability.py).
        optimizer = super().create_optimizer(*args, **kwargs)
        if not getattr(optimizer, "_dapo_guarded", False):
            reliability.guard_optimizer(optimizer, self.args.max_nonfinite_updates, self._nonfinite)
            optimizer._dapo_guarded = True
        return optimizer

    # ------------------------------------------------------------------ rewards
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # Override: keep the gathered rewards so that dynamic sampling can filter on them.
        start = time.perf_counter()
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._timing["scoring"] += time.perf_counter() - start
        self._last_rewards_per_func = rewards_per_func
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["acc"].append((self._score_column(rewards_per_func) > 0).float().mean().item())
        if "overlong_penalty" in self.reward_func_names:
            penalty = rewards_per_func[:, list(self.reward_func_names).index("overlong_penalty")]
            self._metrics[mode]["overlong/ratio"].append((penalty < 0).float().mean().item())
        return rewards_per_func

    # ------------------------------------------------------------------ log-probs of the trained batch only
    # TRL computes the old-policy log-probs (and the reference model's when beta > 0) inline in
    # _generate_and_score_completions, for every generated row. Dynamic sampling discards most of those rows,
    # so during its generation rounds the one seam TRL offers, _get_per_token_logps_and_entropies, returns a
    # zero placeholder (keeping TRL's output fields, so rounds merge uniformly), and _fill_deferred_logprobs
    # computes the real values for the rows actually trained (and carried over) in the batch's final layout.
    # With vLLM importance-sampling correction TRL also derives the correction ratio and its metrics from the
    # old log-probs inside that method, with no seam in between; those runs keep the per-round pass.
    _defer_logprobs = True  # private switch: False restores the per-round pass (tests compare both)

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        # Override: placeholder during dynamic-sampling rounds; counts the rows of every no-grad pass.
        if self._logps_placeholder:
            zeros = torch.zeros(input_ids.size(0), logits_to_keep, device=input_ids.device)
            return zeros, None, None
        if not torch.is_grad_enabled():
            self._logprob_rows += input_ids.size(0)
        return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                          *args, **kwargs)

    def _fill_deferred_logprobs(self, parts: list[tuple[dict, list[int]]], dummy: dict) -> None:
        """Compute the placeholder log-prob fields of the given rows of each batch, in place.

        Every process must run the same number of forward calls (DDP syncs buffers and sharded models
        gather weights in each forward), so a process with fewer rows adds calls on one row of ``dummy``.
        """
        from contextlib import nullcontext

        from trl.models.utils import disable_gradient_checkpointing
        from trl.trainer.utils import use_adapter

        bs = self.args.per_device_train_batch_size
        calls = sum(-(-len(rows) // bs) for _, rows in parts)
        most = calls
        if self.accelerator.num_processes > 1:
            most = int(self.accelerator.gather(torch.tensor([calls], device=self.accelerator.device)).max())
        jobs = [(batch, rows, True) for batch, rows in parts if rows] + [(dummy, [0], False)] * (most - calls)
        for key in ("old_per_token_logps", "ref_per_token_logps"):
            if key not in dummy:
                continue
            model = self.ref_model if key == "ref_per_token_logps" and self.ref_model is not None else self.model
            for batch, rows, write in jobs:
                if key == "ref_per_token_logps" and self.ref_model is None:
                    # PEFT: the reference is the base model (adapter disabled) or the "ref" adapter, as in TRL.
                    unwrapped = self.accelerator.unwrap_model(self.model)
                    context = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
                else:
                    context = nullcontext()
                index = torch.as_tensor(rows, dtype=torch.long, device=batch["prompt_ids"].device)
                ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)[index]
                mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)[index]
                no_ckpt = disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs)
                with torch.no_grad(), no_ckpt, context:
                    logps, _, _ = self._get_per_token_logps_and_entropies(
                        model, ids, mask, batch["completion_ids"].size(1), batch_size=bs
                    )
                if write:
                    batch[key][index] = logps.to(batch[key].dtype)

    def _log_logprob_passes(self, batch: dict) -> None:
        # 1.0 = each trained completion went through each needed log-prob pass (old / reference) exactly once.
        kinds = sum(key in batch for key in ("old_per_token_logps", "ref_per_token_logps"))
        rows = batch["completion_ids"].size(0)
        if kinds and rows:
            self._metrics["train"]["perf/logprob_passes_per_trained_completion"].append(
                self._logprob_rows / (kinds * rows)
            )
        self._logprob_rows = 0

    def _generate(self, prompts):
        # Override only to time generation for the step-time split (timing/* metrics).
        start = time.perf_counter()
        out = super()._generate(prompts)
        self._timing["generation"] += time.perf_counter() - start
        return out

    def _score_column(self, rewards_per_func: torch.Tensor) -> torch.Tensor:
        names = list(self.reward_func_names)
        index = names.index("correctness") if "correctness" in names else 0
        return rewards_per_func[:, index]

    def _filter_metric(self, rewards_per_func: torch.Tensor) -> torch.Tensor:
        metric = self.args.filter_groups_metric
        # An unscorable completion (NaN) stays NaN: it trains with advantage 0, so it must not make a group
        # look informative (informative_groups looks at the finite members only).
        if metric == "seq_reward":
            return self._seq_rewards(rewards_per_func)
        score = self._score_column(rewards_per_func)
        return torch.where(torch.isnan(score), score, (score > 0).float()) if metric == "acc" else score

    def _seq_rewards(self, rewards_per_func: torch.Tensor) -> torch.Tensor:
        weights = self.reward_weights.to(rewards_per_func.device)
        rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
        rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
        return rewards

    # ------------------------------------------------------------------ dynamic sampling
    def _generate_and_score_completions(self, inputs):
        if not (self.model.training and self.args.filter_groups_enable):
            self._logprob_rows = 0
            out = super()._generate_and_score_completions(inputs)
            if self.model.training:
                self._log_logprob_passes(out)
                self._log_trained_batch_spread(self._seq_rewards(self._last_rewards_per_func))
                self._flush_timing()
            return out
        self._logprob_rows = 0
        self._logps_placeholder = self._defer_logprobs and not (
            self.use_vllm and self.vllm_importance_sampling_correction
        )
        try:
            return self._dynamic_sampling_batch()
        finally:
            self._logps_placeholder = False

    def _log_trained_batch_spread(self, rewards: torch.Tensor) -> None:
        zero = ~informative_groups(rewards, self.num_generations)
        self._metrics["train"]["dynamic_sampling/zero_spread_frac_trained"].append(zero.float().mean().item())

    def _flush_timing(self) -> None:
        for key, value in self._timing.items():
            self._metrics["train"][f"timing/{key}_s"].append(value)
            self._timing[key] = 0.0

    def _dynamic_sampling_batch(self) -> dict:
        args, acc = self.args, self.accelerator
        P, rank, G = acc.num_processes, acc.process_index, self.num_generations
        local_groups = args.per_device_train_batch_size * args.steps_per_generation // G
        need = local_groups * P  # groups per optimizer rollout, all processes

        # Candidates in arrival order: (owner rank, chunk id, local group index). Every process builds the
        # same list from gathered rewards, so every process takes the same decisions (no collective can hang).
        candidates: list[tuple[int, int, int]] = []
        chunks: dict[int, dict] = {}  # chunk id -> this process's rows of that chunk
        if self._carry_index:
            chunks[-1] = self._carry
            candidates += [(owner, -1, pos) for owner, pos in self._carry_index]
        reused_available = len(candidates)
        self._carry, self._carry_index, self._carry_groups = None, [], 0

        generated = kept = 0
        num_gen_batches = 0
        chunk_id = 0
        while len(candidates) < need:
            if args.max_filter_gen_batches and num_gen_batches >= args.max_filter_gen_batches:
                break
            num_gen_batches += 1
            for _ in range(args.gen_batch_multiplier):
                indices = self._prompt_stream.take(need)
                mine = indices[rank * local_groups : (rank + 1) * local_groups]
                rows = [self.train_dataset[i] for i in mine for _ in range(G)]
                out = super()._generate_and_score_completions(rows)
                rewards_per_func = self._last_rewards_per_func
                keep = informative_groups(self._filter_metric(rewards_per_func), G).tolist()
                seq = self._seq_rewards(rewards_per_func)
                out["rewards"] = seq[rank * local_groups * G : (rank + 1) * local_groups * G]
                chunks[chunk_id] = out
                generated += need
                kept += sum(keep)
                candidates += [(g // local_groups, chunk_id, g % local_groups) for g in range(need) if keep[g]]
                chunk_id += 1

        limited = len(candidates) < need
        if limited:
            if args.filter_groups_on_limit == "error":
                fraction = kept / max(generated, 1)
                raise FilterLimitError(
                    f"Dynamic sampling kept {len(candidates)} of the {need} informative groups a step needs after "
                    f"{num_gen_batches} generation batches (--max_filter_gen_batches={args.max_filter_gen_batches}): "
                    f"{kept} of {generated} generated groups ({fraction:.1%}) had non-constant "
                    f"'{args.filter_groups_metric}'. The data is too easy or too hard for this model. Raise "
                    "--max_filter_gen_batches (0 = unlimited) or --gen_batch_multiplier, raise --num_generations, "
                    "change the data or --temperature, or pass --filter_groups_on_limit continue to train on a "
                    "smaller batch."
                )
            take = usable_group_count(len(candidates), P, G, args.steps_per_generation)
        else:
            take = need
        selected, surplus = candidates[:take], candidates[take:]
        reused = sum(1 for c in selected if c[1] == -1)

        self._nonfinite["empty_rollout"] = take == 0
        if take == 0:
            # Nothing usable: go through the steps of this rollout on the last chunk (advantages 0), so that the
            # step count, scheduler and logs stay consistent, but skip its optimizer steps (guard_optimizer):
            # a zero gradient would still move the weights through AdamW's momentum and weight decay.
            logger.warning("Dynamic sampling found no informative group within --max_filter_gen_batches=%d: the "
                           "optimizer steps of this rollout are skipped (weights unchanged).",
                           args.max_filter_gen_batches)
            batch = dict(chunks[chunk_id - 1])
        else:
            batch = self._assemble(chunks, selected, take, local_groups, G)
            if args.filter_groups_carry_over:
                fresh = [c for c in surplus if c[1] != -1]  # a carried group is never carried twice
                if fresh:
                    # Each process keeps the rows of the surplus groups it generated; the index (same on
                    # every process) says where each carried group lives.
                    self._carry = self._rows_of(chunks, [c for c in fresh if c[0] == rank], G)
                    self._carry_index = self._owner_index(fresh)
                    self._carry_groups = len(fresh)
        if self._logps_placeholder:
            self._logps_placeholder = False
            # Rows of carried groups got their log-probs in the step that generated them (behaviour policy).
            local = selected[rank * (take // P) : (rank + 1) * (take // P)] if take else []
            rows = [i * G + j for i, c in enumerate(local) if c[1] != -1 for j in range(G)]
            if not take:
                rows = list(range(batch["completion_ids"].size(0)))
            parts = [(batch, rows)]
            if self._carry is not None:
                parts.append((self._carry, list(range(self._carry["completion_ids"].size(0)))))
            self._fill_deferred_logprobs(parts, dummy=batch)
        self._log_logprob_passes(batch)

        # Advantages and the token-level normaliser of the batch actually trained on.
        rewards = batch.pop("rewards")
        global_std = None
        if self.scale_rewards == "batch":
            from trl.trainer.utils import nanstd

            global_std = nanstd(acc.gather(rewards))
        batch["advantages"] = group_advantages(rewards, G, self.scale_rewards, global_std)
        loss_mask = batch["completion_mask"] * batch["tool_mask"] if "tool_mask" in batch else batch["completion_mask"]
        batch["num_items_in_batch"] = acc.gather(loss_mask.sum()).sum()

        trained_rewards = acc.gather(rewards)
        m = self._metrics["train"]
        m["dynamic_sampling/num_gen_batches"].append(num_gen_batches)
        m["dynamic_sampling/groups_generated"].append(generated)
        m["dynamic_sampling/groups_kept"].append(kept)
        m["dynamic_sampling/groups_trained"].append(take)
        m["dynamic_sampling/groups_discarded"].append(generated + reused_available - take - self._carry_groups)
        m["dynamic_sampling/groups_reused"].append(reused)
        m["dynamic_sampling/groups_carried_over"].append(self._carry_groups)
        m["dynamic_sampling/kept_fraction"].append(kept / max(generated, 1))
        m["dynamic_sampling/partial_batch"].append(float(limited))
        m["dynamic_sampling/prompts_consumed"].append(self._prompt_stream.consumed)
        m["dynamic_sampling/data_epoch"].append(self._prompt_stream.consumed / self._prompt_stream.num_prompts)
        self._log_trained_batch_spread(trained_rewards)
        self._flush_timing()
        return batch

    def _rows_of(self, chunks: dict, cands: list, G: int) -> dict:
        """This process's rows of the given groups; zero rows (same fields) if it owns none, so that
        every process still enters the same collectives."""
        parts = [select_rows(chunks[c], list(range(g * G, (g + 1) * G))) for _, c, g in cands]
        if not parts:
            template = next(chunk for key, chunk in sorted(chunks.items(), reverse=True) if chunk)
            parts = [select_rows(template, [])]
        return concat_rows(parts, self._tokenizer.pad_token_id)

    @staticmethod
    def _owner_index(cands: list) -> list[tuple[int, int]]:
        counters: dict[int, int] = {}
        index = []
        for owner, _, _ in cands:
            index.append((owner, counters.get(owner, 0)))
            counters[owner] = counters.get(owner, 0) + 1
        return index

    def _assemble(self, chunks: dict, selected: list, take: int, local_groups: int, G: int) -> dict:
        """Give each process an equal, contiguous share of the selected groups, groups intact."""
        acc = self.accelerator
        P, rank = acc.num_processes, acc.process_index
        per_proc = take // P
        mine = [c for c in selected if c[0] == rank]
        local = self._rows_of(chunks, mine, G)
        if P == 1:
            return trim_padding(local)
        # Every process contributes the rows of the selected groups it generated; after an all-gather
        # each process picks the groups assigned to it (selected[rank*per_proc : (rank+1)*per_proc]).
        counts = [sum(1 for c in selected if c[0] == r) for r in range(P)]
        max_groups = max(counts)
        gathered = {}
        for key, value in local.items():
            if key == "num_items_in_batch":
                continue
            gathered[key] = self._gather_rows(value, key, max_groups * G)
        position = {}
        seen = dict.fromkeys(range(P), 0)
        for c in selected:
            position[c] = c[0] * max_groups + seen[c[0]]
            seen[c[0]] += 1
        wanted = [position[c] for c in selected[rank * per_proc : (rank + 1) * per_proc]]
        rows = [g * G + j for g in wanted for j in range(G)]
        return trim_padding(select_rows(gathered, rows))

    def _gather_rows(self, tensor: torch.Tensor, key: str, rows: int) -> torch.Tensor:
        from accelerate.utils import pad_across_processes

        from dynamic_sampling import ROW_TENSOR_PADDING

        side, value = ROW_TENSOR_PADDING[key]
        value = self._tokenizer.pad_token_id if value == "pad" else value
        if side is not None and tensor.dim() >= 2:
            tensor = pad_across_processes(tensor, dim=1, pad_index=value, pad_first=(side == "left"))
        if tensor.size(0) < rows:
            filler = torch.zeros((rows - tensor.size(0), *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
            tensor = torch.cat([tensor, filler], dim=0)
        return self.accelerator.gather(tensor.contiguous())

    # ------------------------------------------------------------------ checkpoints & logs
    def _save_checkpoint(self, model, trial):
        # Override: also persist the prompt stream position, carried-over groups and the rollout in flight
        # (reliability.py). A folder left by a killed save is cleared first (nothing stale may survive), and
        # a manifest of every file is written last, so a checkpoint is complete or detectably not.
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save and os.path.isdir(folder):
            shutil.rmtree(folder)
        self.accelerator.wait_for_everyone()
        with reliability.explain_disk_full(folder):
            os.makedirs(folder, exist_ok=True)
            if self._prompt_stream is not None:
                if self.args.should_save:
                    state = {"prompt_stream": self._prompt_stream.state_dict(), "carry_index": self._carry_index}
                    with open(os.path.join(folder, DAPO_STATE_FILE), "w") as f:
                        json.dump(state, f)
                if self._carry_index:
                    torch.save(self._carry, os.path.join(folder, f"dapo_carry_rank{self.accelerator.process_index}.pt"))
            reliability.save_rollout_state(self, folder)
            super()._save_checkpoint(model, trial)
            self.accelerator.wait_for_everyone()
            if self.args.should_save:
                reliability.write_manifest(folder)

    def _load_optimizer_and_scheduler(self, checkpoint):
        # Override: restore what _save_checkpoint added (runs only when resuming).
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            reliability.load_rollout_state(self, checkpoint)
        if checkpoint is None or self._prompt_stream is None:
            return
        path = os.path.join(checkpoint, DAPO_STATE_FILE)
        if os.path.exists(path):
            with open(path) as f:
                state = json.load(f)
            self._prompt_stream.load_state_dict(state["prompt_stream"])
            self._carry_index = [tuple(x) for x in state.get("carry_index", [])]
            self._carry_groups = len(self._carry_index)
            carry = os.path.join(checkpoint, f"dapo_carry_rank{self.accelerator.process_index}.pt")
            if self._carry_index:
                # Via "cpu": torch.load cannot map onto an indexed CPU device ("cpu:0", accelerate's device for
                # CPU processes).
                rows = torch.load(carry, map_location="cpu")
                self._carry = {k: v.to(self.accelerator.device) if torch.is_tensor(v) else v for k, v in rows.items()}

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        # Override: TRL names the base model from the loaded config (a local cache path here, so "None") and
        # knows nothing of the DAPO settings; write the user's model and dataset names and the key settings.
        if not self.is_world_process_zero():
            return
        from trl.trainer.utils import generate_model_card

        card = generate_model_card(
            base_model=self._card_base_model, model_name=model_name or os.path.basename(self.args.output_dir),
            hub_model_id=self.hub_model_id, dataset_name=dataset_name or self._card_dataset,
            tags=sorted(set(self._tag_names) | set(tags or [])), wandb_url=None, trackio_url=None,
            trainer_name=self._name, trainer_citation=self._paper["citation"], paper_title=self._paper["title"],
            paper_id=self._paper["id"],
        )
        a = self.args
        settings = {
            "learning_rate": a.learning_rate, "epsilon / epsilon_high (clip-higher)": f"{a.epsilon} / {a.epsilon_high}",
            "delta (dual clip)": a.delta, "loss_type": a.loss_type, "beta (KL)": a.beta,
            "num_generations": a.num_generations, "updates per rollout (num_mini_batches)": a.num_mini_batches,
            "max_completion_length": a.max_completion_length,
            "overlong shaping (buffer, factor)": (f"{a.overlong_buffer_len}, {a.overlong_penalty_factor}"
                                                  if a.apply_overlong_penalty else "off"),
            "dynamic sampling": (f"on ({a.filter_groups_metric})" if a.filter_groups_enable else "off"),
            "reward_mode": a.reward_mode, "temperature / top_p": f"{a.temperature} / {a.top_p}",
            "optimizer steps": self.state.global_step,
        }
        rows = "\n".join(f"| {k} | {v} |" for k, v in settings.items())
        card.text += f"\n## DAPO settings\n\n| setting | value |\n|---|---|\n{rows}\n"
        card.save(os.path.join(self.args.output_dir, "README.md"))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Override: add the metric aliases (reward/mean, clip_fraction, ...), the derived metrics and the sample
        # logs (logging_utils.RunMonitor) before TRL averages the metrics and hands them to TensorBoard / W&B.
        mode = "train" if self.model.training else "eval"
        if mode == "train":
            self._metrics[mode]["reliability/skipped_updates"].append(self._nonfinite["skipped"])
        self.run_monitor.on_log(self, mode)
        super().log(logs, start_time)


# ====================================================================== entry point
@dataclass
class DAPOScriptArguments(ScriptArguments, PromptSettings, EvalSettings):
    """Data options, and the evaluation during training (the prompt and evaluation settings are shared with
    the standalone evaluator, eval_cli.py). --dataset_name takes a bundled short name, a local file or a Hub id."""

    dataset_name: str | None = field(
        default="BytedTsinghua-SIA/DAPO-Math-17k",
        metadata={"help": "Bundled name (arithmetic, gsm8k, math500, ...), a .jsonl/.json/.parquet file or a Hub id."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training prompts."})
    skip_bad_rows: bool = field(default=False, metadata={"help": "Skip rows without a problem/answer (counted)."})
    auto_resume: bool = field(
        default=True,
        metadata={"help": "Resume from the newest complete checkpoint in --output_dir (incomplete ones are skipped)."},
    )
    start_over: bool = field(
        default=False,
        metadata={"help": "Start a new run in an --output_dir that holds checkpoints (moved to superseded-<time>/)."},
    )
    eval_dataset: str | None = field(
        default=None, metadata={"help": "Held-out set evaluated during training (bundled name, file or Hub id)."}
    )
    eval_every_steps: int = field(
        default=0,
        metadata={"help": "Evaluate every N optimizer steps; always before the first and after the last step."},
    )
    dry_run: bool = field(
        default=False,
        metadata={"help": "Check every setting, the data and the model reference, print the resolved settings "
                  "as JSON, and exit before loading weights."},
    )

    def __post_init__(self):
        if hasattr(super(), "__post_init__"):
            super().__post_init__()
        config_checks.raise_if(config_checks.check_script_args(self))


def load_train_dataset(script_args: DAPOScriptArguments, training_args: DAPOConfig, tokenizer=None):
    from dataset_utils import load_dapo_dataset

    return load_dapo_dataset(
        script_args.dataset_name,
        split=script_args.dataset_train_split,
        prompt_column=script_args.prompt_column,
        answer_column=script_args.answer_column,
        template=script_args.prompt_template,
        system_prompt=script_args.system_prompt,
        max_samples=script_args.max_train_samples,
        shuffle=True,
        seed=training_args.seed,
        tokenizer=tokenizer,
        max_prompt_length=training_args.max_prompt_length if tokenizer is not None else None,
        skip_bad_rows=script_args.skip_bad_rows,
    )


def build_reward_funcs(args: DAPOConfig) -> list:
    from reward_function import make_correctness_reward, make_overlong_reward

    funcs = [make_correctness_reward(mode=args.reward_mode, timeout=args.reward_timeout,
                                     batch_timeout=args.reward_batch_timeout or None)]
    if args.apply_overlong_penalty:
        funcs.append(
            make_overlong_reward(args.max_completion_length, args.overlong_buffer_len, args.overlong_penalty_factor)
        )
    return funcs


def setup_logging(training_args: DAPOConfig) -> None:
    """The project's console lines (logger "dapo" and its children) follow --log_level (default: info)."""
    level = training_args.get_process_log_level()
    if training_args.log_level == "passive" and training_args.process_index == 0:
        level = logging.INFO
    root = logging.getLogger("dapo")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
        root.propagate = False
    root.setLevel(level)


def main(script_args: DAPOScriptArguments, training_args: DAPOConfig, model_args: ModelConfig) -> None:
    import warnings

    import model_utils

    setup_logging(training_args)
    # The libraries still read this deprecated transformers property themselves on every step; nothing a user
    # can change, so it is not shown.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    if not torch.cuda.is_available():
        # DeepSpeed (imported by accelerate when installed) otherwise warns that it fell back to the CPU.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # 1. Everything that can be checked without weights is checked before any weights load.
    if not model_args.model_name_or_path:
        raise config_checks.ConfigError([
            "--model_name_or_path is required (MODEL_PATH for run_dapo.sh): smollm2-135m is embedded and runs "
            "offline on a CPU; a Hub id such as Qwen/Qwen2.5-7B needs network access and GPUs (see recipes/)."])
    sharding_check = sharding.check_launch(training_args)  # DeepSpeed / FSDP launched but would not shard: stop
    model_utils.check_model_reference(model_args.model_name_or_path)
    config_checks.raise_if(config_checks.check_output_dir(training_args.output_dir))
    identity = reliability.run_identity(model_args.model_name_or_path, script_args.dataset_name,
                                        training_args.seed, training_args.filter_groups_enable)
    with training_args.main_process_first(local=False, desc="locking and checking --output_dir"):
        resume = reliability.prepare_output_dir(
            training_args.output_dir, identity, auto_resume=script_args.auto_resume, start_over=script_args.start_over,
            resume_from_checkpoint=training_args.resume_from_checkpoint,
            needs_dapo_state=training_args.filter_groups_enable, is_main_process=training_args.process_index == 0)
    if resume:
        logger.info("Resuming from %s (--start_over true would start over)", resume)

    # 2. Tokenizer, then the dataset (schema errors, then the prompt-length filter, which needs the tokenizer).
    from transformers import AutoTokenizer

    model_path = model_utils.resolve_model_path(model_args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=training_args.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_dataset = load_train_dataset(script_args, training_args, tokenizer)
    if script_args.dry_run:
        print(json.dumps(resolved_settings(script_args, training_args, model_args), indent=1, sort_keys=True,
                         default=str))
        return

    # 3. Model (loaded by TRL from the resolved path), rewards, trainer.
    # Same model_init_kwargs as TRL's own grpo.py; TRL loads the model from the resolved path.
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    }
    preemption = reliability.PreemptionCallback()
    callbacks = [*logging_utils.default_callbacks(training_args), preemption, sharding_check]
    eval_callback = None
    if script_args.eval_dataset:
        from eval_callback import make_eval_callback

        eval_callback = make_eval_callback(script_args, training_args, tokenizer)
        callbacks.append(eval_callback)
    trainer = DAPOTrainer(
        model=model_path,
        reward_funcs=build_reward_funcs(training_args),
        args=training_args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=callbacks,
        base_model_name=model_args.model_name_or_path,
        dataset_name=script_args.dataset_name,
    )
    if eval_callback is not None:
        eval_callback.trainer = trainer
    trainer.train(resume_from_checkpoint=resume)
    if preemption.received is not None:
        logger.warning("Stopped by signal %d after saving a checkpoint; rerun the same command to resume.",
                       preemption.received)
        sys.exit(128 + preemption.received)
    trainer.save_model(training_args.output_dir)
    trainer.create_model_card()  # also without checkpoints (TRL writes it only when it saves one)
    run_report.finish_run(training_args.output_dir, trainer)
    sharding.shutdown()


def resolved_settings(script_args, training_args, model_args) -> dict:
    """Every setting after defaults, recipe, environment and flags are merged (what --dry_run prints)."""
    out = {}
    for obj in (script_args, training_args, model_args):
        out.update({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init})
    return out


def make_parser():
    """The argument parser of this script (cli.DAPOParser over the three argument dataclasses)."""
    import cli

    return cli.make_parser()


if __name__ == "__main__":
    # Through cli (which imports this file as the module `train_dapo`): the short --help, one-line errors, and
    # checkpoints whose training_args.bin names train_dapo.DAPOConfig rather than __main__.DAPOConfig.
    import cli

    cli.run()
