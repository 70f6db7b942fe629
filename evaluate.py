"""Evaluate math reasoning models: avg@k and pass@k, during DAPO training and standalone (issue #5).

Library
-------
avg_at_k(scores_per_problem) -> float          mean accuracy over all samples (DAPO's AIME "avg@32")
pass_at_k(n, c, k) -> float                    unbiased pass@k of one problem with c correct of n samples
summarize(records, k) -> dict                  the summary metrics of a list of per-sample records
evaluate_model(model, tokenizer, dataset, *, k, temperature, top_p, max_new_tokens, reward_mode,
               batch_size, seed, accelerator=None, progress=True) -> EvalResult
EvalCallback / make_eval_callback(script_args, training_args, tokenizer)   in-training evaluation

Command line
------------
    python evaluate.py --model smollm2-135m --dataset gsm8k_test --k 4 --max_problems 50 \\
        --temperature 1.0 --top_p 0.7 --max_new_tokens 256 --reward_mode dapo --output results.jsonl

See docs/evaluation.md for the metric definitions and the names logged to TensorBoard / W&B.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from chat_text import message_text, render_prompt

logger = logging.getLogger("dapo.evaluate")

#: Keys of every per-sample record (the JSONL written by the CLI and by the training callback).
RECORD_FIELDS = (
    "row_id",
    "problem_index",
    "sample_index",
    "data_source",
    "problem",
    "prompt",
    "completion",
    "answer",
    "pred",
    "score",
    "acc",
    "length",
    "truncated",
)


# ====================================================================== metrics (pure functions)
def _is_correct(value: Any) -> bool:
    """A sample is correct iff its value is > 0: acc True / 1, or verifier score +1.0 (wrong is -1.0 or 0)."""
    return float(value) > 0


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c of them correct) is correct.

    The unbiased estimator of Chen et al. (2021, HumanEval): ``1 - C(n-c, k) / C(n, k)``. With n == k it is
    the plain definition: 1.0 if any sample is correct, else 0.0.
    """
    if k < 1:
        raise ValueError(f"pass@k needs k >= 1, got k={k}")
    if n < k:
        raise ValueError(f"pass@k needs at least k samples per problem: n={n} < k={k}")
    if not 0 <= c <= n:
        raise ValueError(f"number of correct samples c={c} must be within [0, n={n}]")
    if n - c < k:  # every draw of k samples contains a correct one
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def avg_at_k(scores_per_problem: Sequence[Sequence[Any]]) -> float:
    """avg@k: mean accuracy over all samples of all problems (DAPO paper's AIME avg@32).

    ``scores_per_problem[i]`` holds problem i's per-sample results: booleans, 0/1 accuracies or +-1 verifier
    scores (a sample counts as correct iff its value is > 0). Every problem normally has the same number of
    samples k; if not, each problem weighs the same (mean over problems of the per-problem accuracy).
    """
    if not scores_per_problem:
        raise ValueError("avg@k of zero problems is undefined")
    per_problem = []
    for i, scores in enumerate(scores_per_problem):
        if len(scores) == 0:
            raise ValueError(f"problem {i} has no samples")
        per_problem.append(sum(_is_correct(s) for s in scores) / len(scores))
    return sum(per_problem) / len(per_problem)


def pass_at_k_of_scores(scores_per_problem: Sequence[Sequence[Any]], k: int) -> float:
    """Mean over problems of ``pass_at_k(n_i, c_i, k)`` (n_i samples of problem i, c_i correct)."""
    if not scores_per_problem:
        raise ValueError("pass@k of zero problems is undefined")
    values = [pass_at_k(len(s), sum(_is_correct(x) for x in s), k) for s in scores_per_problem]
    return sum(values) / len(values)


def metric_names(k: int) -> dict[str, str]:
    """Summary key -> name logged through ``Trainer.log`` (HF turns ``eval_x`` into ``eval/x`` in TB / W&B)."""
    return {
        f"avg@{k}": f"eval_avg@{k}",
        f"pass@{k}": f"eval_pass@{k}",
        "mean_length": "eval_mean_length",
        "truncated_ratio": "eval_truncated_ratio",
        "num_problems": "eval_num_problems",
        "runtime": "eval_runtime",
    }


def summarize(records: Sequence[dict], k: int) -> dict[str, float]:
    """Summary metrics of per-sample records (keys ``problem_index``, ``acc``, ``length``, ``truncated``).

    Returns ``avg@{k}``, ``pass@{k}``, ``mean_length`` (tokens, EOS included), ``truncated_ratio`` (samples
    that hit max_new_tokens without EOS), ``num_problems`` and ``num_samples``.
    """
    if not records:
        raise ValueError("no evaluation records to summarize")
    groups: dict[Any, list] = {}
    for r in records:
        groups.setdefault(r["problem_index"], []).append(r["acc"])
    scores = [groups[key] for key in sorted(groups)]
    return {
        f"avg@{k}": avg_at_k(scores),
        f"pass@{k}": pass_at_k_of_scores(scores, k),
        "mean_length": sum(r["length"] for r in records) / len(records),
        "truncated_ratio": sum(bool(r["truncated"]) for r in records) / len(records),
        "num_problems": len(groups),
        "num_samples": len(records),
    }


# ====================================================================== results
@dataclass
class EvalResult:
    """Per-sample records (sorted by problem, then sample) and the summary metrics (``summarize``)."""

    k: int
    metrics: dict[str, float]
    records: list[dict]
    settings: dict[str, Any] = field(default_factory=dict)
    runtime: float = 0.0

    @property
    def avg_at_k(self) -> float:
        return self.metrics[f"avg@{self.k}"]

    @property
    def pass_at_k(self) -> float:
        return self.metrics[f"pass@{self.k}"]

    def log_metrics(self) -> dict[str, float]:
        """The metrics under the names passed to ``Trainer.log`` (``eval_avg@4`` -> TensorBoard ``eval/avg@4``)."""
        values = {**self.metrics, "runtime": self.runtime}
        return {name: float(values[key]) for key, name in metric_names(self.k).items()}

    def write_jsonl(self, path: str, extra: dict | None = None) -> None:
        """One JSON object per sample (``RECORD_FIELDS`` plus ``extra``), written atomically."""
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            for r in self.records:
                f.write(json.dumps({**r, **(extra or {})}, ensure_ascii=False) + "\n")
        os.replace(tmp, path)

    def table(self, title: str | None = None) -> str:
        rows = [
            (f"avg@{self.k}", f"{self.avg_at_k:.4f}", "mean accuracy over all samples"),
            (f"pass@{self.k}", f"{self.pass_at_k:.4f}", f"problems with >= 1 correct of {self.k} samples"),
            ("mean_length", f"{self.metrics['mean_length']:.1f}", "tokens per completion (EOS included)"),
            ("truncated_ratio", f"{self.metrics['truncated_ratio']:.4f}", "completions cut at max_new_tokens"),
            ("num_problems", str(self.metrics["num_problems"]), ""),
            ("num_samples", str(self.metrics["num_samples"]), ""),
            ("wall_time_s", f"{self.runtime:.1f}", "generation + scoring"),
        ]
        width = max(len(r[0]) for r in rows)
        vwidth = max(len(r[1]) for r in rows)
        lines = [title] if title else []
        lines.append(f"{'metric'.ljust(width)}  {'value'.rjust(vwidth)}  note")
        lines.append(f"{'-' * width}  {'-' * vwidth}  {'-' * 4}")
        lines += [f"{n.ljust(width)}  {v.rjust(vwidth)}  {note}".rstrip() for n, v, note in rows]
        return "\n".join(lines)


# ====================================================================== generation
def _eos_token_ids(model, tokenizer) -> list[int]:
    ids = []
    for value in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if value is None:
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is not None and int(v) not in ids:
                ids.append(int(v))
    if not ids:
        raise ValueError("the tokenizer and the model's generation_config define no EOS token; cannot evaluate")
    return ids


def _generation_config(model, tokenizer, *, temperature, top_p, max_new_tokens, eos_ids, pad_id):
    """Sampling exactly as asked: the model's own generation_config (top_k, repetition_penalty, min_p, ... of
    some hub checkpoints) must not leak into the evaluation, so neutral values are set explicitly."""
    from transformers import GenerationConfig

    greedy = temperature == 0
    kwargs = dict(
        max_new_tokens=max_new_tokens,
        do_sample=not greedy,
        temperature=1.0 if greedy else float(temperature),
        top_p=1.0 if greedy else float(top_p),
        top_k=None if greedy else 0,
        typical_p=1.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        epsilon_cutoff=0.0,
        eta_cutoff=0.0,
        num_beams=1,
        num_return_sequences=1,
        pad_token_id=pad_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_ids,
        use_cache=True,
        disable_compile=True,
    )
    if getattr(getattr(model, "generation_config", None), "min_p", None) is not None:
        kwargs["min_p"] = 0.0
    return GenerationConfig(**kwargs)


def _left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


def _generate(model, rows: list[list[int]], index: list[int], *, pad_id: int, device, gen_config, share_prefix: bool):
    """Generate one completion per entry of ``index`` (a row of ``rows``: the prompt token ids).

    With ``share_prefix`` the prompts are run through the model once, and their KV cache (all prompt tokens but
    the last) is copied to each of their samples before ``generate`` continues from it: the k samples of a
    problem share one prompt prefill instead of k. Same outputs as plain ``generate`` (same logits, same random
    draws); on CPU the prefill is a large share of the cost (a 100-token prompt costs about as much as 100
    generated tokens per sample). The path is the same for every batch, so all processes run the same number
    of forward passes (sharded weights need that; only 1-token prompts, which no chat template produces, take
    the plain path).
    """
    ids, mask = _left_pad(rows, pad_id, device)
    select = torch.tensor(index, device=ids.device)
    if not share_prefix or min(len(r) for r in rows) < 2:  # a 1-token prompt has no prefix to share
        return model.generate(input_ids=ids[select], attention_mask=mask[select], generation_config=gen_config), ids
    from transformers import DynamicCache

    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # generate's own convention for left padding
    cache = DynamicCache(config=model.config)
    model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1], past_key_values=cache,
          use_cache=True)
    cache.batch_select_indices(select)
    out = model.generate(input_ids=ids[select], attention_mask=mask[select], past_key_values=cache,
                         generation_config=gen_config)
    return out, ids


def _model_device(model, accelerator) -> torch.device:
    if accelerator is not None and getattr(accelerator, "device", None) is not None:
        return torch.device(accelerator.device)
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _dist_info(accelerator) -> tuple[int, int, bool]:
    if accelerator is None:
        return 1, 0, True
    return int(accelerator.num_processes), int(accelerator.process_index), bool(accelerator.is_main_process)


def _gather_objects(values: list, num_processes: int) -> list:
    """All-gather a list from every process (concatenated in process order). A collective: all must call."""
    if num_processes == 1:
        return list(values)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        parts: list = [None] * dist.get_world_size()
        dist.all_gather_object(parts, list(values))
        return [v for part in parts for v in part]
    from accelerate.utils import gather_object

    return gather_object(values)


def _dataset_rows(dataset) -> tuple[list, list, list, list]:
    if hasattr(dataset, "column_names"):
        cols = dataset.column_names
        n = len(dataset)
        prompts = list(dataset["prompt"])
        answers = list(dataset["answer"])
        row_ids = list(dataset["row_id"]) if "row_id" in cols else [str(i) for i in range(n)]
        sources = list(dataset["data_source"]) if "data_source" in cols else [None] * n
    else:
        rows = list(dataset)
        prompts = [r["prompt"] for r in rows]
        answers = [r["answer"] for r in rows]
        row_ids = [r.get("row_id", str(i)) for i, r in enumerate(rows)]
        sources = [r.get("data_source") for r in rows]
    return prompts, answers, row_ids, sources


Scorer = Callable[[list[str], list[Any], list[str]], list[dict]]


def evaluate_model(
    model,
    tokenizer,
    dataset,
    *,
    k: int = 4,
    temperature: float = 1.0,
    top_p: float = 0.7,
    max_new_tokens: int = 1024,
    reward_mode: str = "dapo",
    batch_size: int = 32,
    seed: int = 0,
    accelerator=None,
    progress: bool = True,
    reward_timeout: float = 5.0,
    scorer: Scorer | None = None,
    desc: str = "eval",
    share_prompt_cache: bool = True,
) -> EvalResult:
    """Sample ``k`` completions per problem with ``model.generate`` and score them with the verifier.

    Args:
        model: a causal LM (already unwrapped from DDP/DeepSpeed); it is put in eval mode and its previous
            train/eval mode restored afterwards.
        tokenizer: its tokenizer; prompts are rendered with the chat template (``add_generation_prompt``)
            and left-padded.
        dataset: rows with ``prompt`` (chat messages or a string) and ``answer``, optionally ``row_id`` and
            ``data_source`` (``dataset_utils.load_dapo_dataset`` output, or a list of dicts).
        k: samples per problem. temperature: 0 means greedy decoding (all k samples then agree).
        top_p, max_new_tokens: sampling settings (reference validation: temperature 1.0, top_p 0.7).
        reward_mode: ``reward_function`` mode (dapo, strict_box, boxed, math_verify, last_number).
        batch_size: completions generated per ``generate`` call.
        seed: sampling seed (results are reproducible for the same seed, batch size and process count);
            the global RNG state is restored afterwards, so training randomness is not disturbed.
        accelerator: an ``accelerate.Accelerator`` (or ``PartialState``). With several processes every
            process evaluates a strided shard of the problems, the records are all-gathered and every
            process returns the same result. Every process must call this function.
        progress: tqdm bar on the main process.
        scorer: optional ``scorer(completions, answers, row_ids) -> [{"score", "acc", "pred"}, ...]``
            replacing ``reward_function.verify_batch`` (custom verifiers, tests).
        share_prompt_cache: compute each prompt's KV cache once and share it among its k samples (same
            results, less compute); set False for models whose cache cannot be copied per sample.
    """
    from reward_function import MODES, verify_batch

    if k < 1:
        raise ValueError(f"k (samples per problem) must be >= 1, got {k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_new_tokens is None or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if scorer is None and reward_mode not in MODES:
        raise ValueError(f"unknown reward_mode {reward_mode!r}; expected one of {', '.join(MODES)}")
    if temperature == 0 and k > 1:
        logger.warning("temperature 0 (greedy): the %d samples of each problem are identical; use k=1", k)

    start = time.perf_counter()
    prompts, answers, row_ids, sources = _dataset_rows(dataset)
    if not prompts:
        raise ValueError("the evaluation dataset is empty")
    num_processes, rank, is_main = _dist_info(accelerator)
    share_prefix = bool(share_prompt_cache and k > 1 and not getattr(model.config, "is_encoder_decoder", False))
    device = _model_device(model, accelerator)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = _eos_token_ids(model, tokenizer)
    gen_config = _generation_config(
        model, tokenizer, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
        eos_ids=eos_ids, pad_id=pad_id,
    )

    # Strided shard of the problems; each problem's prompt is tokenized once.
    mine = list(range(rank, len(prompts), num_processes))
    prompt_ids = {}
    templated = bool(getattr(tokenizer, "chat_template", None))  # a chat template adds its own BOS if any
    for p in mine or [0]:
        text = render_prompt(tokenizer, prompts[p])
        prompt_ids[p] = tokenizer(text, add_special_tokens=not templated)["input_ids"]
    samples = [(p, j) for p in mine for j in range(k)]
    batches = [samples[i : i + batch_size] for i in range(0, len(samples), batch_size)]
    # With sharded weights (FSDP, ZeRO-3) every forward pass is a collective: all processes must call
    # generate the same number of times. Processes with fewer batches run tiny dummy batches.
    num_batches = max(_gather_objects([len(batches)], num_processes))
    dummy = [(mine[0] if mine else 0, -1)]
    batches += [dummy] * (num_batches - len(batches))

    from tqdm.auto import tqdm

    # The bar of the main process counts its own shard.
    bar = tqdm(total=len(samples), desc=desc, unit="sample", disable=not (progress and is_main), dynamic_ncols=True)
    records: list[dict] = []
    was_training = model.training
    model.eval()
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    correct = 0
    try:
        with torch.random.fork_rng(devices=rng_devices), torch.no_grad():
            torch.manual_seed(seed * 1009 + rank)
            if device.type == "cuda":
                torch.cuda.manual_seed(seed * 1009 + rank)
            for batch in batches:
                unique = list(dict.fromkeys(p for p, _ in batch))
                where = {p: i for i, p in enumerate(unique)}
                out, ids = _generate(model, [prompt_ids[p] for p in unique], [where[p] for p, _ in batch],
                                     pad_id=pad_id, device=device, gen_config=gen_config, share_prefix=share_prefix)
                completion_ids = out[:, ids.shape[1] :].cpu()
                if batch is dummy:
                    continue
                texts, lengths, truncated = [], [], []
                eos = torch.isin(completion_ids, torch.tensor(eos_ids))
                for i in range(len(batch)):
                    hits = eos[i].nonzero()
                    length = int(hits[0]) + 1 if len(hits) else completion_ids.shape[1]
                    texts.append(tokenizer.decode(completion_ids[i, :length], skip_special_tokens=True))
                    lengths.append(length)
                    truncated.append(not len(hits))
                gts = [answers[p] for p, _ in batch]
                ids_ = [row_ids[p] for p, _ in batch]
                if scorer is not None:
                    results = scorer(texts, gts, ids_)
                else:
                    results = verify_batch(texts, gts, mode=reward_mode, timeout=reward_timeout, row_ids=ids_)
                for (p, j), text, length, trunc, res in zip(batch, texts, lengths, truncated, results, strict=True):
                    user = message_text(prompts[p], role="user")
                    records.append({
                        "row_id": row_ids[p],
                        "problem_index": p,
                        "sample_index": j,
                        "data_source": sources[p],
                        "problem": _problem_of(user),
                        "prompt": user,
                        "completion": text,
                        "answer": answers[p],
                        "pred": res.get("pred"),
                        "score": float(res["score"]),
                        "acc": bool(res["acc"]),
                        "length": length,
                        "truncated": trunc,
                    })
                    correct += bool(res["acc"])
                bar.update(len(batch))
                bar.set_postfix(acc=f"{correct / max(len(records), 1):.3f}")
    finally:
        model.train(was_training)
        bar.close()

    records = _gather_objects(records, num_processes)
    records.sort(key=lambda r: (r["problem_index"], r["sample_index"]))
    metrics = summarize(records, k)
    settings = dict(k=k, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                    reward_mode=reward_mode if scorer is None else "custom", batch_size=batch_size, seed=seed,
                    num_processes=num_processes)
    runtime = time.perf_counter() - start
    if num_processes > 1:  # every process reports the same (slowest) wall time
        runtime = max(_gather_objects([runtime], num_processes))
    return EvalResult(k=k, metrics=metrics, records=records, settings=settings, runtime=runtime)


def _problem_of(user_text: str) -> str:
    try:
        from dataset_utils import extract_problem

        return extract_problem(user_text)
    except Exception:  # the raw prompt is a fine fallback
        return user_text


# ====================================================================== in-training evaluation
class _EvalCallbackLogic:
    """Evaluate the trainer's current policy on a held-out set with ``evaluate_model``.

    When: before training (``eval_on_start``, step 0: the baseline), every ``every_steps`` optimizer steps
    (0: no periodic evaluation) and after the last step (``eval_on_end``); a step is never evaluated twice
    (also not after resuming, using ``state.log_history``).
    What: metrics through ``trainer.log`` as ``eval_avg@{k}``, ``eval_pass@{k}``, ``eval_mean_length``,
    ``eval_truncated_ratio``, ``eval_num_problems``, ``eval_runtime`` (TensorBoard / W&B: ``eval/avg@{k}``, ...),
    and the per-sample records in ``<output_dir>/eval/step_<N>.jsonl``.
    Set ``callback.trainer = trainer`` after building the trainer.
    """

    def __init__(
        self,
        dataset,
        tokenizer,
        *,
        every_steps: int = 0,
        k: int = 4,
        temperature: float = 1.0,
        top_p: float = 0.7,
        max_new_tokens: int = 1024,
        reward_mode: str = "dapo",
        reward_timeout: float = 5.0,
        batch_size: int = 32,
        seed: int = 0,
        output_dir: str | None = None,
        eval_on_start: bool = True,
        eval_on_end: bool = True,
        dataset_name: str | None = None,
        scorer: Scorer | None = None,
    ):
        if every_steps < 0:
            raise ValueError(f"eval_every_steps must be >= 0, got {every_steps}")
        self.dataset = dataset
        self.tokenizer = tokenizer
        self.every_steps = every_steps
        self.k = k
        self.eval_kwargs = dict(k=k, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                                reward_mode=reward_mode, reward_timeout=reward_timeout, batch_size=batch_size,
                                seed=seed, scorer=scorer)
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


_EVAL_CALLBACK_CLASS = None


def _eval_callback_class():
    """``EvalCallback`` = ``_EvalCallbackLogic`` + ``transformers.TrainerCallback``, built on first use: importing
    TrainerCallback costs seconds (it pulls in the trainer stack), which the command line does not need."""
    global _EVAL_CALLBACK_CLASS
    if _EVAL_CALLBACK_CLASS is None:
        from transformers import TrainerCallback

        _EVAL_CALLBACK_CLASS = type(
            "EvalCallback", (_EvalCallbackLogic, TrainerCallback),
            {"__doc__": _EvalCallbackLogic.__doc__, "__module__": __name__},
        )
    return _EVAL_CALLBACK_CLASS


def __getattr__(name: str):
    if name == "EvalCallback":
        return _eval_callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_eval_dataset(name: str, *, split: str = "test", template: str = "dapo", system_prompt: str | None = None,
                      max_problems: int | None = None, prompt_column: str | None = None,
                      answer_column: str | None = None):
    """The first ``max_problems`` problems of an evaluation set (no shuffling), via ``load_dapo_dataset``."""
    from dataset_utils import load_dapo_dataset

    return load_dapo_dataset(name, split=split, prompt_column=prompt_column, answer_column=answer_column,
                             template=template, system_prompt=system_prompt, max_samples=max_problems, shuffle=False)


def make_eval_callback(script_args, training_args, tokenizer):
    """Build the in-training evaluation from ``DAPOScriptArguments`` / ``DAPOConfig``.

    The evaluation set is loaded here, before the model, so a bad name fails early. The training set's
    ``--prompt_column`` / ``--answer_column`` are only used if automatic column detection fails on it.
    Evaluates before training, every ``--eval_every_steps`` optimizer steps (0: only before and after
    training) and after the last step.
    """
    from dataset_utils import DatasetError

    options = dict(
        split=getattr(script_args, "dataset_test_split", None) or "test",
        template=script_args.prompt_template,
        system_prompt=script_args.system_prompt,
        max_problems=script_args.eval_max_problems,
    )
    try:
        dataset = load_eval_dataset(script_args.eval_dataset, **options)
    except DatasetError as first:
        columns = dict(prompt_column=script_args.prompt_column, answer_column=script_args.answer_column)
        if not any(columns.values()):
            raise
        try:
            dataset = load_eval_dataset(script_args.eval_dataset, **options, **columns)
        except DatasetError:
            raise first from None
    max_new_tokens = script_args.eval_max_new_tokens or training_args.max_completion_length
    _validate_sampling(script_args.eval_num_samples, script_args.eval_temperature, script_args.eval_top_p,
                       max_new_tokens, script_args.eval_batch_size, prefix="--eval_")
    logger.info("evaluation set %s: %d problems x %d samples, every %s steps", script_args.eval_dataset,
                len(dataset), script_args.eval_num_samples, script_args.eval_every_steps or "(start/end only)")
    return _eval_callback_class()(
        dataset,
        tokenizer,
        every_steps=script_args.eval_every_steps,
        k=script_args.eval_num_samples,
        temperature=script_args.eval_temperature,
        top_p=script_args.eval_top_p,
        max_new_tokens=max_new_tokens,
        reward_mode=training_args.reward_mode,
        reward_timeout=getattr(training_args, "reward_timeout", 5.0),
        batch_size=script_args.eval_batch_size,
        seed=training_args.seed,
        output_dir=training_args.output_dir,
        dataset_name=script_args.eval_dataset,
    )


def _validate_sampling(k, temperature, top_p, max_new_tokens, batch_size, prefix="--") -> None:
    errors = []
    names = {"k": "num_samples", "max_new_tokens": "max_new_tokens"} if prefix == "--eval_" else {}
    if k < 1:
        errors.append(f"{prefix}{names.get('k', 'k')} must be >= 1, got {k}")
    if temperature < 0:
        errors.append(f"{prefix}temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0 < top_p <= 1:
        errors.append(f"{prefix}top_p must be in (0, 1], got {top_p}")
    if max_new_tokens is None or max_new_tokens < 1:
        errors.append(f"{prefix}max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        errors.append(f"{prefix}batch_size must be >= 1, got {batch_size}")
    if errors:
        raise ValueError("Invalid evaluation settings:\n  - " + "\n  - ".join(errors))


# ====================================================================== command line
@dataclass
class EvalArguments:
    """Evaluate a model on a math set: k samples per problem, avg@k / pass@k, every completion to JSONL."""

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
    prompt_column: str | None = field(default=None, metadata={"help": "Problem column (auto-detected)."})
    answer_column: str | None = field(default=None, metadata={"help": "Answer column (auto-detected)."})
    template: str = field(
        default="dapo", metadata={"help": "Prompt template: dapo (Answer: line), boxed, none, or a string with {problem}."}
    )
    system_prompt: str | None = field(default=None, metadata={"help": "Optional system message."})
    max_problems: int | None = field(default=None, metadata={"help": "Evaluate the first N problems (default: all)."})
    k: int = field(default=4, metadata={"help": "Samples per problem (avg@k, pass@k). DAPO's AIME number is k=32."})
    temperature: float = field(
        default=1.0, metadata={"help": "Sampling temperature; 0 = greedy (reference validation: 1.0)."}
    )
    top_p: float = field(default=0.7, metadata={"help": "Nucleus sampling (reference validation: 0.7)."})
    max_new_tokens: int = field(default=1024, metadata={"help": "Maximum completion length in tokens."})
    reward_mode: str = field(
        default="dapo",
        metadata={"help": "Verifier: dapo (Answer: line, reference), strict_box, boxed, math_verify, last_number."},
    )
    reward_timeout: float = field(default=5.0, metadata={"help": "Per-completion time limit of math_verify (s)."})
    batch_size: int = field(default=32, metadata={"help": "Completions generated per generate() call."})
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


class EvalCLIError(ValueError):
    """A bad command-line argument, reported before any weights load."""


def _adapter_base(path: str) -> str | None:
    config = os.path.join(path, "adapter_config.json")
    if not os.path.isfile(config):
        return None
    with open(config, encoding="utf-8") as f:
        base = json.load(f).get("base_model_name_or_path")
    if not base:
        raise EvalCLIError(f"{config} names no base_model_name_or_path; cannot load the adapter's base model.")
    return base


def check_model(name: str) -> dict:
    """Cheap checks (no weights) of ``--model``; returns {"kind", "path", "adapter", "base"}."""
    import model_utils

    def check(ref: str, what: str = "") -> str:
        try:
            return model_utils.check_model_reference(ref)
        except model_utils.ModelResolutionError as exc:
            raise EvalCLIError(what + str(exc).replace("--model_name_or_path", "--model")) from None

    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded) and not any(
        os.path.isfile(os.path.join(expanded, f)) for f in ("config.json", "adapter_config.json")
    ):
        checkpoints = sorted(
            (d for d in os.listdir(expanded) if d.startswith("checkpoint-") and d.split("-")[-1].isdigit()),
            key=lambda d: int(d.split("-")[-1]),
        )
        if checkpoints:
            raise EvalCLIError(
                f"--model {name!r} is a training output directory without a final model; it holds "
                f"{', '.join(checkpoints)}. Pass one checkpoint, e.g. --model {os.path.join(name, checkpoints[-1])}"
            )
    if os.path.isdir(expanded):
        name = expanded
    kind = check(name)
    base = _adapter_base(name) if os.path.isdir(name) else None
    if base is not None:
        check(base, f"the base model {base!r} of the PEFT adapter {name!r}: ")
        import importlib.util

        if importlib.util.find_spec("peft") is None:
            raise EvalCLIError(f"{name} is a PEFT adapter; install peft (pip install peft) to evaluate it.")
    return {"kind": kind, "path": name, "adapter": base is not None, "base": base}


def _torch_dtype(name: str | None, device: str):
    if name is None:
        return torch.float32 if device == "cpu" else "auto"
    if name == "auto":
        return "auto"
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise EvalCLIError(f"--dtype {name!r}: use float32, bfloat16, float16 or auto.")
    return value


def load_model_and_tokenizer(info: dict, *, dtype=None, device: str = "cpu", trust_remote_code: bool = False):
    """Load what ``check_model`` accepted: a model dir / hub id / embedded model, or base + PEFT adapter."""
    import model_utils
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
        raise EvalCLIError(f"cannot load a tokenizer for {info['path']!r}: {last}")
    if info["adapter"]:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, info["path"])
        model = model.merge_and_unload()  # plain model: faster generation
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer


def run_cli(args: EvalArguments) -> EvalResult:
    from dataset_utils import DatasetError
    from reward_function import MODES

    # 1. Everything checkable without weights: settings, dataset, model reference.
    if args.reward_mode not in MODES:
        raise EvalCLIError(f"--reward_mode {args.reward_mode!r} is not one of {', '.join(MODES)}.")
    _validate_sampling(args.k, args.temperature, args.top_p, args.max_new_tokens, args.batch_size)
    if args.max_problems is not None and args.max_problems < 1:
        raise EvalCLIError(f"--max_problems must be >= 1, got {args.max_problems}")
    try:
        dataset = load_eval_dataset(args.dataset, split=args.split, template=args.template,
                                    system_prompt=args.system_prompt, max_problems=args.max_problems,
                                    prompt_column=args.prompt_column, answer_column=args.answer_column)
    except DatasetError as exc:
        raise EvalCLIError(f"--dataset {args.dataset!r}: {str(exc).replace('--dataset_name', '--dataset')}") from None
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
        model, tokenizer, dataset, k=args.k, temperature=args.temperature, top_p=args.top_p,
        max_new_tokens=args.max_new_tokens, reward_mode=args.reward_mode, reward_timeout=args.reward_timeout,
        batch_size=args.batch_size, seed=args.seed, accelerator=state if state.num_processes > 1 else None,
        progress=not args.no_progress,
    )
    if state.is_main_process:
        result.settings.update(model=args.model, dataset=args.dataset, template=args.template,
                               num_problems=len(dataset))
        if args.output:
            result.write_jsonl(args.output)
            summary_path = (args.output[: -len(".jsonl")] if args.output.endswith(".jsonl") else args.output)
            with open(summary_path + ".summary.json", "w", encoding="utf-8") as f:
                json.dump({"metrics": result.metrics, "runtime_s": result.runtime, "settings": result.settings},
                          f, indent=2)
        title = (f"{args.model} on {args.dataset}: {result.metrics['num_problems']} problems x {args.k} samples, "
                 f"temperature {args.temperature}, top_p {args.top_p}, max_new_tokens {args.max_new_tokens}, "
                 f"reward {args.reward_mode}")
        print(result.table(title), flush=True)
        if args.output:
            print(f"completions: {args.output}", flush=True)
    return result


def make_parser():
    from transformers import HfArgumentParser

    from dataset_utils import describe_bundled

    parser = HfArgumentParser(EvalArguments, description=EvalArguments.__doc__)
    parser.epilog = "Bundled datasets (offline):\n" + describe_bundled()
    import argparse

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = make_parser()
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    try:
        run_cli(args)
    except EvalCLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # settings errors from _validate_sampling
        if str(exc).startswith("Invalid evaluation settings"):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
