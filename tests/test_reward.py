"""Tests of reward_function.py / math_normalize.py.

Every expected value in the tables below was worked out by hand from the rules of verl's
math_dapo verifier (Minerva normalisation), not by running the code; the comment next to
a non-obvious case gives the derivation.
"""

from __future__ import annotations

import logging
import math
import pickle
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import math_normalize as mn  # noqa: E402
import reward_function as rf  # noqa: E402
import verifier_pool as vp  # noqa: E402

BS = "\\"

# --------------------------------------------------------------------------- normalisation
# Each removed expression, glued to a 7, must vanish (41 cases).
REMOVED_CASES = [("7" + expr, "7") for expr in mn.REMOVED_EXPRESSIONS]

NORMALIZE_CASES = [
    # plain numbers, whitespace
    ("42", "42"),
    ("  42  ", "42"),  # spaces are substituted away
    ("\t42\n", "42"),  # not a space: left to the final strip()
    ("1 2 3", "123"),
    ("-5", "-5"),
    ("3.14", "3.14"),
    ("", ""),
    ("[INVALID]", "[INVALID]"),
    # the ten substitutions, in order
    ("an apple", "apple"),  # "an " -> ""
    ("a dog", "dog"),  # "a " -> ""
    ("banana split", "banansplit"),  # no "an " ("na "), but "a " at the end of banana
    ("$5.$", "5"),  # ".$" -> "$", then $5$ -> 5
    ("\\$5", "5"),  # "\$" -> ""
    ("5\\$", "5"),
    ("3\\ \\text{cm}", "3"),  # "\ " -> "", cm removed, \text{} removed
    ("\\mbox{hi}", "hi"),  # mbox -> text, then \text{hi} unwrapped
    ("1,\\text{and}2", "12"),  # ",\text{and}" -> "," then 1,2 is a digit string with a comma
    ("x,\\text{and}y", "x,y"),
    ("x\\text{and}y", "x,y"),  # "\text{and}" -> ","
    ("5\\text{m}", "5"),  # "\text{m}" -> "\text{}" which is then removed
    ("5\\mbox{m}", "5"),  # mbox -> text happens before the \text{m} rule
    # units and words (removed expressions in context)
    ("16 square units", "16"),
    ("5 \\text{ cm}", "5"),  # spaces go, cm goes, \text{} goes
    ("5\\text{ hours}", "5"),
    ("90^\\circ", "90"),
    ("90^{\\circ}", "90"),
    ("45 degrees", "45"),
    ("5 units", "5"),
    ("5 pounds", "5"),
    ("\\text{5 units}", "5"),  # units removed inside, then \text{5} unwrapped
    ("\\text{Sue}", "Sue"),  # removal is case-sensitive: only "sue" goes
    ("issue", "is"),  # ...and it is a plain substring replace
    ("kmph", "k"),  # "mph" is removed before "km" is looked for
    ("hours and minutes", "and"),  # -> hoursandminutes -> andminutes -> and
    ("edges", ""),
    ('"hello"', "hello"),
    ("4\\;\\text{cm}", "4"),  # cm, then \text{}, then \;
    ("1{,}000", "1000"),
    ("1,\\!000", "1000"),
    ("5\\text{.}", "5"),
    ("x\\mathrm{th}", "x"),
    ("3\\dots", "3"),
    ("1, 2, \\ldots", "12"),  # -> 1,2, -> digits once commas go
    ("10\\%", "10\\%"),  # percent is not a rule
    ("2 \\pi", "2\\pi"),
    ("\\infty", "\\infty"),
    # commas in numbers
    ("1,000", "1000"),
    ("1,000,000", "1000000"),
    ("\\$1,000", "1000"),
    ("1,000.5", "1,000.5"),  # "1000.5" is not a digit string: commas kept
    ("-1,000", "-1,000"),  # neither is "-1000"
    ("(1,2)", "(1,2)"),
    ("1,2,3", "123"),
    ("\\{1,2\\}", "\\{1,2\\}"),
    # $...$: the first inline math of a line is kept
    ("The answer is $5$ apples", "5"),
    ("$x$ and $y$", "x"),
    ("10$", "10"),  # a single $ is just dropped
    ("$\\frac{1}{2}$", "\\frac{1}{2}"),
    ("$$5$$", ""),  # the first two $ are adjacent: empty math
    ("$1$\n$2$", "1\n2"),  # line by line
    # \text, \textbf, \overline, \boxed
    ("\\text{(A)}", "(A)"),
    ("\\text{ab}\\text{cd}", "abcd"),
    ("\\text{\\text{a}}", "\\text{a}"),  # lazy, one pass: up to the first }
    ("a\\text{b}c\\text{d", "abc\\text{d"),  # an unclosed one is left alone
    ("\\text{a\nb}", "\\text{a\nb}"),  # no unwrapping across a newline
    ("\\textbf{7}", "7"),
    ("\\textbf{A}", "A"),
    ("0.\\overline{3}", "0.3"),
    ("\\overline{AB}", "AB"),
    ("\\boxed{5}", "5"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{1}+\\boxed{2}", "1}+\\boxed{2"),  # greedy: up to the last } of the line
    ("\\boxed{1}\n\\boxed{2}", "1\n2"),
    ("\\fbox{5}", "\\fbox{5}"),  # \fbox is not a rule
    ("\\$\\boxed{5}", "5"),
    # \fracab and \sqrta
    ("\\frac12", "\\frac{1}{2}"),
    ("\\frac123", "\\frac{1}{2}3"),
    ("\\dfrac12", "\\dfrac{1}{2}"),
    ("\\frac1{2}", "\\frac{1}{{}2}"),  # frac, "1", "{" -> frac{1}{{}, then "2}"
    ("\\frac{1}{2}", "\\frac{1}{2}"),
    ("\\frac\\sqrt23", "\\frac{\\}{s}qrt23"),  # the frac rule eats the s of sqrt first
    ("\\sqrt2", "\\sqrt{2}"),
    ("\\sqrt23", "\\sqrt{2}3"),
    ("2\\sqrt{3}", "2\\sqrt{3}"),
    # text after "="
    ("x = 5", "5"),
    ("x=y=7", "7"),
    ("a=", ""),
    ("=5", "5"),
    ("y = \\frac{1}{2}", "\\frac{1}{2}"),
    # unicode digits: str.isdigit() accepts them, so the comma rule applies
    ("\u0664\u0662", "\u0664\u0662"),
    ("\u0664,\u0662", "\u0664\u0662"),
]


@pytest.mark.parametrize("raw,expected", REMOVED_CASES + NORMALIZE_CASES)
def test_normalize_final_answer(raw, expected):
    assert mn.normalize_final_answer(raw) == expected


def test_rule_lists_are_the_reference_lists():
    assert len(mn.SUBSTITUTIONS) == 10 and len(mn.REMOVED_EXPRESSIONS) == 41
    assert mn.SUBSTITUTIONS[0] == ("an ", "") and mn.SUBSTITUTIONS[-1] == ("\\text{m}", "\\text{}")
    assert mn.REMOVED_EXPRESSIONS[0] == "square" and mn.REMOVED_EXPRESSIONS[-1] == "\\dots"
    assert "\\text{\ns}" in mn.REMOVED_EXPRESSIONS and "\\text{\n}" in mn.REMOVED_EXPRESSIONS


# --------------------------------------------------------------------------- dapo mode
DAPO_CASES = [
    # (completion, ground truth, score, pred)
    ("Answer: 42", "42", 1.0, "42"),
    ("answer: 42", "42", 1.0, "42"),
    ("ANSWER: 42", "42", 1.0, "42"),
    ("AnSwEr: 42", "42", 1.0, "42"),
    ("Answer : 42", "42", 1.0, "42"),
    ("Answer:42", "42", 1.0, "42"),
    ("Answer:\n42", "42", 1.0, "42"),  # \s* crosses the newline
    ("The final answer: 42", "42", 1.0, "42"),
    ("Answer: 41", "42", -1.0, "41"),
    ("Answer: 41\nAnswer: 42", "42", 1.0, "42"),  # last wins
    ("Answer: 42\nAnswer: 41", "42", -1.0, "41"),
    ("Answer: 42\nAnswer:", "42", 1.0, "42"),  # a bare trailing "Answer:" does not match
    ("Answer: 42\nAnswer:   ", "42", -1.0, ""),  # it does with spaces: captures " "
    ("Answer: Answer: 42", "42", -1.0, "Answer:42"),  # one non-overlapping match
    ("Answer: 5 is wrong; Answer: 6", "6", -1.0, "5iswrong;Answer:6"),
    ("answer is 42", "42", -1.0, "[INVALID]"),  # no colon
    ("no answer here", "42", -1.0, "[INVALID]"),
    ("", "42", -1.0, "[INVALID]"),
    ("Answer: $42$", "42", 1.0, "42"),
    ("Answer: \\boxed{42}", "42", 1.0, "42"),
    ("Answer: $\\boxed{7}$", "7", 1.0, "7"),
    ("Answer: 42 dollars", "42", 1.0, "42"),
    ("Answer: 42 apples", "42", -1.0, "42apples"),
    ("Answer: 5 square units", "5", 1.0, "5"),
    ("Answer: 90^\\circ", "90", 1.0, "90"),
    ("Answer: x = 42", "42", 1.0, "42"),
    ("Answer: 42.", "42", -1.0, "42."),  # a trailing period survives (only ".$" is a rule)
    ("Answer: $42.$", "42", 1.0, "42"),
    ("Answer: 42\r\n", "42", 1.0, "42"),  # [^\n]+ keeps the \r; strip() drops it
    ("Answer: 4 2", "42", 1.0, "42"),
    ("Answer: 1,000", "1000", 1.0, "1000"),
    ("Answer: 1000", "1,000", 1.0, "1000"),  # the ground truth is normalised too
    ("Answer: 12", "1,2", 1.0, "12"),
    ("Answer: 1, 2, 3", "1,2,3", 1.0, "123"),
    ("Answer: \\frac12", "\\frac{1}{2}", 1.0, "\\frac{1}{2}"),
    ("Answer: \\frac{1}{2}", "\\frac12", 1.0, "\\frac{1}{2}"),
    ("Answer: 0.5", "\\frac{1}{2}", -1.0, "0.5"),  # no symbolic equivalence in this mode
    ("Answer: 3/4", "\\frac{3}{4}", -1.0, "3/4"),
    ("Answer: \\sqrt2", "\\sqrt{2}", 1.0, "\\sqrt{2}"),
    ("Answer: \\text{(B)}", "(B)", 1.0, "(B)"),
    ("Answer: \\textbf{(B)}", "(B)", 1.0, "(B)"),
    ("Answer: 7", "$7$", 1.0, "7"),
    ("Answer: 7", "x=7", 1.0, "7"),
    ("Answer: 7", "7 dollars", 1.0, "7"),
    ("Answer: \u0664\u0662", "42", -1.0, "\u0664\u0662"),  # Arabic-Indic digits are not ASCII ones
    ("Answer: \\fbox{42}", "42", -1.0, "\\fbox{42}"),
    ("no answer", "[INVALID]", 1.0, "[INVALID]"),  # the reference's own quirk, kept
    ("x" * 5000 + "\nAnswer: 42", "42", 1.0, "42"),
    # the 300-character window: "Answer: 42\n" is 11 characters
    ("Answer: 42\n" + "x" * 289, "42", 1.0, "42"),  # 300 characters: all seen
    ("Answer: 42\n" + "x" * 290, "42", -1.0, "[INVALID]"),  # 301: the "A" is cut
    ("Answer: 42\n" + "x" * 1000, "42", -1.0, "[INVALID]"),
    ("Answer: 1\n" + "y" * 200 + "\nAnswer: 2", "2", 1.0, "2"),
]


@pytest.mark.parametrize("completion,gt,score,pred", DAPO_CASES)
def test_compute_score_dapo(completion, gt, score, pred):
    out = rf.compute_score(completion, gt)
    assert out == {"score": score, "acc": score > 0, "pred": pred}
    v = rf.verify(completion, gt, mode="dapo")
    assert (v["score"], v["acc"], v["pred"], v["timeout"], v["bad_ground_truth"]) == (
        score,
        score > 0,
        pred,
        False,
        False,
    )


# --------------------------------------------------------------------------- strict_box mode
STRICT_CASES = [
    ("so \\boxed{42}", "42", 1.0, "42"),
    ("\\boxed{41}", "42", -1.0, "41"),
    ("\\boxed{4}\\boxed{2}", "2", 1.0, "2"),  # the last box
    ("no box", "42", -1.0, "[INVALID]"),
    ("Answer: 42", "42", -1.0, "[INVALID]"),
    ("\\boxed{42", "42", -1.0, "[INVALID]"),  # unbalanced
    ("\\boxed{ 42}", "42", -1.0, " 42"),  # no normalisation at all
    ("\\boxed{42}", " 42", -1.0, "42"),  # of either side
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", 1.0, "\\frac{1}{2}"),
    ("\\boxed{\\frac12}", "\\frac{1}{2}", -1.0, "\\frac12"),
    ("\\boxed{$42$}", "42", -1.0, "$42$"),
    ("\\boxed{{42}}", "{42}", 1.0, "{42}"),
    ("\\boxed{42} dollars", "42", 1.0, "42"),
    ("\\fbox{42}", "42", -1.0, "[INVALID]"),
    ("\\boxed 42", "42", -1.0, "[INVALID]"),
    # the 100-character window: "\boxed{42}" is 10 characters
    ("\\boxed{42}" + " " * 90, "42", 1.0, "42"),
    ("\\boxed{42}" + " " * 91, "42", -1.0, "[INVALID]"),
]


@pytest.mark.parametrize("completion,gt,score,pred", STRICT_CASES)
def test_compute_score_strict_box(completion, gt, score, pred):
    assert rf.compute_score(completion, gt, strict_box_verify=True) == {"score": score, "acc": score > 0, "pred": pred}
    assert rf.verify(completion, gt, mode="strict_box")["score"] == score


# --------------------------------------------------------------------------- boxed mode
BOXED_CASES = [
    ("\\boxed{42}", "42", 1.0, "42"),
    ("\\boxed{42 dollars}", "42", 1.0, "42"),
    ("\\boxed{42}" + "x" * 1000, "42", 1.0, "42"),  # anywhere in the completion
    ("\\boxed{4} then \\boxed{2}", "2", 1.0, "2"),
    ("\\boxed{\\frac12}", "\\frac{1}{2}", 1.0, "\\frac{1}{2}"),
    ("\\boxed{$42$}", "42", 1.0, "42"),
    ("\\boxed{\\text{(C)}}", "(C)", 1.0, "(C)"),
    ("\\boxed{1,000}", "1000", 1.0, "1000"),
    ("\\boxed{41}", "42", -1.0, "41"),
    ("no box", "42", -1.0, "[INVALID]"),
    ("\\boxed{42", "42", -1.0, "[INVALID]"),
    ("Answer: 42", "42", -1.0, "[INVALID]"),
]


@pytest.mark.parametrize("completion,gt,score,pred", BOXED_CASES)
def test_verify_boxed(completion, gt, score, pred):
    v = rf.verify(completion, gt, mode="boxed")
    assert (v["score"], v["acc"], v["pred"]) == (score, score > 0, pred)


# --------------------------------------------------------------------------- ground truths
GT_CASES = [
    # (ground truth, completion, score, bad)
    (42, "Answer: 42", 1.0, False),
    (3.0, "Answer: 3", 1.0, False),  # integral floats compare as integers
    (0.5, "Answer: 0.5", 1.0, False),
    (None, "Answer: 42", -1.0, True),
    ("", "Answer: ", -1.0, True),  # would otherwise match an empty prediction
    ("   ", "Answer: 42", -1.0, True),
    (True, "Answer: True", -1.0, True),
    (float("nan"), "Answer: nan", -1.0, True),
    (float("inf"), "Answer: inf", -1.0, True),
    (["42"], "Answer: 42", -1.0, True),
    ("dollars", "Answer: dollars", -1.0, True),  # normalises to ""
]


@pytest.mark.parametrize("gt,completion,score,bad", GT_CASES)
def test_ground_truth_handling(gt, completion, score, bad):
    for mode in ("dapo", "strict_box", "boxed"):
        v = rf.verify(completion, gt, mode=mode)
        assert v["bad_ground_truth"] is bad
        if bad:
            assert v["score"] == -1.0
    assert rf.compute_score(completion, gt)["score"] == score


def test_numpy_ground_truth():
    np = pytest.importorskip("numpy")
    assert rf.compute_score("Answer: 7", np.int64(7))["score"] == 1.0
    assert rf.compute_score("Answer: 7", np.float64(7.0))["score"] == 1.0


# --------------------------------------------------------------------------- robustness
NASTY = [
    None,
    "",
    "\x00\x01\x02Answer: \x00",
    "Answer: \ud800\udfff\ud83d",  # lone surrogates
    "\\boxed{" * 1000,
    "{" * 100_000 + "Answer: 1",
    "}" * 10_000 + "\\boxed{" + "}" * 10_000,
    "Answer: " + "$" + "a" * 100_000,
    "Answer:" + " " * 100_000,
    "\u0664\u0662 Answer: \u0664\u0662",
    ["not", "a", "chat"],
    [{"role": "assistant", "content": None}],
    [{"role": "assistant", "content": [{"type": "text", "text": "Answer: 1"}]}],
    12345,
    b"Answer: 1",
]


@pytest.mark.parametrize("completion", NASTY, ids=range(len(NASTY)))
@pytest.mark.parametrize("mode", ["dapo", "strict_box", "boxed"])
def test_nasty_inputs_never_raise(completion, mode):
    v = rf.verify(completion, "1", mode=mode)
    assert v["score"] in (1.0, -1.0)
    assert rf.compute_score(completion, "1")["score"] in (1.0, -1.0)


def test_megabyte_completions_are_fast():
    big = "x" * 5_000_000 + "\nAnswer: 42"
    t = time.perf_counter()
    assert rf.compute_score(big, "42")["score"] == 1.0
    assert rf.verify("\\boxed{42}" + "y" * 5_000_000, "42", mode="boxed")["score"] == 1.0
    assert rf.verify("\\boxed{" + "{" * 5_000_000, "42", mode="boxed")["pred"] == "[INVALID]"
    assert time.perf_counter() - t < 2.0


ADVERSARIAL_LONG = [
    "a" * 200_000 + "$",  # one $ on a long line: the reference regex is quadratic here
    "$" + "a" * 200_000,
    ("$ab" * 50_000 + "\n") * 2,
    "\\text{" * 50_000,  # heads without a closing brace
    ("\\text{" * 1000 + "\n") * 50 + "}",
    "\\boxed{" * 50_000,
    ("\\boxed{x" * 1000 + "\n") * 50,
    "\\overline{" * 50_000 + "}",
    "frac" * 50_000,
    "sqrt" * 50_000,
    "=" * 200_000,
    "a " * 100_000,
]


@pytest.mark.parametrize("text", ADVERSARIAL_LONG, ids=range(len(ADVERSARIAL_LONG)))
def test_normalize_is_linear_on_adversarial_input(text):
    t = time.perf_counter()
    mn.normalize_final_answer(text)
    mn.last_boxed_only_string(text)
    assert time.perf_counter() - t < 1.0


def test_answer_regex_cannot_backtrack_badly():
    # Only the last 300 characters are searched; even a full window of "Answer" prefixes is cheap.
    # A backtracking regex would not finish these calls for hours; the alarm bounds the test (not a timing check:
    # the calls take milliseconds).
    import signal

    text = ("Answer" + " " * 20) * 20_000
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the answer regex backtracks on a long response"))
    signal.alarm(120)
    try:
        scores = [rf.compute_score(text, "1")["score"] for _ in range(100)]
    finally:
        signal.alarm(0)
    assert scores == [-1.0] * 100


def test_last_boxed_only_string():
    assert mn.last_boxed_only_string("a \\boxed{1} b \\boxed{{2}} c") == "\\boxed{{2}}"
    assert mn.last_boxed_only_string("\\boxed{1") is None
    assert mn.last_boxed_only_string("nothing") is None
    assert mn.last_boxed_only_string("\\boxed{" + "x" * 50 + "}", max_scan=10) is None
    assert mn.remove_boxed("\\boxed{x}") == "x"
    with pytest.raises(ValueError):
        mn.remove_boxed("x")


# --------------------------------------------------------------------------- math_verify mode
@pytest.fixture(scope="module")
def pool():
    p = vp.MathVerifyPool(num_workers=1).warm_up()
    yield p
    p.close()


MV_CASES = [
    ("Answer: 0.5", "\\frac{1}{2}", 1.0),
    ("Answer: \\frac{1}{2}", "0.5", 1.0),
    ("Answer: 1/2", "0.5", 1.0),
    ("Answer: \\frac12", "0.5", 1.0),
    ("Answer: 2^{1/2}", "\\sqrt{2}", 1.0),
    ("The result is therefore \\boxed{\\frac{1}{2}}.", "0.5", 1.0),  # no Answer line: LaTeX in the tail
    ("Answer: 0.6", "0.5", -1.0),
    ("Answer: 3\\pi", "3", -1.0),
    ("Answer: 42", "42", 1.0),  # exact DAPO match, no worker needed
    ("Answer: 42 dollars", "42", 1.0),  # ditto, via the Minerva rules
    ("I give up, it is 0.5", "0.5", -1.0),  # bare numbers in free text are not taken
]


def test_math_verify_cases(pool):
    comps, gts, expected = zip(*MV_CASES, strict=True)
    out = rf.verify_batch(list(comps), list(gts), mode="math_verify", timeout=10.0, pool=pool)
    assert [r["score"] for r in out] == list(expected)
    assert not any(r["timeout"] for r in out)
    assert out[-1]["pred"] == "[INVALID]"


def test_math_verify_timeout_kills_and_replaces_worker(pool):
    before_timeouts, before_restarts = pool.timeouts, pool.restarts
    pid = pool._workers[0].proc.pid
    # Parsing x^x^...^ (280 characters, inside the 300-character window) takes math-verify
    # about 7 s on a quiet machine; the limit is 2 s, ample for "0.5" even on a loaded one.
    comps = ["Answer: $" + "x^" * 140 + "$", "Answer: 0.5"]
    out = rf.verify_batch(comps, ["1", "\\frac{1}{2}"], mode="math_verify", timeout=2.0, pool=pool)
    assert out[0]["score"] == -1.0 and out[0]["timeout"] is True and out[0]["pred"] == "[TIMEOUT]"
    assert out[1]["score"] == 1.0 and out[1]["timeout"] is False  # the pool kept working
    assert pool.timeouts == before_timeouts + 1 and pool.restarts == before_restarts + 1
    assert pool._workers[0].proc.pid != pid


def test_math_verify_tiny_timeout_every_item(pool):
    n0 = pool.timeouts
    # Inputs that take math-verify seconds, so that even a slow, loaded machine cannot
    # answer within the 10 ms limit.
    comps = ["Answer: $" + "x^" * 140 + "$", "Answer: $" + "{" * 288 + "$"]
    out = rf.verify_batch(comps, ["1/2", "1/4"], mode="math_verify", timeout=0.01, pool=pool)
    assert all(r["score"] == -1.0 and r["timeout"] for r in out)
    assert pool.timeouts == n0 + 2
    ok = rf.verify_batch(["Answer: 0.25"], ["1/4"], mode="math_verify", timeout=10.0, pool=pool)
    assert ok[0]["score"] == 1.0


def test_math_verify_nasty_inputs(pool):
    comps = [c for c in NASTY] + ["Answer: " + "x^" * 200, "\\boxed{9^{9^{9^{9^{9}}}}}"]
    out = rf.verify_batch(comps, ["1"] * len(comps), mode="math_verify", timeout=2.0, pool=pool)
    assert all(r["score"] in (1.0, -1.0) for r in out)


def test_worker_crash_is_survived(pool):
    pool.warm_up()
    pool._workers[0].proc.kill()
    pool._workers[0].proc.join()
    out = rf.verify_batch(["Answer: 0.5"], ["1/2"], mode="math_verify", timeout=10.0, pool=pool)
    assert out[0]["score"] == 1.0


# --------------------------------------------------------------------------- TRL reward functions
def _chat(text):
    return [{"role": "assistant", "content": text}]


def test_correctness_reward_strings_and_logging(caplog):
    func = rf.make_correctness_reward()
    assert func.__name__ == "correctness"
    from trl.trainer.utils import get_callable_name

    assert get_callable_name(func) == "correctness"
    extras, metrics = {}, {}
    scores = func(
        prompts=["p"] * 4,
        completions=["Answer: 42", "Answer: 41", "Answer: 7", "nothing"],
        completion_ids=[[1], [2], [3], [4]],
        answer=["42", "42", None, "9"],
        row_id=["r0", "r1", "r2", "r3"],
        data_source=["math_dapo"] * 4,
        trainer_state=None,
        log_extra=lambda k, v: extras.__setitem__(k, v),
        log_metric=lambda k, v: metrics.__setitem__(k, v),
    )
    assert scores == [1.0, -1.0, -1.0, -1.0]
    assert extras == {"answer": ["42", "42", None, "9"], "pred": ["42", "41", "7", "[INVALID]"],
                      "acc": [True, False, False, False]}
    assert metrics == {"reward/bad_ground_truth": 1.0}
    assert "row_id='r2'" in caplog.text


def test_correctness_reward_chat_and_index_warning(caplog):
    func = rf.make_correctness_reward(mode="dapo", answer_column="solution")
    with caplog.at_level(logging.WARNING):
        scores = func(
            prompts=[[{"role": "user", "content": "q"}]] * 3,
            completions=[_chat("Answer: 3"), _chat("Answer: 4"), _chat("Answer: 5")],
            completion_ids=[[1], [2], [3]],
            solution=["3", "3", ""],
        )
    assert scores == [1.0, -1.0, -1.0]
    assert "index=2" in caplog.text


def test_correctness_reward_missing_column_scores_minus_one(caplog):
    func = rf.make_correctness_reward()
    assert func(prompts=["p"], completions=["Answer: 1"], completion_ids=[[1]]) == [-1.0]


def test_correctness_reward_math_verify_logs_timeouts():
    func = rf.make_correctness_reward(mode="math_verify", timeout=10.0)
    metrics = {}
    try:
        scores = func(
            prompts=["p", "p"],
            completions=[_chat("Answer: 0.5"), "Answer: 0.75"],
            completion_ids=[[1], [2]],
            answer=["\\frac{1}{2}", "\\frac{1}{2}"],
            log_metric=lambda k, v: metrics.__setitem__(k, v),
        )
    finally:
        vp.shutdown_math_verify_pool()
    assert scores == [1.0, -1.0]
    assert metrics == {"reward/verifier_timeouts": 0.0, "reward/bad_ground_truth": 0.0}


def test_reward_functions_pickle():
    c = pickle.loads(pickle.dumps(rf.make_correctness_reward(mode="boxed")))
    assert c.__name__ == "correctness" and c(completions=["\\boxed{2}"], answer=["2"]) == [1.0]
    o = pickle.loads(pickle.dumps(rf.make_overlong_reward(20, 4, 1.0)))
    assert o.__name__ == "overlong_penalty" and o(completion_ids=[[0] * 18]) == [-0.5]


def test_unknown_mode_rejected():
    with pytest.raises(ValueError):
        rf.make_correctness_reward(mode="nope")
    with pytest.raises(ValueError):
        rf.verify("x", "1", mode="nope")


# --------------------------------------------------------------------------- overlong penalty
OVERLONG_CASES = [
    # (length, max, buffer, factor, expected) ; expected length = max - buffer
    (10, 20, 4, 1.0, 0.0),  # below expected
    (0, 20, 4, 1.0, 0.0),
    (16, 20, 4, 1.0, 0.0),  # exactly expected
    (17, 20, 4, 1.0, -0.25),  # inside the buffer: -(17-16)/4
    (18, 20, 4, 1.0, -0.5),
    (19, 20, 4, 1.0, -0.75),
    (20, 20, 4, 1.0, -1.0),  # at max: -factor
    (18, 20, 4, 0.5, -0.25),
    (20, 20, 4, 0.5, -0.5),
    (20, 20, 4, 2.0, -2.0),
    (22, 20, 4, 1.0, -1.5),  # past max (TRL never generates this): the formula goes on
    (16384, 20480, 4096, 1.0, 0.0),  # the recipe
    (18432, 20480, 4096, 1.0, -0.5),
    (20480, 20480, 4096, 1.0, -1.0),
    (17408, 20480, 4096, 1.0, -0.25),
]


@pytest.mark.parametrize("length,max_len,buf,factor,expected", OVERLONG_CASES)
def test_overlong_penalty(length, max_len, buf, factor, expected):
    assert rf.overlong_penalty(length, max_len, buf, factor) == pytest.approx(expected, abs=1e-12)
    func = rf.make_overlong_reward(max_len, buf, factor)
    assert func(completion_ids=[[1] * length]) == [pytest.approx(expected, abs=1e-12)]


@pytest.mark.parametrize("max_len,buf,factor", [(20, 4, 1.0), (20, 4, 0.3), (64, 64, 1.0), (100, 7, 2.5)])
def test_overlong_reward_matches_formula_everywhere(max_len, buf, factor):
    func = rf.make_overlong_reward(max_len, buf, factor)
    ids = [[0] * n for n in range(max_len + 5)]
    got = func(prompts=None, completions=None, completion_ids=ids, trainer_state=None)
    want = [rf.overlong_penalty(n, max_len, buf, factor) for n in range(max_len + 5)]
    assert got == want  # bit for bit
    assert all(not math.copysign(1, x) < 0 for x in got if x == 0)  # no -0.0


def test_overlong_reward_validates():
    with pytest.raises(ValueError):
        rf.make_overlong_reward(20, 0, 1.0)
    with pytest.raises(ValueError):
        rf.make_overlong_reward(20, 30, 1.0)


def test_truncated_wrong_answer_sums_to_minus_two():
    correctness, overlong = rf.make_correctness_reward(), rf.make_overlong_reward(20, 4, 1.0)
    kwargs = dict(prompts=["p"], completions=["Answer: 1"], completion_ids=[[5] * 20], answer=["2"])
    assert correctness(**kwargs)[0] + overlong(**kwargs)[0] == -2.0
