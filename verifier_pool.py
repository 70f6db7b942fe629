"""math-verify in worker processes, with a hard time limit per item.

sympy (under math-verify) can spend minutes on one pathological answer, inside C code that no signal
interrupts, and SIGALRM only works in the main thread. So every item runs in a worker process that the
pool SIGKILLs and replaces when the item's time is up. reward_function.py's "math_verify" mode is the
only user: it hands the pool the items the exact DAPO rule could not decide.

    pool = MathVerifyPool(num_workers=2).warm_up()
    pool.run([(gold, text, text_is_answer_line), ...], timeout=5.0) -> [(correct, pred, timed_out), ...]

``get_math_verify_pool()`` is the process-wide pool (created on first use, closed at exit).
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from math_normalize import INVALID

# The pred of an item stopped at its time limit / of an item whose check raised in the worker.
TIMEOUT_PRED = "[TIMEOUT]"
ERROR_PRED = "[ERROR]"


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
    # new workers from a clean, single-threaded server that has math_verify preloaded, so a
    # worker replaced after a timeout does not import sympy/math_verify again (spawn does).
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
    # multiprocessing documents no way to keep __main__ out of a spawn/forkserver child (and
    # set_forkserver_preload(["__main__"]) would run the training script in the forkserver), so patch.
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
