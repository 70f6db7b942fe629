"""Answer extraction and Minerva normalisation of the DAPO ("math_dapo") verifier.

Re-implements, with the same behaviour, verl's ``verl/utils/reward_score/math_dapo.py``
(itself adapted from the Minerva / Hendrycks-MATH normaliser of lm-evaluation-harness):

* ``extract_answer``: the last case-insensitive ``Answer\\s*:\\s*([^\\n]+)`` match
  (``re.findall`` semantics: non-overlapping, scanned left to right), else ``[INVALID]``.
* ``normalize_final_answer``: keep the text after the last ``=``; the substitution and
  removal lists below, in order; then the reference's five ``re.sub`` passes, the
  ``\\fracab`` / ``\\sqrta`` rewrites, ``$`` removal, commas dropped from digit strings, strip.
* ``last_boxed_only_string`` / ``remove_boxed`` for the strict mode (only ``\\boxed{``:
  ``\\fbox``, ``\\boxed 5`` and friends are *not* recognised by the reference).

Four of the reference's regex passes backtrack quadratically (``(.*?)(\\$)(.*?)(\\$)(.*)``
costs O(n^2) on any long line, whether or not it holds a ``$``). They are replaced here by
linear scans that produce the same output; ``tests/test_reward.py`` checks them against
the literal regexes. Pure Python, no third-party imports: this module is also imported by
the math-verify worker processes.
"""

from __future__ import annotations

import re

INVALID = "[INVALID]"

# Characters of the completion the DAPO verifier looks at ("The longest answer in
# MATH-500 has 159 characters"); the strict mode then looks at the last 100 of those.
TAIL_CHARS = 300
STRICT_TAIL_CHARS = 100

ANSWER_RE = re.compile(r"(?i)Answer\s*:\s*([^\n]+)")

# (before, after), applied in this order with str.replace.
SUBSTITUTIONS: tuple[tuple[str, str], ...] = (
    ("an ", ""),
    ("a ", ""),
    (".$", "$"),
    ("\\$", ""),
    ("\\ ", ""),
    (" ", ""),
    ("mbox", "text"),
    (",\\text{and}", ","),
    ("\\text{and}", ","),
    ("\\text{m}", "\\text{}"),
)

# Deleted with str.replace, in this order (order matters: "\\text{}^2" before "\\text{}").
REMOVED_EXPRESSIONS: tuple[str, ...] = (
    "square",
    "ways",
    "integers",
    "dollars",
    "mph",
    "inches",
    "hours",
    "km",
    "units",
    "\\ldots",
    "sue",
    "points",
    "feet",
    "minutes",
    "digits",
    "cents",
    "degrees",
    "cm",
    "gm",
    "pounds",
    "meters",
    "meals",
    "edges",
    "students",
    "childrentickets",
    "multiples",
    "\\text{s}",
    "\\text{.}",
    "\\text{\ns}",  # a real newline, as in the reference
    "\\text{}^2",
    "\\text{}^3",
    "\\text{\n}",
    "\\text{}",
    "\\mathrm{th}",
    "^\\circ",
    "^{\\circ}",
    "\\;",
    ",\\!",
    "{,}",
    '"',
    "\\dots",
)

# These two passes are fixed-width after a literal, hence linear: kept as regexes.
_FRAC_RE = re.compile(r"(frac)([^{])(.)")  # \fracab -> \frac{a}{b}  (`.` excludes "\n")
_SQRT_RE = re.compile(r"(sqrt)([^{])")  # \sqrta -> \sqrt{a}


def extract_answer(text: str) -> str:
    """The last ``Answer: ...`` capture of ``text`` (the caller cuts the tail), else ``[INVALID]``."""
    found = ANSWER_RE.findall(text)
    return found[-1] if found else INVALID


def _keep_first_inline_math(s: str) -> str:
    """``re.sub(r"(.*?)(\\$)(.*?)(\\$)(.*)", "$\\3$", s)`` in linear time.

    ``.`` never matches a newline, so a match lives inside one line. It succeeds at the
    start of a line iff that line holds at least two ``$``, and then eats the whole line:
    every such line becomes ``$`` + text between its first two ``$`` + ``$``; other lines
    are left alone.
    """
    if s.count("$") < 2:
        return s
    lines = s.split("\n")
    for k, line in enumerate(lines):
        a = line.find("$")
        if a >= 0:
            b = line.find("$", a + 1)
            if b >= 0:
                lines[k] = "$" + line[a + 1 : b] + "$"
    return "\n".join(lines)


def _unwrap_lazy(s: str, head: str) -> str:
    """``re.sub(re.escape(head) + r"(.*?)(\\})", "\\1", s)`` in linear time.

    Each ``head`` is unwrapped up to the first ``}`` after it, unless a newline comes
    first (``.`` stops at newlines), in which case no ``head`` before that newline can
    match. Replaced text is not rescanned, as with ``re.sub``.
    """
    i = s.find(head)
    if i < 0:
        return s
    out: list[str] = []
    pos = 0  # copied up to here
    close = -1  # cached position of the first "}" at or after the current content start
    hl = len(head)
    while i >= 0:
        start = i + hl
        if close < start:
            close = s.find("}", start)
            if close < 0:
                break  # no "}" left: no later head can match either
        nl = s.find("\n", start, close)
        if nl >= 0:
            i = s.find(head, nl + 1)
            continue
        out.append(s[pos:i])
        out.append(s[start:close])
        pos = close + 1
        i = s.find(head, pos)
    out.append(s[pos:])
    return "".join(out)


def _unwrap_boxed_greedy(s: str) -> str:
    """``re.sub(r"(\\\\boxed\\{)(.*)(\\})", "\\2", s)`` in linear time.

    Greedy: a ``\\boxed{`` is unwrapped up to the LAST ``}`` of its line; if its line has
    no ``}`` after it, neither has any later head on that line.
    """
    head = "\\boxed{"
    i = s.find(head)
    if i < 0:
        return s
    out: list[str] = []
    pos = 0
    n = len(s)
    while i >= 0:
        start = i + len(head)
        eol = s.find("\n", start)
        if eol < 0:
            eol = n
        close = s.rfind("}", start, eol)
        if close < 0:
            i = s.find(head, eol + 1) if eol < n else -1
            continue
        out.append(s[pos:i])
        out.append(s[start:close])
        pos = close + 1
        i = s.find(head, pos)
    out.append(s[pos:])
    return "".join(out)


def normalize_final_answer(final_answer: str) -> str:
    """Minerva normalisation, same output as verl's ``math_dapo.normalize_final_answer``."""
    final_answer = final_answer.split("=")[-1]
    # Fast path, exact: a digit string contains none of the patterns below (they all hold
    # a non-digit character) and no surrounding whitespace.
    if final_answer.isdigit():
        return final_answer

    for before, after in SUBSTITUTIONS:
        if before in final_answer:
            final_answer = final_answer.replace(before, after)
    for expr in REMOVED_EXPRESSIONS:
        if expr in final_answer:
            final_answer = final_answer.replace(expr, "")

    final_answer = _keep_first_inline_math(final_answer)
    final_answer = _unwrap_lazy(final_answer, "\\text{")
    final_answer = _unwrap_lazy(final_answer, "\\textbf{")
    final_answer = _unwrap_lazy(final_answer, "\\overline{")
    final_answer = _unwrap_boxed_greedy(final_answer)

    if "frac" in final_answer:
        final_answer = _FRAC_RE.sub("frac{\\2}{\\3}", final_answer)
    if "sqrt" in final_answer:
        final_answer = _SQRT_RE.sub("sqrt{\\2}", final_answer)
    final_answer = final_answer.replace("$", "")

    if final_answer.replace(",", "").isdigit():
        final_answer = final_answer.replace(",", "")
    return final_answer.strip()


def last_boxed_only_string(string: str, max_scan: int | None = None) -> str | None:
    """The last ``\\boxed{...}`` of ``string`` with balanced braces, else None.

    Like the reference: find the last ``\\boxed{`` and count ``{``/``}`` from there until
    the count returns to zero. ``max_scan`` (ours; None = unlimited as in the reference)
    bounds how many characters after the ``\\boxed{`` are searched for the closing brace.
    """
    idx = string.rfind("\\boxed{")
    if idx < 0:
        return None
    end = len(string) if max_scan is None else min(len(string), idx + 7 + max_scan)
    # Jump from brace to brace with str.find (each position is searched once: linear).
    find = string.find
    depth = 0
    o = find("{", idx, end)
    c = find("}", idx, end)
    while c >= 0:
        if 0 <= o < c:
            depth += 1
            o = find("{", o + 1, end)
        else:
            depth -= 1
            if depth == 0:
                return string[idx : c + 1]
            c = find("}", c + 1, end)
    return None


def remove_boxed(s: str) -> str:
    """``\\boxed{content}`` -> ``content``."""
    left = "\\boxed{"
    if not (s.startswith(left) and s.endswith("}")):
        raise ValueError(f"not a boxed expression: {s[:80]!r}")
    return s[len(left) : -1]
