"""How a DAPO training set is built: prompt templates and ``load_dapo_dataset``.

``load_dapo_dataset`` turns any supported source into a ``datasets.Dataset`` with exactly
four columns, the schema the trainer, the verifier and the evaluation read:

* ``prompt``: a chat message list (an optional system message, then one user message
  built with the prompt template),
* ``answer``: the ground-truth answer as a string,
* ``data_source``: where the row comes from (e.g. ``gsm8k``, ``math_dapo``, a file name),
* ``row_id``: a stable identity for error messages, ``"<source>:<0-based row index>"``
  (``"gsm8k_test:17"``, ``"train.jsonl:3"``), the index of the row in the original source.

Sources (``data_sources``): a bundled offline short name (see ``BUNDLED_DATASETS``), a local
file (``.jsonl``, ``.jsonl.gz``, ``.json``, ``.json.gz``, ``.parquet``) or a
``datasets.save_to_disk`` directory, or a Hugging Face Hub id (``owner/name``, optionally
``owner/name:config``). Column layouts (``data_columns``): the problem and answer columns
are found by name, or given with ``prompt_column`` / ``answer_column``.

Everything that can go wrong with the data (unknown name, missing file or column, empty
set, rows without a problem or an answer, offline hub access) raises ``DatasetError``
with a message that names the source, the row and the fix. The checks are cheap, so a
trainer can call the loader before it loads any model.
"""

from __future__ import annotations

import logging
import random
import re

from chat_text import render_prompt
from config_checks import PROMPT_TEMPLATES, check_prompt_template
from data_columns import FLAGS_HINT, answer_text, problem_text, resolve_columns
from data_sources import BUNDLED_DATASETS, DatasetError, alternatives_hint, describe_bundled, open_source

__all__ = [
    "BOXED_INSTRUCTION",
    "BUNDLED_DATASETS",
    "DAPO_MATH_HUB_ID",
    "DAPO_PROMPT_TEMPLATE",
    "DatasetError",
    "apply_template",
    "build_prompt",
    "describe_bundled",
    "extract_problem",
    "load_dapo_dataset",
    "strip_answer_instruction",
]

logger = logging.getLogger("dapo.data")

#: The exact user prompt of DAPO-Math-17k; ``{problem}`` is replaced by the problem text.
DAPO_PROMPT_TEMPLATE = (
    "Solve the following math problem step by step. The last line of your response should "
    "be of the form Answer: $Answer (without quotes) where $Answer is the answer to the "
    "problem.\n\n{problem}\n\nRemember to put your answer on its own line after \"Answer:\"."
)

#: The answer-format instruction of the boxed convention (MATH-500, AIME, AMC copies).
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

#: The DAPO paper's training set on the Hugging Face Hub.
DAPO_MATH_HUB_ID = "BytedTsinghua-SIA/DAPO-Math-17k"


_BAD_ROW_EXAMPLES = 5
_LENGTH_CHUNK = 512  # prompts tokenized per call of the prompt-length filter


# --------------------------------------------------------------------------------------
# Prompt templates
# --------------------------------------------------------------------------------------


def _check_template(template: str) -> None:
    if check_prompt_template(template):
        raise DatasetError(f"unknown prompt template {template!r}: use one of {', '.join(PROMPT_TEMPLATES)} "
                           "or a string containing '{problem}'")


def _words_regex(text: str) -> str:
    """Regex for ``text`` with any run of whitespace allowed where it has whitespace."""
    return r"\s+".join(re.escape(w) for w in text.split())


_DAPO_PREFIX, _DAPO_SUFFIX = DAPO_PROMPT_TEMPLATE.split("{problem}")
_DAPO_TEMPLATE_RE = re.compile(
    r"^\s*" + _words_regex(_DAPO_PREFIX) + r"\s*(?P<problem>.*?)\s*" + _words_regex(_DAPO_SUFFIX) + r"\s*$",
    re.DOTALL,
)

# The last sentence/line holding a \boxed answer instruction.
_TRAILING_BOXED_RE = re.compile(r"(?:^|(?<=[\n.?!]))[^\n.?!]*\\boxed(?![a-zA-Z])[^\n]*$")
_LEADING_BOXED_RE = re.compile(r"^\s*[^\n]*\\boxed\s*\{\s*\}[^\n]*\n")
_INSTRUCTION_WORDS_RE = re.compile(
    r"\b(answer|answers|put|output|within|enclose|write|place|mark|present|return|response|final)\b",
    re.IGNORECASE,
)
_TRAILING_STEP_BY_STEP_RE = re.compile(
    r"(?:^|(?<=[\n.?!]))\s*(?:please\s+)?(?:let'?s|let\s+us|you\s+should|please)?\s*"
    r"(?:reason|think|solve\s+(?:it|this))\s+step\s+by\s+step\s*[.!]?\s*$",
    re.IGNORECASE,
)


def extract_problem(text: str) -> str:
    """If ``text`` is a prompt built with ``DAPO_PROMPT_TEMPLATE``, return the problem in it;
    otherwise return ``text`` unchanged (so the template is never applied twice)."""
    match = _DAPO_TEMPLATE_RE.match(text)
    return match.group("problem") if match else text


def strip_answer_instruction(text: str) -> str:
    """Remove a trailing (or leading) answer-format instruction such as "Please reason
    step by step, and put your final answer within \\boxed{}." and its common variants
    ("Let's think step by step and output the final answer within \\boxed{}.", "Put your
    final answer in $\\boxed{}$", "Return your final response as 'Final Answer:
    \\boxed{<answer>}'...")."""
    out = text.rstrip()
    for _ in range(3):  # an instruction can be split over two sentences
        match = _TRAILING_BOXED_RE.search(out)
        if match and _INSTRUCTION_WORDS_RE.search(match.group(0)) and out[: match.start()].strip():
            out = out[: match.start()].rstrip()
            continue
        match = _TRAILING_STEP_BY_STEP_RE.search(out)
        if match and out[: match.start()].strip():
            out = out[: match.start()].rstrip()
            continue
        break
    match = _LEADING_BOXED_RE.match(out)
    if match and _INSTRUCTION_WORDS_RE.search(match.group(0)) and out[match.end():].strip():
        out = out[match.end():].lstrip()
    return out


def apply_template(problem: str, template: str = "dapo") -> str:
    """Build the user message for ``problem``.

    ``template``: ``"dapo"`` (DAPO_PROMPT_TEMPLATE, the set's own answer instruction
    stripped), ``"boxed"`` (the problem followed by BOXED_INSTRUCTION, for a boxed
    verifier), ``"none"`` (the text as is) or a custom string containing ``{problem}``.
    A problem already wrapped in the DAPO template is unwrapped first (except for "none").
    """
    if template == "none":
        return problem
    _check_template(template)
    core = strip_answer_instruction(extract_problem(problem).strip())
    if template == "dapo":
        return DAPO_PROMPT_TEMPLATE.replace("{problem}", core)
    if template == "boxed":
        return f"{core}\n{BOXED_INSTRUCTION}"
    return template.replace("{problem}", core)


def build_prompt(problem: str, template: str = "dapo", system_prompt: str | None = None) -> list[dict]:
    """The chat conversation for one problem: an optional system message, then the user message
    built with ``template``. ``chat_text.render_prompt`` turns it into the text the model sees."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": apply_template(problem, template)})
    return messages


# --------------------------------------------------------------------------------------
# The loader
# --------------------------------------------------------------------------------------


def load_dapo_dataset(
    name_or_path: str,
    split: str = "train",
    *,
    prompt_column: str | None = None,
    answer_column: str | None = None,
    template: str = "dapo",
    system_prompt: str | None = None,
    max_samples: int | None = None,
    shuffle: bool = False,
    seed: int = 42,
    tokenizer=None,
    max_prompt_length: int | None = None,
    skip_bad_rows: bool = False,
    dedup: bool = True,
):
    """Load a math dataset as ``prompt`` / ``answer`` / ``data_source`` / ``row_id``.

    Args:
        name_or_path: bundled short name (``BUNDLED_DATASETS``), local file (.jsonl,
            .jsonl.gz, .json, .json.gz, .parquet) or save_to_disk directory, or a hub id
            ``owner/name`` (``owner/name:config`` for a config).
        split: split of a hub dataset; for the bundled ``gsm8k`` / ``arithmetic``,
            ``"test"`` selects ``gsm8k_test`` / ``arithmetic_test``.
        prompt_column, answer_column: override the automatic column detection; dotted
            paths (``reward_model.ground_truth``) reach into struct columns.
        template: ``"dapo"``, ``"boxed"``, ``"none"`` or a string with ``{problem}``
            (see ``apply_template``).
        system_prompt: prepended as a system message (otherwise a system message of the
            source's chat prompt is kept).
        max_samples: keep at most this many rows (after shuffling and filtering).
        shuffle, seed: seeded shuffle of the rows.
        tokenizer, max_prompt_length: drop prompts whose chat-templated token count
            exceeds ``max_prompt_length`` (the count of dropped rows is logged).
        skip_bad_rows: skip (and count) rows with no problem or no answer instead of
            raising ``DatasetError``.
        dedup: drop exact duplicate (problem, answer) rows (DAPO-Math-17k holds each of
            its ~17.9k prompts ~100 times).

    Raises:
        DatasetError: any problem with the source or its rows, with a fix in the message.
    """
    _check_arguments(template, max_samples, tokenizer, max_prompt_length)
    source, kind = open_source(name_or_path, split)
    if source.num_rows == 0:
        raise DatasetError(f"{source.description} is empty (0 rows); nothing to train or evaluate on. "
                           + alternatives_hint())
    problem_col, answer_col = resolve_columns(source, prompt_column, answer_column)
    total = source.num_rows
    logger.info("%s: %d rows; problem from %r, answer from %r", source.description, total, problem_col, answer_col)
    if dedup:
        source = source.deduplicated([problem_col, answer_col])

    records, bad = _build_records(source, problem_col, answer_col, template, system_prompt, dedup)
    _report_bad_rows(source.description, bad, skip_bad_rows)
    if dedup:
        removed = total - len(records) - len(bad)
        if removed or kind == "hub":
            logger.info("%s: deduplicated %d -> %d rows (%d duplicates removed)",
                        source.description, total - len(bad), len(records), removed)
    if not records:
        raise DatasetError(f"{source.description}: no usable rows left ({len(bad)} bad row(s) skipped)")

    order = list(range(len(records)))
    if shuffle:
        random.Random(seed).shuffle(order)
    if max_prompt_length is not None:
        order = _fitting_prompts(records, order, tokenizer, max_prompt_length, max_samples, source.description)
    if max_samples is not None:
        order = order[:max_samples]

    import datasets  # only now: the checks above stay fast and need no heavy import

    result = datasets.Dataset.from_list([records[i] for i in order])
    logger.info("loaded %d prompts from %s (template=%s)", len(result), source.description,
                template if template in PROMPT_TEMPLATES else "custom")
    return result


def _check_arguments(template, max_samples, tokenizer, max_prompt_length) -> None:
    _check_template(template)
    if max_samples is not None and max_samples <= 0:
        raise DatasetError(f"max_samples must be a positive number, got {max_samples}")
    if max_prompt_length is not None:
        if max_prompt_length <= 0:
            raise DatasetError(f"max_prompt_length must be positive, got {max_prompt_length}")
        if tokenizer is None:
            raise DatasetError("max_prompt_length needs a tokenizer to count prompt tokens")


def _build_records(source, problem_col: str, answer_col: str, template: str, system_prompt: str | None,
                   dedup: bool) -> tuple[list[dict], list[tuple[str, str]]]:
    """(records, bad rows): a ``prompt`` / ``answer`` / ``data_source`` / ``row_id`` dict per usable
    row, and (row_id, reason) for each row without a usable problem or answer."""
    problems = source.values(problem_col)
    answers = source.values(answer_col)
    sources = source.values("data_source") if "data_source" in source.columns() else [None] * len(problems)
    records, bad, seen = [], [], set()
    for raw_problem, raw_answer, data_source, index in zip(problems, answers, sources, source.indices, strict=True):
        row_id = f"{source.label}:{index}"
        text, source_system, reason = problem_text(raw_problem)
        if reason is None and not (extract_problem(text).strip() if template != "none" else text.strip()):
            reason = "empty problem"
        answer = None
        if reason is None:
            answer, reason = answer_text(raw_answer, answer_col)
        if reason is not None:
            bad.append((row_id, reason))
            continue
        prompt = build_prompt(text, template, system_prompt or source_system)
        if dedup:  # rows that differ only in form (with or without the template) give the same prompt
            key = (prompt[-1]["content"], answer)
            if key in seen:
                continue
            seen.add(key)
        if not (isinstance(data_source, str) and data_source):
            data_source = source.label
        records.append({"prompt": prompt, "answer": answer, "data_source": data_source, "row_id": row_id})
    return records, bad


def _report_bad_rows(description: str, bad: list[tuple[str, str]], skip_bad_rows: bool) -> None:
    if not bad:
        return
    examples = "; ".join(f"{rid}: {why}" for rid, why in bad[:_BAD_ROW_EXAMPLES])
    more = f" (and {len(bad) - _BAD_ROW_EXAMPLES} more)" if len(bad) > _BAD_ROW_EXAMPLES else ""
    if not skip_bad_rows:
        raise DatasetError(
            f"{description}: {len(bad)} bad row(s) (row_id = source:0-based row index): "
            f"{examples}{more}. Fix the data, {FLAGS_HINT}, or skip such rows with "
            "skip_bad_rows=True (--skip_bad_rows)."
        )
    logger.warning("%s: skipped %d bad row(s): %s%s", description, len(bad), examples, more)


def _fitting_prompts(records, order: list[int], tokenizer, max_prompt_length: int, max_samples: int | None,
                     description: str) -> list[int]:
    """The records of ``order`` whose prompt, as the model sees it, has at most
    ``max_prompt_length`` tokens; stops once ``max_samples`` fit, so a large set is not
    tokenized in full to take a few rows."""
    kept, checked, longest = [], 0, 0
    for start in range(0, len(order), _LENGTH_CHUNK):
        part = order[start : start + _LENGTH_CHUNK]
        texts = [render_prompt(tokenizer, records[i]["prompt"]) for i in part]
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        for i, length in zip(part, lengths, strict=True):
            checked += 1
            longest = max(longest, length)
            if length <= max_prompt_length:
                kept.append(i)
            if max_samples is not None and len(kept) >= max_samples:
                break
        if max_samples is not None and len(kept) >= max_samples:
            break
    logger.info("prompt-length filter (max_prompt_length=%d tokens): dropped %d of %d prompts checked "
                "(longest %d tokens)", max_prompt_length, checked - len(kept), checked, longest)
    if not kept:
        raise DatasetError(
            f"{description}: all {checked} prompts are longer than max_prompt_length="
            f"{max_prompt_length} tokens (longest {longest}); raise --max_prompt_length"
        )
    return kept
