"""The DAPO reward for TRL: the math verifier rules, the +-1 correctness reward, the overlong shaping.

Public API
----------
compute_score(solution_str, ground_truth, strict_box_verify=False) -> dict
    verl's "math_dapo" verifier: {"score": +1.0/-1.0, "acc": bool, "pred": str}.
verify(completion, ground_truth, mode="dapo", timeout=5.0) -> dict
verify_batch(completions, ground_truths, mode="dapo", timeout=5.0, row_ids=None, pool=None,
             batch_timeout=None) -> list[dict]
    Same keys plus "timeout" (math_verify hit its hard per-item limit, or the batch its time
    budget) and "bad_ground_truth".
overlong_penalty(length_tokens, max_completion_length, overlong_buffer_len, penalty_factor=1.0) -> float
make_correctness_reward(mode="dapo", answer_column="answer", timeout=5.0)   # __name__ "correctness"
make_overlong_reward(max_completion_length, overlong_buffer_len, penalty_factor=1.0)  # "overlong_penalty"

Modes: "dapo" (reference Minerva mode), "strict_box" (reference strict mode), "boxed"
(last ``\\boxed{}`` of the whole completion, Minerva-normalised on both sides),
"math_verify" (symbolic equivalence with HF math-verify 0.9: correct if the "dapo" rule
says so, else the last "Answer:" line of the last 300 characters, parsed as LaTeX then as
plain text, or without such a line the LaTeX / \\boxed answer in those 300 characters, is
math_verify.verify-equal to the gold; runs in worker processes with a hard per-item time
limit (verifier_pool.py); pred is then math-verify's extracted string).

Ground truths: str is used as is; int and integral float (3.0, e.g. from a pandas column
turned float by a missing value) become "3"; other finite floats str(x); None, bool,
NaN/inf, other types, blank strings and strings that normalise to "" are *bad*: score
-1.0, ``bad_ground_truth`` True, counted and warned about by row. The reference would crash
on non-strings (and, in strict mode, compare "42" == 42 -> always wrong); this is the only
place where results can differ from it.
"""

from __future__ import annotations

import logging
import math
import numbers
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import config_checks
from chat_text import message_text
from math_normalize import (
    ANSWER_RE,
    INVALID,
    STRICT_TAIL_CHARS,
    TAIL_CHARS,
    last_boxed_only_string,
    normalize_final_answer,
    remove_boxed,
)
from verifier_pool import ERROR_PRED, MathVerifyPool, get_math_verify_pool

logger = logging.getLogger("dapo.reward")

MODES = ("dapo", "strict_box", "boxed", "math_verify", "last_number")
# "last_number" mode: a lenient verifier for very small models that rarely write an "Answer:" line
# (the embedded demo): the last number in the final TAIL_CHARS characters is the prediction.
LAST_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
# "boxed" mode: characters after the last \boxed{ searched for its closing brace. An
# answer longer than this is not an answer; the bound keeps megabyte inputs cheap.
BOXED_MAX_CHARS = 10_000


# --------------------------------------------------------------------------- helpers
def _coerce_ground_truth(gt: Any) -> str | None:
    """String to compare against, or None for a bad ground truth (see module doc)."""
    if isinstance(gt, str):
        return gt if gt.strip() else None
    if isinstance(gt, bool) or gt is None:
        return None
    if isinstance(gt, numbers.Integral):
        return str(int(gt))
    if isinstance(gt, numbers.Real):
        x = float(gt)
        if not math.isfinite(x):
            return None
        return str(int(x)) if x.is_integer() else str(x)
    return None


@lru_cache(maxsize=65536)
def _normalized_gt(gt: str) -> str:
    return normalize_final_answer(gt)


def _result(correct: bool, pred: str, timeout: bool = False, bad_gt: bool = False) -> dict:
    return {
        "score": 1.0 if correct else -1.0,
        "acc": bool(correct),
        "pred": pred,
        "timeout": timeout,
        "bad_ground_truth": bad_gt,
    }


def _score_rule(text: str, gt: str | None, mode: str) -> dict:
    """Score one completion in a non-math_verify mode. ``gt`` is already coerced."""
    if mode == "dapo":
        matches = ANSWER_RE.findall(text[-TAIL_CHARS:])
        pred = normalize_final_answer(matches[-1] if matches else INVALID)
    elif mode == "strict_box":
        # Reference: cut to 300, then to the last 100 characters; raw comparison.
        box = last_boxed_only_string(text[-TAIL_CHARS:][-STRICT_TAIL_CHARS:])
        pred = remove_boxed(box) if box is not None else INVALID
        if gt is None or not _normalized_gt(gt):
            return _result(False, pred, bad_gt=True)
        # No box is wrong, whatever the ground truth (the reference compares None there; a ground truth that
        # is literally "[INVALID]" must not match the placeholder).
        return _result(box is not None and pred == gt, pred)
    found = True
    if mode == "last_number":
        numbers_found = LAST_NUMBER_RE.findall(text[-TAIL_CHARS:])
        found = bool(numbers_found)
        pred = normalize_final_answer(numbers_found[-1].replace(",", "").rstrip(".")) if found else INVALID
    elif mode == "boxed":
        box = last_boxed_only_string(text, max_scan=BOXED_MAX_CHARS)
        found = box is not None
        pred = normalize_final_answer(remove_boxed(box)) if found else INVALID
    elif mode != "dapo":
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if gt is None:
        return _result(False, pred, bad_gt=True)
    norm_gt = _normalized_gt(gt)
    if not norm_gt:
        return _result(False, pred, bad_gt=True)
    # "dapo" keeps the reference's Minerva rule to the letter (it compares the "[INVALID]" placeholder too).
    return _result(found and pred == norm_gt, pred)


def _safe_score_rule(completion: Any, ground_truth: Any, mode: str) -> dict:
    try:
        return _score_rule(message_text(completion, role="assistant"), _coerce_ground_truth(ground_truth), mode)
    except Exception:  # belt and braces: a reward must never raise on model output
        logger.exception("reward: unexpected error while scoring (scored -1)")
        return _result(False, ERROR_PRED)


# --------------------------------------------------------------------------- reference API
def compute_score(solution_str: str, ground_truth: Any, strict_box_verify: bool = False) -> dict:
    """verl ``math_dapo.compute_score``: {"score": +1.0/-1.0, "acc": bool, "pred": str}.

    strict mode's pred is "[INVALID]" when there is no box (verl main returns None there;
    the score is the same)."""
    r = _safe_score_rule(solution_str, ground_truth, "strict_box" if strict_box_verify else "dapo")
    return {"score": r["score"], "acc": r["acc"], "pred": r["pred"]}


def verify(completion: Any, ground_truth: Any, mode: str = "dapo", timeout: float = 5.0) -> dict:
    """Score one completion (str or chat list). Keys: score, acc, pred, timeout, bad_ground_truth."""
    return verify_batch([completion], [ground_truth], mode=mode, timeout=timeout)[0]


def verify_batch(
    completions: Sequence[Any],
    ground_truths: Sequence[Any],
    mode: str = "dapo",
    timeout: float = 5.0,
    row_ids: Sequence[Any] | None = None,
    pool: MathVerifyPool | None = None,
    batch_timeout: float | None = None,
) -> list[dict]:
    """Score a batch; math_verify items share one worker pool (the default one if None).

    A warning naming the row (``row_ids[i]`` if given, else the index) is logged once per
    bad ground truth."""
    config_checks.raise_if(config_checks.check_reward_mode(mode, flag="mode"))
    if len(completions) != len(ground_truths):
        raise ValueError(f"{len(completions)} completions but {len(ground_truths)} ground truths")
    if mode != "math_verify":
        results = [_safe_score_rule(c, g, mode) for c, g in zip(completions, ground_truths, strict=True)]
    else:
        results = _verify_math_batch(completions, ground_truths, timeout, pool, batch_timeout)
    _warn_bad_rows(results, ground_truths, row_ids)
    return results


def _warn_bad_rows(results: list[dict], ground_truths: Sequence[Any], row_ids: Sequence[Any] | None) -> None:
    seen = set()
    for i, r in enumerate(results):
        if not r["bad_ground_truth"]:
            continue
        row = row_ids[i] if row_ids is not None and i < len(row_ids) else i
        key = f"{'row_id' if row_ids is not None else 'index'}={row!r}"
        if key in seen:
            continue
        seen.add(key)
        gt = ground_truths[i]
        logger.warning("reward: bad ground truth %r (%s) for %s: scored -1", gt, type(gt).__name__, key)


# --------------------------------------------------------------------------- math_verify
def _verify_math_batch(completions, ground_truths, timeout, pool, batch_timeout=None) -> list[dict]:
    results: list[dict | None] = [None] * len(completions)
    tasks, task_index = [], []
    for i, (c, g) in enumerate(zip(completions, ground_truths, strict=True)):
        try:
            tail = message_text(c, role="assistant")[-TAIL_CHARS:]
            gt = _coerce_ground_truth(g)
            found = ANSWER_RE.findall(tail)
            answer = found[-1] if found else None
            pred = normalize_final_answer(answer) if answer is not None else INVALID
            if gt is None or not _normalized_gt(gt):
                results[i] = _result(False, pred, bad_gt=True)
            elif answer is not None and pred == _normalized_gt(gt):
                results[i] = _result(True, pred)  # the exact DAPO match needs no sympy
            else:
                # With an "Answer:" line, parse that line; else let math-verify search the tail.
                tasks.append((gt, answer if answer is not None else tail, answer is not None))
                task_index.append(i)
        except Exception:
            logger.exception("reward: unexpected error while preparing math_verify item (scored -1)")
            results[i] = _result(False, ERROR_PRED)
    if tasks:
        pool = pool or get_math_verify_pool()
        for i, (ok, pred, timed_out) in zip(task_index, pool.run(tasks, timeout, batch_timeout), strict=True):
            results[i] = _result(ok, pred, timeout=timed_out)
    return results  # type: ignore[return-value]


# --------------------------------------------------------------------------- TRL rewards
class CorrectnessReward:
    """TRL reward function: +1.0 / -1.0 per completion (a callable class, so it pickles)."""

    __name__ = "correctness"

    def __init__(
        self,
        mode: str = "dapo",
        answer_column: str = "answer",
        timeout: float = 5.0,
        batch_timeout: float | None = None,
    ):
        config_checks.raise_if(config_checks.check_reward_mode(mode, flag="mode"))
        self.mode, self.answer_column, self.timeout, self.batch_timeout = mode, answer_column, timeout, batch_timeout

    def __call__(
        self,
        prompts: list | None = None,
        completions: list | None = None,
        completion_ids: list | None = None,
        log_extra: Callable[[str, list], None] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        **kwargs: Any,
    ) -> list[float]:
        completions = list(completions or [])
        gts = kwargs.get(self.answer_column)
        if gts is None:
            logger.warning("reward: no %r column among %s", self.answer_column, sorted(kwargs))
            gts = [None] * len(completions)
        row_ids = kwargs.get("row_id")
        results = verify_batch(
            completions, list(gts), self.mode, self.timeout, row_ids=row_ids, batch_timeout=self.batch_timeout
        )
        if log_extra is not None:
            log_extra("answer", [None if g is None else _printable(str(g)) for g in gts])
            log_extra("pred", [_printable(r["pred"]) for r in results])
            log_extra("acc", [r["acc"] for r in results])
        if log_metric is not None:
            if self.mode == "math_verify":
                log_metric("reward/verifier_timeouts", float(sum(r["timeout"] for r in results)))
            log_metric("reward/bad_ground_truth", float(sum(r["bad_ground_truth"] for r in results)))
        return [r["score"] for r in results]


def _printable(s: str) -> str:
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:  # lone surrogates would break JSON / wandb logging
        return s.encode("utf-8", "replace").decode("utf-8")


def make_correctness_reward(
    mode: str = "dapo", answer_column: str = "answer", timeout: float = 5.0, batch_timeout: float | None = None
) -> CorrectnessReward:
    return CorrectnessReward(mode=mode, answer_column=answer_column, timeout=timeout, batch_timeout=batch_timeout)


def overlong_penalty(
    length_tokens: int, max_completion_length: int, overlong_buffer_len: int, penalty_factor: float = 1.0
) -> float:
    """DAPO soft overlong punishment: min(-(L - (max - buf)) / buf * factor, 0)."""
    if overlong_buffer_len <= 0:
        raise ValueError("overlong_buffer_len must be positive")
    expected_len = max_completion_length - overlong_buffer_len
    exceed_len = length_tokens - expected_len
    return float(min(-exceed_len / overlong_buffer_len * penalty_factor, 0.0)) + 0.0  # + 0.0: no -0.0


class OverlongReward:
    """TRL reward function adding the DAPO overlong penalty (0 down to -factor).

    Length = ``len(completion_ids[i])``. TRL's completion_ids include the EOS token when
    generation stopped on it (GRPOTrainer._generate_single_turn keeps positions
    ``<= first EOS``; vLLM returns the EOS among the generated tokens), which is verl's
    ``valid_response_length``. Built on TRL's ``get_soft_overlong_punishment``: for
    lengths up to max_completion_length its formula, (max - buf - L) / buf, is the
    reference's with factor 1.0 (bit for bit), so we scale it by the factor. Above the
    maximum TRL returns a flat -1 while the reference keeps going linearly; TRL never
    generates past max_completion_length, but we use the reference formula there anyway.
    """

    __name__ = "overlong_penalty"

    def __init__(self, max_completion_length: int, overlong_buffer_len: int, penalty_factor: float = 1.0):
        if not 0 < overlong_buffer_len <= max_completion_length:
            raise ValueError("need 0 < overlong_buffer_len <= max_completion_length")
        if penalty_factor < 0:
            raise ValueError("penalty_factor must be >= 0")
        from trl.rewards import get_soft_overlong_punishment

        self.max_completion_length = max_completion_length
        self.overlong_buffer_len = overlong_buffer_len
        self.penalty_factor = penalty_factor
        self._trl = get_soft_overlong_punishment(max_completion_length, overlong_buffer_len)

    def __call__(self, completion_ids: list | None = None, **kwargs: Any) -> list[float]:
        completion_ids = list(completion_ids or [])
        base = self._trl(completion_ids)
        out = []
        for ids, b in zip(completion_ids, base, strict=True):
            n = len(ids)
            if n <= self.max_completion_length:
                out.append(b * self.penalty_factor + 0.0)
            else:
                out.append(
                    overlong_penalty(n, self.max_completion_length, self.overlong_buffer_len, self.penalty_factor)
                )
        return out


def make_overlong_reward(
    max_completion_length: int, overlong_buffer_len: int, penalty_factor: float = 1.0
) -> OverlongReward:
    return OverlongReward(max_completion_length, overlong_buffer_len, penalty_factor)
