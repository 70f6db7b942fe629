"""Evaluate a math reasoning model: k sampled completions per problem, scored by the training verifier.

The metrics: avg@k (mean accuracy over all samples, the DAPO paper's AIME avg@32) and pass@k (the unbiased
estimate that at least one of k samples is correct). ``evaluate_model`` generates and scores; the in-training
evaluation (eval_callback.py) and the command line (eval_cli.py) both call it, so their numbers agree.
See docs/evaluation.md for the definitions and the names logged to TensorBoard / W&B.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

import config_checks
from chat_text import message_text, render_prompt
from shared_settings import EVALUATE_MODEL_KEYWORDS, EvalSettings, PromptSettings

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
    k: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    reward_mode: str,
    batch_size: int,
    seed: int,
    accelerator=None,
    progress: bool = True,
    reward_timeout: float = 5.0,
    scorer: Scorer | None = None,
    desc: str = "eval",
    share_prompt_cache: bool = True,
) -> EvalResult:
    """Sample ``k`` completions per problem with ``model.generate`` and score them with the verifier.

    The sampling settings have no defaults here: they come from ``shared_settings.EvalSettings``
    (``**settings.evaluate_model_kwargs()``), which holds them for the training flags and the command line.

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
    from reward_function import verify_batch

    given = EvalSettings(eval_num_samples=k, eval_temperature=temperature, eval_top_p=top_p,
                         eval_max_new_tokens=max_new_tokens, eval_batch_size=batch_size)
    problems = config_checks.check_eval_settings(given, names=EVALUATE_MODEL_KEYWORDS)
    if scorer is None:
        problems += config_checks.check_reward_mode(reward_mode, flag="reward_mode")
    config_checks.raise_if(problems)
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


def load_eval_dataset(name: str, *, split: str = "test", prompt: PromptSettings | None = None,
                      max_problems: int | None = None):
    """The first ``max_problems`` problems of an evaluation set (no shuffling), via ``load_dapo_dataset``."""
    from dataset_utils import load_dapo_dataset

    prompt = prompt or PromptSettings()
    return load_dapo_dataset(name, split=split, prompt_column=prompt.prompt_column, answer_column=prompt.answer_column,
                             template=prompt.prompt_template, system_prompt=prompt.system_prompt,
                             max_samples=max_problems, shuffle=False)
