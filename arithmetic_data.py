"""Deterministic generator of easy arithmetic word problems (the bundled offline datasets
``arithmetic``, ``arithmetic_easy`` and their ``_test`` splits).

The problems are sized for a very small instruct model (e.g. SmolLM2-135M-Instruct):
one- and two-digit addition, subtraction (never negative) and multiplication (by default
the second factor has one digit), phrased either as a short word problem ("Tom has 7
apples and buys 5 more. How many apples does he have now?") or plainly ("What is 23 +
45?"). Answers are integer strings.

Train/test separation: every arithmetic fact ``(op, a, b)`` is hashed (BLAKE2b, so it is
stable across processes, machines and Python versions) into the ``train`` or ``test``
split *before* anything is sampled, so no fact of the test split can ever appear in the
train split, whatever the seed, the sizes or the phrasing. Within a split, facts are drawn
without replacement, so a generated set holds no duplicate problem.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

__all__ = [
    "OPERATIONS",
    "generate_arithmetic",
    "problem_split",
]

#: Supported operation symbols -> how the plain form writes them.
OPERATIONS = {"+": "+", "-": "-", "x": "x"}

_OP_ALIASES = {"+": "+", "add": "+", "plus": "+", "-": "-", "sub": "-", "minus": "-",
               "x": "x", "*": "x", "×": "x", "mul": "x", "times": "x"}

_NAMES = ["Tom", "Anna", "Ben", "Lily", "Sam", "Mia", "Jack", "Emma", "Leo", "Zoe",
          "Max", "Ella", "Noah", "Ava", "Liam", "Ruby"]

# (singular, plural)
_ITEMS = [("apple", "apples"), ("book", "books"), ("pencil", "pencils"), ("marble", "marbles"),
          ("cookie", "cookies"), ("sticker", "stickers"), ("toy car", "toy cars"),
          ("orange", "oranges"), ("card", "cards"), ("flower", "flowers"), ("ball", "balls"),
          ("shell", "shells")]

_CONTAINERS = [("bag", "bags"), ("box", "boxes"), ("basket", "baskets"), ("jar", "jars"),
               ("crate", "crates")]


def _n(count: int, item: tuple[str, str]) -> str:
    return f"{count} {item[0] if count == 1 else item[1]}"


def _be(count: int, past: bool = False) -> str:
    if past:
        return "was" if count == 1 else "were"
    return "is" if count == 1 else "are"


_WORD_TEMPLATES = {
    "+": [
        lambda a, b, name, item, cont: (
            f"{name} has {_n(a, item)} and buys {b} more. "
            f"How many {item[1]} does {name} have now?"),
        lambda a, b, name, item, cont: (
            f"There {_be(a)} {_n(a, item)} in a {cont[0]} and {_n(b, item)} on the table. "
            f"How many {item[1]} are there in total?"),
        lambda a, b, name, item, cont: (
            f"{name} had {_n(a, item)}. A friend gave {name} {b} more. "
            f"How many {item[1]} does {name} have now?"),
    ],
    "-": [
        lambda a, b, name, item, cont: (
            f"{name} has {_n(a, item)} and gives {b} to a friend. "
            f"How many {item[1]} does {name} have left?"),
        lambda a, b, name, item, cont: (
            f"There {_be(a, past=True)} {_n(a, item)} in a {cont[0]}. {name} took {b} of them. "
            f"How many {item[1]} are left in the {cont[0]}?"),
        lambda a, b, name, item, cont: (
            f"{name} had {_n(a, item)} and lost {b}. "
            f"How many {item[1]} does {name} have now?"),
    ],
    "x": [
        lambda a, b, name, item, cont: (
            f"{name} has {_n(a, cont)} with {_n(b, item)} in each {cont[0]}. "
            f"How many {item[1]} does {name} have in total?"),
        lambda a, b, name, item, cont: (
            f"There {_be(a)} {_n(a, cont)}. Each {cont[0]} holds {_n(b, item)}. "
            f"How many {item[1]} are there altogether?"),
    ],
}


def _canonical_op(op: str) -> str:
    try:
        return _OP_ALIASES[op.strip().lower()]
    except (KeyError, AttributeError):
        raise ValueError(
            f"unknown arithmetic operation {op!r}; use some of {sorted(OPERATIONS)}"
        ) from None


def problem_split(op: str, a: int, b: int, test_percent: int = 10) -> str:
    """Return ``"test"`` or ``"train"``: the fixed split of the arithmetic fact ``a op b``.

    Depends only on the fact (not on the phrasing, seed or sizes)."""
    op = _canonical_op(op)
    digest = hashlib.blake2b(f"{a}{op}{b}".encode(), digest_size=8).digest()
    return "test" if int.from_bytes(digest, "big") % 100 < test_percent else "train"


def _operand_range(digits: int) -> range:
    if digits < 1:
        raise ValueError(f"digit counts must be >= 1, got {digits}")
    return range(1 if digits == 1 else 10 ** (digits - 1), 10 ** digits)


def _evaluate(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def generate_arithmetic(
    size: int = 2000,
    *,
    split: str = "train",
    seed: int = 0,
    operations: Sequence[str] = ("+", "-", "x"),
    min_digits: int = 1,
    max_digits: int = 2,
    mul_max_digits: int = 1,
    word_fraction: float = 0.5,
    test_percent: int = 10,
) -> list[dict]:
    """Generate ``size`` distinct arithmetic problems of the given split, deterministically.

    Args:
        size: number of problems. Raises ``ValueError`` if the split has fewer distinct
            facts than that for these settings.
        split: ``"train"`` or ``"test"``; the two never share a fact ``(op, a, b)``.
        seed: random seed; the same arguments always give the same list.
        operations: any of ``"+"``, ``"-"``, ``"x"`` (``"*"`` accepted).
        min_digits, max_digits: digit counts of the operands (1-digit operands are 1..9).
        mul_max_digits: cap on the digits of the second factor of a multiplication
            (default 1: "23 x 4" but not "23 x 45", which is beyond a 135M model).
        word_fraction: probability of the word-problem phrasing (else "What is a op b?").
        test_percent: share (in %) of all facts reserved for the test split.

    Returns:
        A list of dicts ``{"problem", "answer", "op", "a", "b", "form", "idx"}``;
        ``answer`` is the integer result as a string.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    if not 0 < test_percent < 100:
        raise ValueError(f"test_percent must be in 1..99, got {test_percent}")
    if not 0.0 <= word_fraction <= 1.0:
        raise ValueError(f"word_fraction must be in [0, 1], got {word_fraction}")
    if min_digits > max_digits:
        raise ValueError(f"min_digits ({min_digits}) > max_digits ({max_digits})")
    ops = sorted({_canonical_op(o) for o in operations})
    if not ops:
        raise ValueError("operations must not be empty")

    values = [v for d in range(min_digits, max_digits + 1) for v in _operand_range(d)]
    mul_values = [v for v in values if v < 10 ** max(mul_max_digits, 1)]

    # Pool of facts of this split, per operation, in a fixed order.
    pools: dict[str, list[tuple[int, int]]] = {}
    for op in ops:
        second = mul_values if op == "x" else values
        pool = []
        for a in values:
            for b in second:
                if op == "-" and b > a:  # keep answers non-negative
                    continue
                if problem_split(op, a, b, test_percent) == split:
                    pool.append((a, b))
        pools[op] = pool
    available = sum(len(p) for p in pools.values())
    if size > available:
        raise ValueError(
            f"asked for {size} {split} arithmetic problems but these settings only have "
            f"{available} distinct ones (operations={ops}, digits {min_digits}-{max_digits}); "
            "lower the size or allow more digits/operations"
        )

    rng = random.Random(f"arithmetic:{split}:{seed}")
    for op in ops:
        rng.shuffle(pools[op])
    cursor = {op: 0 for op in ops}
    out: list[dict] = []
    while len(out) < size:
        live = [op for op in ops if cursor[op] < len(pools[op])]
        op = rng.choice(live)
        a, b = pools[op][cursor[op]]
        cursor[op] += 1
        if rng.random() < word_fraction:
            template = rng.choice(_WORD_TEMPLATES[op])
            problem = template(a, b, rng.choice(_NAMES), rng.choice(_ITEMS), rng.choice(_CONTAINERS))
            form = "word"
        else:
            problem = f"What is {a} {OPERATIONS[op]} {b}?"
            form = "plain"
        out.append({"idx": len(out), "problem": problem, "answer": str(_evaluate(op, a, b)),
                    "op": op, "a": a, "b": b, "form": form})
    return out
