"""DAPO on Hugging Face TRL: DAPOConfig(GRPOConfig), DAPOTrainer(GRPOTrainer) and the training entry point.

    python train_dapo.py --config recipes/cpu_demo.yaml
    python train_dapo.py --model_name_or_path Qwen/Qwen2.5-7B --dataset_name BytedTsinghua-SIA/DAPO-Math-17k ...

Clip-higher, token-level loss, the dual clip and overlong filtering are TRL options that DAPOConfig
sets to the reference values. What TRL lacks, dynamic sampling with resampling, lives in
DAPOTrainer._generate_and_score_completions; overlong reward shaping is a reward function
(reward_function.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field

import torch
from trl import GRPOConfig, GRPOTrainer, ModelConfig, ScriptArguments, TrlParser, get_peft_config

import logging_utils
import reliability
from dynamic_sampling import (
    PromptStream,
    concat_rows,
    group_advantages,
    informative_groups,
    select_rows,
    trim_padding,
    usable_group_count,
)

logger = logging.getLogger("dapo")

FILTER_METRICS = ("acc", "score", "seq_reward")
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
        default="dapo", metadata={"help": "dapo = token-level loss (reference); grpo = per-sequence mean; bnpo; dr_grpo."}
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
    report_to: list[str] | str = field(default="tensorboard", metadata={"help": "tensorboard, wandb, none, ..."})
    save_steps: float = field(default=50, metadata={"help": "Checkpoint every N optimizer steps."})

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
        metadata={"help": "Verifier: dapo (Answer: line, reference), strict_box, boxed, math_verify (symbolic), last_number (lenient, for tiny models)."},
    )
    reward_timeout: float = field(default=5.0, metadata={"help": "Per-completion time limit of math_verify (s)."})
    reward_batch_timeout: float = field(
        default=120.0,
        metadata={"help": "Time budget of math_verify per batch of completions (s); what is not scored by then gets -1 "
                  "as a timeout (0 = no budget)."},
    )
    filter_groups_enable: bool = field(
        default=False,
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
        metadata={"help": "Keep surplus informative groups for the next step (used once, at most one step old)."},
    )
    entropy_coeff: float | None = field(
        default=None, metadata={"help": "Alias of --entropy_coef (entropy bonus; DAPO uses 0)."}
    )
    log_samples_every: int = field(
        default=10,
        metadata={"help": "Log sampled completions (TensorBoard text, W&B table, samples.jsonl) every N steps (0 = off)."},
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
        if self.entropy_coeff is not None:
            self.entropy_coef = self.entropy_coeff
        if self.steps_per_generation is None and self.generation_batch_size is None:
            if self.num_mini_batches < 1:
                raise ValueError(f"--num_mini_batches must be >= 1, got {self.num_mini_batches}.")
            self.steps_per_generation = self.num_mini_batches * self.gradient_accumulation_steps
        validate_dapo_options(self)
        super().__post_init__()
        # TRL derives steps_per_generation from generation_batch_size if only that was given.
        self.num_mini_batches = max(1, self.steps_per_generation // self.gradient_accumulation_steps)
        if not self.warmup_steps:
            self.warmup_steps = self.warmup_rollout_steps * self.num_mini_batches * self.num_iterations
        if self.filter_groups_enable:
            validate_filtering(self)


def validate_dapo_options(cfg: DAPOConfig) -> None:
    """Checks that need only the config; each message says what to change."""
    errors = []
    if cfg.epsilon_high is not None and cfg.epsilon_high < cfg.epsilon:
        errors.append(
            f"--epsilon_high ({cfg.epsilon_high}) is below --epsilon ({cfg.epsilon}); clip-higher needs "
            "epsilon_high >= epsilon (reference 0.28 vs 0.2)."
        )
    if cfg.epsilon <= 0 or cfg.epsilon >= 1:
        errors.append(f"--epsilon must be in (0, 1), got {cfg.epsilon}.")
    if cfg.apply_overlong_penalty:
        if cfg.overlong_buffer_len <= 0:
            errors.append(f"--overlong_buffer_len must be > 0 with overlong shaping, got {cfg.overlong_buffer_len}.")
        elif cfg.overlong_buffer_len >= cfg.max_completion_length:
            errors.append(
                f"--overlong_buffer_len ({cfg.overlong_buffer_len}) must be smaller than --max_completion_length "
                f"({cfg.max_completion_length}); e.g. a fifth of it (reference 4096 of 20480), or pass "
                "--apply_overlong_penalty false."
            )
    if cfg.use_vllm:
        # Fail here, before any weights load, rather than in TRL's trainer after the model is loaded.
        try:
            import vllm  # noqa: F401
        except Exception as exc:  # not installed, or installed against a torch it cannot use
            errors.append(
                f"--use_vllm is set but vllm cannot be imported ({type(exc).__name__}: {exc}). Install it on a "
                "CUDA machine with `pip install -r requirements-vllm.txt` (see docs/scaling.md), or drop --use_vllm."
            )
    from reward_function import MODES as REWARD_MODES

    if cfg.reward_mode not in REWARD_MODES:
        errors.append(f"--reward_mode {cfg.reward_mode!r} is not one of {', '.join(REWARD_MODES)}.")
    rows = cfg.per_device_train_batch_size * (cfg.steps_per_generation or cfg.gradient_accumulation_steps)
    if cfg.generation_batch_size is None and rows % cfg.num_generations != 0:
        errors.append(
            f"Each process generates per_device_train_batch_size x steps_per_generation = "
            f"{cfg.per_device_train_batch_size} x {cfg.steps_per_generation} = {rows} completions per rollout, "
            f"which is not a multiple of --num_generations ({cfg.num_generations}). Change "
            "--per_device_train_batch_size, --gradient_accumulation_steps or --num_mini_batches so that it is."
        )
    if errors:
        raise ValueError("Invalid DAPO configuration:\n  - " + "\n  - ".join(errors))


def validate_filtering(cfg: DAPOConfig) -> None:
    errors = []
    if cfg.filter_groups_metric not in FILTER_METRICS:
        errors.append(f"--filter_groups_metric must be one of {FILTER_METRICS}, got {cfg.filter_groups_metric!r}.")
    if cfg.max_filter_gen_batches < 0:
        errors.append("--max_filter_gen_batches must be >= 0 (0 = unlimited).")
    if cfg.gen_batch_multiplier < 1:
        errors.append("--gen_batch_multiplier must be >= 1.")
    if cfg.filter_groups_on_limit not in ("error", "continue"):
        errors.append("--filter_groups_on_limit must be 'error' or 'continue'.")
    rows = cfg.per_device_train_batch_size * cfg.steps_per_generation
    if rows % cfg.num_generations:
        errors.append(
            f"With dynamic sampling each process must hold whole prompt groups: per_device_train_batch_size x "
            f"steps_per_generation = {rows} is not a multiple of --num_generations ({cfg.num_generations})."
        )
    if cfg.multi_objective_aggregation != "sum_then_normalize":
        errors.append("Dynamic sampling supports --multi_objective_aggregation sum_then_normalize only.")
    generate_every = cfg.steps_per_generation * cfg.num_iterations
    if cfg.filter_groups_carry_over and cfg.gradient_accumulation_steps % generate_every == 0 and not cfg.use_vllm:
        errors.append(
            "--filter_groups_carry_over trains on groups generated one step earlier, which needs the behaviour "
            "policy's log-probs; they are only computed when one rollout is split into several updates. Set "
            "--num_mini_batches > 1 (or --num_iterations > 1)."
        )
    if errors:
        raise ValueError("Invalid dynamic sampling configuration:\n  - " + "\n  - ".join(errors))


class FilterLimitError(RuntimeError):
    """Dynamic sampling reached --max_filter_gen_batches without a full batch of informative groups."""


class DAPOTrainer(GRPOTrainer):
    """GRPOTrainer plus DAPO dynamic sampling (group filtering with resampling of new prompts).

    Overrides, each narrow:
      * _calculate_rewards: remember the gathered per-function rewards (the filter metric needs them).
      * _generate_and_score_completions: with filtering on, loop generation rounds over our own prompt
        stream until a full batch of informative groups is kept, then return exactly that batch.
      * _save_checkpoint / _load_optimizer_and_scheduler: persist the prompt stream (and carried groups).
      * log: add the DAPO metric aliases (logging_utils).
    """

    def __init__(self, *args, **kwargs):
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
        self._nonfinite = {"skipped": 0, "in_a_row": 0}

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
            out = super()._generate_and_score_completions(inputs)
            if self.model.training:
                self._log_trained_batch_spread(self._seq_rewards(self._last_rewards_per_func))
                self._flush_timing()
            return out
        return self._dynamic_sampling_batch()

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
                self._carry = torch.load(carry, map_location=self.accelerator.device)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Override: add DAPO's metric names (reward/mean, clip_fraction, ...) and the sample logs
        # (logging_utils) before TRL averages the metrics and hands them to TensorBoard / W&B.
        mode = "train" if self.model.training else "eval"
        if mode == "train":
            self._metrics[mode]["reliability/skipped_updates"].append(self._nonfinite["skipped"])
        logging_utils.on_trainer_log(self, logs, mode)
        super().log(logs, start_time)


# ====================================================================== entry point
@dataclass
class DAPOScriptArguments(ScriptArguments):
    """Data options. --dataset_name takes a bundled short name, a local file or a Hub id."""

    dataset_name: str | None = field(
        default="BytedTsinghua-SIA/DAPO-Math-17k",
        metadata={"help": "Bundled name (arithmetic, gsm8k, math500, ...), a .jsonl/.json/.parquet file or a Hub id."},
    )
    prompt_column: str | None = field(default=None, metadata={"help": "Column holding the problem (auto-detected)."})
    answer_column: str | None = field(default=None, metadata={"help": "Column holding the answer (auto-detected)."})
    prompt_template: str = field(
        default="dapo", metadata={"help": "dapo (Answer: line, reference), boxed, or none (problem text as is)."}
    )
    system_prompt: str | None = field(default=None, metadata={"help": "Optional system message for every prompt."})
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
        default=0, metadata={"help": "Evaluate every N optimizer steps; always before the first and after the last step."}
    )
    eval_num_samples: int = field(default=4, metadata={"help": "k: samples per problem (avg@k, pass@k)."})
    eval_max_problems: int | None = field(default=None, metadata={"help": "Evaluate on the first N problems."})
    eval_temperature: float = field(default=1.0, metadata={"help": "Validation temperature (reference: 1.0)."})
    eval_top_p: float = field(default=0.7, metadata={"help": "Validation top_p (reference: 0.7)."})
    eval_max_new_tokens: int | None = field(
        default=None, metadata={"help": "Validation completion length (default: --max_completion_length)."}
    )
    eval_batch_size: int = field(default=32, metadata={"help": "Completions generated at once during evaluation."})


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


def main(script_args: DAPOScriptArguments, training_args: DAPOConfig, model_args: ModelConfig) -> None:
    import model_utils

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # 1. Everything that can be checked cheaply is checked before any weights load.
    model_utils.check_model_reference(model_args.model_name_or_path)
    load_train_dataset(script_args, training_args)  # schema / column / empty-data errors surface here
    identity = reliability.run_identity(model_args.model_name_or_path, script_args.dataset_name,
                                        training_args.seed, training_args.filter_groups_enable)
    with training_args.main_process_first(local=False, desc="locking and checking --output_dir"):
        resume = reliability.prepare_output_dir(
            training_args.output_dir, identity, auto_resume=script_args.auto_resume, start_over=script_args.start_over,
            resume_from_checkpoint=training_args.resume_from_checkpoint,
            needs_dapo_state=training_args.filter_groups_enable, is_main_process=training_args.process_index == 0)
    if resume:
        logger.info("Resuming from %s (--start_over true would start over)", resume)

    # 2. Tokenizer, then the real dataset (length-filtered with the tokenizer).
    from transformers import AutoTokenizer

    model_path = model_utils.resolve_model_path(model_args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=training_args.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_dataset = load_train_dataset(script_args, training_args, tokenizer)

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
    callbacks = [*logging_utils.default_callbacks(training_args), preemption]
    eval_callback = None
    if script_args.eval_dataset:
        import evaluate

        eval_callback = evaluate.make_eval_callback(script_args, training_args, tokenizer)
        callbacks.append(eval_callback)
    trainer = DAPOTrainer(
        model=model_path,
        reward_funcs=build_reward_funcs(training_args),
        args=training_args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=callbacks,
    )
    if eval_callback is not None:
        eval_callback.trainer = trainer
    trainer.train(resume_from_checkpoint=resume)
    if preemption.received is not None:
        logger.warning("Stopped by signal %d after saving a checkpoint; rerun the same command to resume.",
                       preemption.received)
        sys.exit(128 + preemption.received)
    trainer.save_model(training_args.output_dir)
    logging_utils.finish_run(training_args.output_dir, trainer)


def make_parser() -> TrlParser:
    return TrlParser((DAPOScriptArguments, DAPOConfig, ModelConfig))


if __name__ == "__main__":
    parser = make_parser()
    try:
        script_args, training_args, model_args = parser.parse_args_and_config()
    except ValueError as exc:  # configuration errors: print the message, not a traceback
        sys.exit(f"error: {exc}")
    main(script_args, training_args, model_args)
