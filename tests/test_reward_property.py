"""Property tests (hypothesis) of reward_function.py / math_normalize.py.

* For arbitrary text, including control characters, surrogates, unicode digits, brace
  soup and unbalanced ``\\boxed{``, the verifiers never raise and score exactly +-1.
* The linear-time normaliser equals a literal transcription of the reference's regexes
  (verl math_dapo.normalize_final_answer), and likewise for the answer extraction and
  ``last_boxed_only_string``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import math_normalize as mn  # noqa: E402
import reward_function as rf  # noqa: E402
import verifier_pool as vp  # noqa: E402


# ----------------------------------------------------------------- the reference, literally
def reference_normalize(final_answer: str) -> str:
    final_answer = final_answer.split("=")[-1]
    for before, after in mn.SUBSTITUTIONS:
        final_answer = final_answer.replace(before, after)
    for expr in mn.REMOVED_EXPRESSIONS:
        final_answer = final_answer.replace(expr, "")
    final_answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", final_answer)
    final_answer = re.sub(r"(\\text\{)(.*?)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(\\textbf\{)(.*?)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(\\overline\{)(.*?)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", final_answer)
    final_answer = re.sub(r"(sqrt)([^{])", "sqrt{\\2}", final_answer)
    final_answer = final_answer.replace("$", "")
    if final_answer.replace(",", "").isdigit():
        final_answer = final_answer.replace(",", "")
    return final_answer.strip()


def reference_last_boxed(string: str):
    idx = string.rfind("\\boxed{")
    if idx < 0:
        return None
    i, right, depth = idx, None, 0
    while i < len(string):
        if string[i] == "{":
            depth += 1
        if string[i] == "}":
            depth -= 1
            if depth == 0:
                right = i
                break
        i += 1
    return string[idx : right + 1] if right is not None else None


def reference_compute_score(solution_str: str, gt: str) -> dict:
    solution_str = solution_str[-300:]
    match = re.findall(r"(?i)Answer\s*:\s*([^\n]+)", solution_str)
    pred = reference_normalize(match[-1] if match else "[INVALID]")
    ok = pred == reference_normalize(gt)
    return {"score": 1.0 if ok else -1.0, "acc": ok, "pred": pred}


# ----------------------------------------------------------------- strategies
ATOMS = [
    "$",
    "\\text{",
    "\\textbf{",
    "\\overline{",
    "\\boxed{",
    "\\fbox{",
    "}",
    "{",
    "\n",
    "\r",
    " ",
    "a",
    "an ",
    "a ",
    "1",
    "42",
    ",",
    ".",
    "=",
    "frac",
    "sqrt",
    "\\",
    "x",
    "mbox",
    "\\text{and}",
    "\\text{m}",
    "dollars",
    "units",
    "^\\circ",
    "\\!",
    "\\;",
    '"',
    "Answer:",
    "answer :",
    "ANSWER",
    "\u0664",
    "\u00b2",
    "\x00",
    "\ud800",
    "\t",
    "\\ldots",
    "cm",
    "{,}",
]
atom_text = st.lists(st.sampled_from(ATOMS), max_size=25).map("".join)
nasty_text = st.one_of(
    st.text(max_size=400),  # any code point, surrogates included
    atom_text,
    st.builds(lambda a, b: a + b, st.text(max_size=50), atom_text),
    st.integers(0, 3000).map(lambda n: "{" * n + "Answer: 1"),
    st.integers(0, 3000).map(lambda n: "\\boxed{" * n),
    st.builds(lambda n, s: "x" * n + "\nAnswer: " + s, st.integers(0, 600), st.text(max_size=20)),
)
ground_truths = st.one_of(
    st.none(), st.integers(), st.floats(), st.text(max_size=20), st.sampled_from(["42", "\\frac{1}{2}", ""])
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(atom_text)
def test_normalize_equals_reference_regexes(s):
    assert mn.normalize_final_answer(s) == reference_normalize(s)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=60))
def test_normalize_equals_reference_on_any_text(s):
    assert mn.normalize_final_answer(s) == reference_normalize(s)


@settings(max_examples=800, deadline=None)
@given(atom_text)
def test_last_boxed_equals_reference(s):
    assert mn.last_boxed_only_string(s) == reference_last_boxed(s)


@settings(max_examples=800, deadline=None)
@given(
    st.builds(lambda a, b: a + b, st.text(max_size=300), atom_text),
    st.sampled_from(["42", "1", "\\frac{1}{2}", "x", "[INVALID]"]),
)
def test_compute_score_equals_reference(s, gt):
    assert rf.compute_score(s, gt) == reference_compute_score(s, gt)


@settings(max_examples=400, deadline=None)
@given(nasty_text, ground_truths, st.sampled_from(["dapo", "strict_box", "boxed"]))
def test_rule_modes_never_raise(text, gt, mode):
    v = rf.verify(text, gt, mode=mode)
    assert v["score"] in (1.0, -1.0) and v["acc"] is (v["score"] == 1.0) and isinstance(v["pred"], str)
    c = rf.compute_score(text, gt, strict_box_verify=(mode == "strict_box"))
    assert c["score"] in (1.0, -1.0) and set(c) == {"score", "acc", "pred"}


@pytest.fixture(scope="module")
def pool():
    p = vp.MathVerifyPool(num_workers=1).warm_up()
    yield p
    p.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(nasty_text, ground_truths), min_size=1, max_size=4))
def test_math_verify_never_raises(pool, items):
    comps, gts = zip(*items, strict=True)
    out = rf.verify_batch(list(comps), list(gts), mode="math_verify", timeout=1.0, pool=pool)
    assert len(out) == len(items)
    assert all(r["score"] in (1.0, -1.0) for r in out)
