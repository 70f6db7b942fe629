"""Rule-based math rewards for DAPO training with TRL (issue #4).

Public API
----------
compute_score(solution_str, ground_truth, strict_box_verify=False) -> dict
    verl's "math_dapo" verifier: {"score": +1.0/-1.0, "acc": bool, "pred": str}.
verify(completion, ground_truth, mode="dapo", timeout=5.0) -> dict
verify_batch(completions, ground_truths, mode="dapo", timeout=5.0, row_ids=None, pool=None,
             batch_timeout=None) -> list[dict]
    Same keys plus "timeout" (math_verify hit its hard per-item limit, or the batch its time
    budget) and "bad_ground_truth".
MathVerifyPool, get_math_verify_pool(), shutdown_math_verify_pool()
overlong_penalty(length_tokens, max_completion_length, overlong_buffer_len, penalty_factor=1.0) -> float
make_correctness_reward(mode="dapo", answer_column="answer", timeout=5.0)   # __name__ "correctness"
make_overlong_reward(max_completion_length, overlong_buffer_len, penalty_factor=1.0)  # "overlong_penalty"

Modes: "dapo" (reference Minerva mode), "strict_box" (reference strict mode), "boxed"
(last ``\\boxed{}`` of the whole completion, Minerva-normalised on both sides),
"math_verify" (symbolic equivalence with HF math-verify 0.9: correct if the "dapo" rule
says so, else the last "Answer:" line of the last 300 characters, parsed as LaTeX then as
plain text, or without such a line the LaTeX / \\boxed answer in those 300 characters, is
math_verify.verify-equal to the gold; runs in worker processes with a hard per-item time
limit; pred is then math-verify's extracted string).

Ground truths: str is used as is; int and integral float (3.0, e.g. from a pandas column
turned float by a missing value) become "3"; other finite floats str(x); None, bool,
NaN/inf, other types, blank strings and strings that normalise to "" are *bad*: score
-1.0, ``bad_ground_truth`` True, counted and warned about by row. The reference would crash
on non-strings (and, in strict mode, compare "42" == 42 -> always wrong); this is the only
place where results can differ from it.
"""

from __future__ import annotations

import atexit
import logging
import math
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import numbers
import os
import re
import threading
import time
from collections import deque
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

logger = logging.getLogger("dapo.reward")

MODES = ("dapo", "strict_box", "boxed", "math_verify", "last_number")
# "last_number" mode: a lenient verifier for very small models that rarely write an "Answer:" line
# (the embedded demo): the last number in the final TAIL_CHARS characters is the prediction.
LAST_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
TIMEOUT_PRED = "[TIMEOUT]"
ERROR_PRED = "[ERROR]"
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


def _die_with(owner_pid: int) -> None:
    """End this worker as soon as the process that owns the pool is gone, however it died.

    A worker's parent is the forkserver, which outlives a SIGKILLed training process while its
    children run; a worker inside sympy would then go on for as long as the item takes. So: SIGKILL
    on the forkserver's death (PR_SET_PDEATHSIG), and a thread waiting on the owner's pidfd."""
    import signal

    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except Exception:  # not Linux
        pass

    def watch():
        try:
            fd = os.pidfd_open(owner_pid)
        except ProcessLookupError:
            os.kill(os.getpid(), signal.SIGKILL)
        except (AttributeError, OSError):  # no pidfd (old kernel / not Linux): poll
            while True:
                time.sleep(0.5)
                try:
                    os.kill(owner_pid, 0)
                except ProcessLookupError:
                    os.kill(os.getpid(), signal.SIGKILL)
                except OSError:
                    pass
        import select

        select.select([fd], [], [])  # readable once the owner has exited; waits without the GIL
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="math-verify-owner-watch").start()


def _mv_worker_main(conn, owner_pid: int | None = None) -> None:
    """Worker process: answers (task_id, gold, text, is_answer_line) with (task_id, ok, pred)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    if owner_pid is not None:
        _die_with(owner_pid)
    try:
        import math_verify
        import math_verify.grader
        import math_verify.parser

        # The parent enforces the time limit (kills this process): no SIGALRM in here.
        math_verify.parser.TIMEOUT_WARNING_SHOWN = True
        math_verify.grader.TIMEOUT_WARNING_SHOWN = True
        logging.getLogger("math_verify").setLevel(logging.CRITICAL)

        from latex2sympy2_extended import NormalizationConfig

        def parse(s: str, **kw):
            return math_verify.parse(s, parsing_timeout=None, **kw)

        def parse_wrapped(s: str):  # \frac12, 2^{1/2}, \sqrt{2} only parse as LaTeX
            return parse("$" + s.strip().strip("$") + "$")

        # For free text, as TRL's accuracy_reward: LaTeX / \boxed only, no bare numbers
        # (which would turn 3\pi into 3 or (1, 2) into 2).
        tail_config = [
            math_verify.LatexExtractionConfig(
                normalization_config=NormalizationConfig(units=True),
                boxed_match_priority=0,
                try_extract_without_anchor=False,
            )
        ]

        @lru_cache(maxsize=4096)
        def parse_gold(gold: str):
            if "$" not in gold and "\\boxed" not in gold:
                parsed = parse_wrapped(gold)
                if parsed:
                    return parsed
            return parse(gold)

        def check(gold: str, text: str, is_answer: bool):
            gold_parsed = parse_gold(gold)
            if is_answer:  # the text of an "Answer:" line: LaTeX first, then plain numbers
                pred_parsed = parse_wrapped(text) or parse(text)
            else:
                pred_parsed = parse(text, extraction_config=tail_config, extraction_mode="first_match")
            if not pred_parsed:
                return False, INVALID
            pred = pred_parsed[-1] if isinstance(pred_parsed[-1], str) else str(pred_parsed[0])
            if not gold_parsed:
                return False, pred
            return bool(math_verify.verify(gold_parsed, pred_parsed, timeout_seconds=None)), pred

        check("1", "\\boxed{1}", False)
        check("1", "1", True)  # warm the lazy imports and regex caches before "ready"
    except BaseException as e:  # noqa: BLE001 - report anything to the parent
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        task_id, gold, text, is_answer = msg
        try:
            ok, pred = check(gold, text, is_answer)
        except BaseException:  # noqa: BLE001 - RecursionError, sympy internals, ...
            ok, pred = False, ERROR_PRED
        try:
            conn.send((task_id, ok, pred))
        except Exception:
            conn.send((task_id, ok, ERROR_PRED))  # e.g. an unpicklable pred


def _default_start_method() -> str:
    # "fork" is unsafe once torch (or any library) has started threads; forkserver forks
    # new workers from a clean, single-threaded server that has math_verify preloaded.
    # Measured here (2 CPUs, 1 worker): first start 0.63 s (fork 0.73, spawn 0.72); after a
    # timeout, kill + replacement + next item 0.21 s (fork 0.53, spawn 0.65, as they
    # import sympy/math_verify again in every new worker).
    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


_START_LOCK = threading.Lock()


def _forget_inherited_forkserver() -> None:
    """In a child made by os.fork() (a DataLoader worker, say): the forkserver is the parent's, and
    multiprocessing would os.waitpid() it and raise ChildProcessError. Drop the inherited handle so
    that this process starts a forkserver of its own when it first scores with math_verify."""
    try:
        from multiprocessing import forkserver

        server = forkserver._forkserver
        if getattr(server, "_forkserver_pid", None) is None:
            return
        try:
            os.close(server._forkserver_alive_fd)  # our copy only: the parent keeps its server alive
        except (OSError, TypeError):
            pass
        server._forkserver_alive_fd = server._forkserver_address = server._forkserver_pid = None
    except Exception:  # a different multiprocessing layout: leave it alone
        pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited_forkserver)


def _start_without_main(proc) -> None:
    """Start ``proc`` without re-running the parent's ``__main__`` in the child.

    spawn and forkserver children normally import the parent's main script (as
    ``__mp_main__``) before running the target. For a training script that means
    importing torch/transformers in every verifier worker (seconds per restart after a
    timeout), or re-running the whole script if it has no ``__main__`` guard. The worker
    needs only this module, so the main-module entries are dropped from the preparation
    data for the duration of ``start()``."""
    import multiprocessing.spawn as mp_spawn

    original = mp_spawn.get_preparation_data

    def without_main(name):
        data = original(name)
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data

    with _START_LOCK:
        mp_spawn.get_preparation_data = without_main
        try:
            proc.start()
        finally:
            mp_spawn.get_preparation_data = original


class _Worker:
    __slots__ = ("proc", "conn", "ready", "task", "deadline", "started")

    def __init__(self, proc, conn):
        self.proc, self.conn = proc, conn
        self.ready, self.task, self.deadline, self.started = False, None, 0.0, time.monotonic()


class MathVerifyPool:
    """Worker processes running math-verify with a hard per-item time limit.

    (Signals cannot do this: SIGALRM only works in the main thread, and sympy can sit in
    C code that never checks for them.)

    ``run(tasks, timeout)`` dispatches items to idle workers; a worker still busy
    ``timeout`` seconds after it was handed an item is SIGKILLed and replaced, and that
    item is reported as timed out (score -1). With ``batch_timeout``, whatever is not done that
    many seconds after the call began is reported as timed out too (busy workers are replaced,
    items not started are not started), so a batch of pathological completions costs at most
    that long. ``timeouts``, ``budget_skipped``, ``crashes`` and ``restarts``
    count what happened over the pool's life. Thread-safe (one batch at a time)."""

    def __init__(self, num_workers: int | None = None, start_method: str | None = None, startup_timeout: float = 120.0):
        self.num_workers = max(1, int(num_workers or min(4, os.cpu_count() or 1)))
        self.start_method = start_method or _default_start_method()
        self.startup_timeout = startup_timeout
        self._ctx = mp.get_context(self.start_method)
        if self.start_method == "forkserver":
            mods = ["math_verify", "math_normalize"] + ([__name__] if __name__ != "__main__" else [])
            self._ctx.set_forkserver_preload(mods)  # no effect if a forkserver already runs
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False
        self.timeouts = self.crashes = self.restarts = self.budget_skipped = 0
        self._startup_failures = 0

    # -- process management
    def _start_worker(self) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=_mv_worker_main, args=(child_conn, os.getpid()), daemon=True, name="math-verify"
        )
        _start_without_main(proc)
        child_conn.close()
        return _Worker(proc, parent_conn)

    def _stop_worker(self, w: _Worker) -> None:
        try:
            if w.proc.is_alive():
                w.proc.kill()
            w.proc.join(timeout=5)
        except Exception:
            pass
        try:
            w.conn.close()
        except Exception:
            pass

    def _replace(self, w: _Worker) -> None:
        self._stop_worker(w)
        self._workers[self._workers.index(w)] = self._start_worker()
        self.restarts += 1

    def _ensure_workers(self) -> None:
        if self._closed:
            raise RuntimeError("MathVerifyPool is closed")
        if os.getpid() != self._pid:  # inherited through fork: those workers are the parent's
            self._workers, self._pid = [], os.getpid()
        while len(self._workers) < self.num_workers:
            self._workers.append(self._start_worker())

    def warm_up(self) -> MathVerifyPool:
        """Start the workers and wait until they are ready."""
        self.run([], 1.0)
        with self._lock:
            deadline = time.monotonic() + self.startup_timeout
            while not all(w.ready for w in self._workers):
                self._poll(deadline, [], None)
        return self

    # -- the dispatch loop
    def run(
        self, tasks: Sequence[tuple[str, str, bool]], timeout: float, batch_timeout: float | None = None
    ) -> list[tuple[bool, str, bool]]:
        """tasks: (gold, text, text_is_answer_line) -> [(correct, pred, timed_out)]."""
        results: list[Any] = [None] * len(tasks)
        pending = deque(range(len(tasks)))
        timeout = max(float(timeout), 0.0)
        budget_end = time.monotonic() + batch_timeout if batch_timeout else float("inf")
        with self._lock:
            self._ensure_workers()
            for w in list(self._workers):
                if w.task is not None:  # left busy by an interrupted run(): its answer is stale
                    w.task = None
                    self._replace(w)
            while pending or any(w.task is not None for w in self._workers):
                now = time.monotonic()
                if now >= budget_end and pending:  # the batch's time is up: the rest is not started
                    self.budget_skipped += len(pending)
                    for i in pending:
                        results[i] = (False, TIMEOUT_PRED, True)
                    pending.clear()
                for w in self._workers:
                    if pending and w.ready and w.task is None:
                        i = pending.popleft()
                        try:
                            w.conn.send((i, *tasks[i]))
                        except Exception:  # worker died while idle
                            pending.appendleft(i)
                            self._replace(w)
                            continue
                        w.task, w.deadline = i, min(now + timeout, budget_end)
                self._poll(now + 0.5, tasks, results)
        return results

    def _poll(self, wake_at: float, tasks, results) -> None:
        """Wait for messages (or the next deadline), then enforce deadlines."""
        now = time.monotonic()
        deadlines = [wake_at]
        for w in self._workers:
            if w.task is not None:
                deadlines.append(w.deadline)
            elif not w.ready:
                deadlines.append(w.started + self.startup_timeout)
        waiting = [w.conn for w in self._workers if w.task is not None or not w.ready]
        if waiting:
            ready = mp_connection.wait(waiting, timeout=max(0.0, min(deadlines) - now))
        else:
            ready = []
        for conn in ready:
            w = next((x for x in self._workers if x.conn is conn), None)
            if w is None:
                continue
            try:
                msg = conn.recv()
            except Exception:  # died: segfault, OOM killer, ...
                if w.task is not None:
                    results[w.task] = (False, ERROR_PRED, False)
                    self.crashes += 1
                    w.task = None
                elif not w.ready:
                    self._startup_failures += 1
                    if self._startup_failures > 3:
                        raise RuntimeError("math_verify workers keep dying during start-up") from None
                self._replace(w)
                continue
            if msg[0] == "ready":
                w.ready = True
                self._startup_failures = 0
            elif msg[0] == "error":
                raise RuntimeError(f"math_verify worker failed to start: {msg[1]}")
            elif msg[0] == w.task:
                results[w.task] = (bool(msg[1]), str(msg[2]), False)
                w.task = None
        now = time.monotonic()
        for w in list(self._workers):
            if w.task is not None and now >= w.deadline:
                results[w.task] = (False, TIMEOUT_PRED, True)
                self.timeouts += 1
                w.task = None
                self._replace(w)
            elif not w.ready and now >= w.started + self.startup_timeout:
                raise RuntimeError(f"math_verify worker not ready after {self.startup_timeout}s")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if os.getpid() != self._pid:
                self._workers = []
                return
            for w in self._workers:
                try:
                    if w.ready and w.task is None:
                        w.conn.send(None)
                        w.proc.join(timeout=1)
                except Exception:
                    pass
                self._stop_worker(w)
            self._workers = []

    def __enter__(self) -> MathVerifyPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_DEFAULT_POOL: MathVerifyPool | None = None
_DEFAULT_POOL_LOCK = threading.Lock()


def get_math_verify_pool() -> MathVerifyPool:
    """The module-level pool, created on first use and closed at interpreter exit."""
    global _DEFAULT_POOL
    with _DEFAULT_POOL_LOCK:
        if _DEFAULT_POOL is None or _DEFAULT_POOL._closed or _DEFAULT_POOL._pid != os.getpid():
            _DEFAULT_POOL = MathVerifyPool()
        return _DEFAULT_POOL


def shutdown_math_verify_pool() -> None:
    global _DEFAULT_POOL
    with _DEFAULT_POOL_LOCK:
        if _DEFAULT_POOL is not None and _DEFAULT_POOL._pid == os.getpid():
            _DEFAULT_POOL.close()
        _DEFAULT_POOL = None


atexit.register(shutdown_math_verify_pool)


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
