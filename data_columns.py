"""Which columns of a source hold the problem and the answer, and how to read one cell of each.

Math datasets name their columns differently (``problem``/``answer`` in MATH, ``question`` with a
``#### 42`` answer in GSM8K, a chat ``prompt`` with ``reward_model.ground_truth`` in
DAPO-Math-17k, a worked ``solution`` ending in ``\\boxed{...}`` elsewhere). ``resolve_columns``
picks the columns (or checks the ones the user gave); ``problem_text`` and ``answer_text`` turn a
cell into text, or into the reason the row is unusable, so the loader can name every bad row.
"""

from __future__ import annotations

import re
from typing import Any

from chat_text import message_text
from data_sources import DatasetError

__all__ = ["FLAGS_HINT", "answer_text", "extract_boxed", "problem_text", "resolve_columns"]

# Tried in this order when the user names no column.
PROBLEM_COLUMNS = ("problem", "question", "prompt", "source_prompt", "query", "instruction", "input")
ANSWER_COLUMNS = ("reward_model.ground_truth", "answer", "ground_truth", "final_answer",
                  "expected_answer", "target", "solution")

FLAGS_HINT = "set the columns explicitly with --prompt_column / --answer_column " \
             "(prompt_column= / answer_column=; dotted paths like reward_model.ground_truth work)"


def resolve_columns(source, prompt_column: str | None, answer_column: str | None) -> tuple[str, str]:
    """(problem column, answer column): the given ones if they exist, else the first known names."""
    columns = source.columns()
    shown = ", ".join(columns) if columns else "(none)"
    for flag, column in (("--prompt_column", prompt_column), ("--answer_column", answer_column)):
        if column is not None and column not in columns:
            raise DatasetError(
                f"{source.description}: column {column!r} (given with {flag}) does not exist. "
                f"Columns found: {shown}. Pass one of these with {flag} "
                "(--prompt_column for the problem, --answer_column for the answer)."
            )
    problem = prompt_column or next((c for c in PROBLEM_COLUMNS if c in columns), None)
    answer = answer_column or next((c for c in ANSWER_COLUMNS if c in columns and c != problem), None)
    missing = [(what, looked) for what, col, looked in (
        ("problem", problem, PROBLEM_COLUMNS), ("answer", answer, ANSWER_COLUMNS)) if col is None]
    if missing:
        parts = "; ".join(f"no {what} column (looked for {', '.join(looked)})" for what, looked in missing)
        raise DatasetError(f"{source.description}: {parts}. Columns found: {shown}. Rename the "
                           f"columns or {FLAGS_HINT}.")
    return problem, answer


def problem_text(value: Any) -> tuple[str | None, str | None, str | None]:
    """(problem text, the source's system message, reason if bad) from a problem-column value:
    a string, or a chat message list whose last user message holds the problem."""
    if value is None:
        return None, None, "missing problem"
    if isinstance(value, dict) and "content" in value:
        value = [value]
    if isinstance(value, (list, tuple)):
        if not value or not all(isinstance(m, dict) for m in value):
            return None, None, "problem is an empty or malformed chat message list"
        users = [m for m in value if m.get("role", "user") == "user"]
        if not users:
            return None, None, "chat prompt has no user message"
        if not isinstance(users[-1].get("content"), str):
            return None, None, "user message has no text content"
        systems = [m for m in value if m.get("role") == "system"]
        return message_text(value, role="user"), (systems[0].get("content") if systems else None), None
    if isinstance(value, str):
        return value, None, None
    return None, None, f"problem is a {type(value).__name__}, not text"


def answer_text(value: Any, column: str) -> tuple[str | None, str | None]:
    """(answer string, reason if bad) from an answer-column value."""
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if value is None:
        return None, f"no answer (column {column!r} is missing or null)"
    if isinstance(value, bool):
        return None, f"answer is a boolean ({value}), not a value"
    if isinstance(value, int):
        return str(value), None
    if isinstance(value, float):
        return (str(int(value)) if value.is_integer() else repr(value)), None
    if not isinstance(value, str):
        return None, f"answer is a {type(value).__name__}, not text"
    text = value.strip()
    leaf = column.rsplit(".", 1)[-1]
    if "####" in text and leaf != "ground_truth":  # GSM8K: reasoning, then "#### 42"
        text = text.rsplit("####", 1)[1].strip().replace(",", "")
    elif leaf == "solution" and ("\\boxed" in text or "\\fbox" in text):
        boxed = extract_boxed(text)
        if boxed is None:
            return None, f"unreadable \\boxed{{}} answer in column {column!r}"
        text = boxed.strip()
    elif leaf == "solution" and ("\n" in text or len(text) > 100):
        return None, f"no \\boxed{{}} final answer in column {column!r} (a worked solution)"
    if not text:
        return None, f"empty answer (column {column!r})"
    return text, None


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, ``\\boxed 5``) in ``text``.

    Reads the ground truth out of a dataset's worked solution, so it accepts the spellings
    datasets use; the verifier's stricter reading of model output is ``math_normalize``'s."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = start + (6 if text.startswith("\\boxed", start) else 5)
    if i < len(text) and text[i] == " ":  # "\boxed 5"
        match = re.match(r" +([^\s$]+)", text[i:])
        return match.group(1) if match else None
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None
