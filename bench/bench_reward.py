"""Reward verifier benchmark: throughput per mode on one core, and the
worst-case latency of math_verify on adversarial inputs (bounded by its timeout).

    python -m bench.bench_reward [--quick]

``run(quick) -> dict`` returns the numbers for ``make bench``.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import math_normalize as mn  # noqa: E402
import reward_function as rf  # noqa: E402
import verifier_pool as vp  # noqa: E402

WORDS = (
    "we so let then therefore thus compute the sum of and x y z n k + - = ( ) "
    "\\frac{1}{2} \\sqrt{3} 2^{n} \\cdot \\equiv \\pmod{7} $ is a prime factor"
).split()

# Each takes math-verify seconds to minutes; all fit in the 300-character window.
ADVERSARIAL = {
    "x^x^... (280 chars)": "Answer: $" + "x^" * 140 + "$",
    "{ x 288": "Answer: $" + "{" * 288 + "$",
    "9^{9^{... 60 deep": "Answer: $" + "9^{" * 60 + "9" + "}" * 60 + "$",
    "\\sqrt{ 40 deep": "Answer: $" + "\\sqrt{" * 40 + "2" + "}" * 40 + "$",
    "boxed tower, no Answer line": "so \\boxed{9^{9^{9^{9^{9}}}}}",
}


def make_batch(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """DAPO-style completions of 1-2k characters, half right, ending in Answer: and a box."""
    rng = random.Random(seed)
    comps, gts = [], []
    for i in range(n):
        body = " ".join(rng.choice(WORDS) for _ in range(400))[: rng.randint(1000, 2000)]
        gt = str(rng.randint(0, 999))
        ans = gt if i % 2 == 0 else str(int(gt) + 1)
        tail = f"\n\nThe answer is $\\boxed{{{ans}}}$.\n\nAnswer: {ans}" if i % 3 else f"\n\nAnswer: ${ans}$"
        comps.append(body + tail)
        gts.append(gt)
    return comps, gts


def _pin_one_core() -> set[int] | None:
    if not hasattr(os, "sched_setaffinity"):
        return None
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    return before


def _best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _reference_regex_normalize_seconds(n: int) -> float:
    """Time of the reference's first regex pass on one n-character line with a single $."""
    text = "a" * n + "$"
    t = time.perf_counter()
    re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", text)
    return time.perf_counter() - t


def run(quick: bool = False) -> dict:
    affinity = _pin_one_core()  # the pool's forkserver and workers inherit it
    try:
        return _run(quick)
    finally:
        if affinity is not None:
            os.sched_setaffinity(0, affinity)


def _run(quick: bool) -> dict:
    n = 8192
    comps, gts = make_batch(n)
    results: dict = {"quick": quick, "n_completions": n, "modes": {}}
    for mode in ("dapo", "strict_box", "boxed"):
        secs = _best_of(lambda mode=mode: rf.verify_batch(comps, gts, mode=mode), 3 if quick else 5)
        acc = sum(r["acc"] for r in rf.verify_batch(comps, gts, mode=mode)) / n
        results["modes"][mode] = {"seconds_per_8192": secs, "completions_per_s": n / secs, "accuracy": acc}

    # math_verify: one worker (one core). Answers in another notation force the sympy path.
    m = 128 if quick else 1024
    rng = random.Random(1)
    mv_comps, mv_gts = [], []
    for i in range(m):
        p, q = rng.randint(1, 50), rng.randint(51, 99)
        right = i % 2 == 0
        mv_comps.append(f"... so the answer is\nAnswer: {p / q if right else p / q + 1:.12g}")
        mv_gts.append(f"\\frac{{{p}}}{{{q}}}")
    t = time.perf_counter()
    pool = vp.MathVerifyPool(num_workers=1)
    pool.warm_up()
    startup = time.perf_counter() - t
    try:
        secs = _best_of(
            lambda: rf.verify_batch(mv_comps, mv_gts, mode="math_verify", timeout=5.0, pool=pool), 1 if quick else 2
        )
        out = rf.verify_batch(mv_comps, mv_gts, mode="math_verify", timeout=5.0, pool=pool)
        results["modes"]["math_verify"] = {
            "completions_per_s": m / secs,
            "n": m,
            "accuracy": sum(r["acc"] for r in out) / m,
            "pool_start_s": startup,
        }
        # The exact-match fast path (no worker round trip) on the DAPO-style batch.
        k = 2048
        fast = _best_of(lambda: rf.verify_batch(comps[:k], gts[:k], mode="math_verify", pool=pool), 1)
        results["modes"]["math_verify"]["mixed_dapo_batch_per_s"] = k / fast

        timeout = 1.0 if quick else 5.0
        adv = {}
        for name, text in ADVERSARIAL.items():
            t = time.perf_counter()
            r = rf.verify_batch([text], ["1"], mode="math_verify", timeout=timeout, pool=pool)[0]
            adv[name] = {"latency_s": time.perf_counter() - t, "timeout": r["timeout"], "score": r["score"]}
        # After the storm, the pool still answers normally.
        t = time.perf_counter()
        ok = rf.verify_batch(["Answer: 0.5"], ["\\frac{1}{2}"], mode="math_verify", timeout=timeout, pool=pool)[0]
        results["adversarial"] = {
            "timeout_s": timeout,
            "items": adv,
            "worst_latency_s": max(v["latency_s"] for v in adv.values()),
            "next_normal_item_s": time.perf_counter() - t,
            "next_normal_item_ok": ok["score"] == 1.0,
            "pool_timeouts": pool.timeouts,
            "pool_restarts": pool.restarts,
        }
    finally:
        pool.close()

    big = 200_000
    t = time.perf_counter()
    mn.normalize_final_answer("a" * big + "$")
    ours = time.perf_counter() - t
    ref_n = 5_000 if quick else 20_000
    results["normalize_adversarial"] = {
        "ours_chars": big,
        "ours_s": ours,
        "reference_regex_chars": ref_n,
        "reference_regex_s": _reference_regex_normalize_seconds(ref_n),
    }
    return results


def to_markdown(res: dict) -> str:
    lines = ["| mode | completions/s (1 core) | time for 8,192 | notes |", "|---|---:|---:|---|"]
    for mode in ("dapo", "strict_box", "boxed"):
        r = res["modes"][mode]
        lines.append(
            f"| {mode} | {r['completions_per_s']:,.0f} | {r['seconds_per_8192'] * 1000:.0f} ms "
            "| 1-2k-char completions |"
        )
    mv = res["modes"]["math_verify"]
    lines.append(
        f"| math_verify (sympy path) | {mv['completions_per_s']:,.0f} | {8192 / mv['completions_per_s']:.1f} s | "
        f"1 worker; pool start {mv['pool_start_s']:.2f} s |"
    )
    lines.append(
        f"| math_verify (DAPO batch: right answers exact-matched) | {mv['mixed_dapo_batch_per_s']:,.0f} | "
        f"{8192 / mv['mixed_dapo_batch_per_s']:.2f} s | the wrong half goes to sympy |"
    )
    adv = res["adversarial"]
    lines += [
        "",
        f"math_verify on adversarial inputs, timeout {adv['timeout_s']} s:",
        "",
        "| input | latency | timed out |",
        "|---|---:|---|",
    ]
    for name, v in adv["items"].items():
        lines.append(f"| {name} | {v['latency_s']:.2f} s | {v['timeout']} |")
    lines.append(f"| **worst** | **{adv['worst_latency_s']:.2f} s** | |")
    lines.append(
        f"| next normal item | {adv['next_normal_item_s']:.3f} s | scored right: {adv['next_normal_item_ok']} |"
    )
    nz = res["normalize_adversarial"]
    lines += [
        "",
        f"Minerva normaliser, one long line with a single `$`: ours {nz['ours_s'] * 1000:.1f} ms "
        f"for {nz['ours_chars']:,} chars; the reference regex {nz['reference_regex_s'] * 1000:.0f} ms "
        f"for {nz['reference_regex_chars']:,} chars (quadratic).",
    ]
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    res = run(quick=args.quick)
    print(to_markdown(res))
    return res


if __name__ == "__main__":
    main()
