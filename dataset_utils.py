"""Load math prompt datasets for DAPO training and evaluation, in one schema.

``load_dapo_dataset`` turns any supported source into a ``datasets.Dataset`` with exactly
four columns:

* ``prompt``: a chat message list (an optional system message, then one user message
  built with the prompt template),
* ``answer``: the ground-truth answer as a string,
* ``data_source``: where the row comes from (e.g. ``gsm8k``, ``math_dapo``, a file name),
* ``row_id``: a stable identity for error messages, ``"<source>:<0-based row index>"``
  (``"gsm8k_test:17"``, ``"train.jsonl:3"``), the index of the row in the original source.

Sources: a bundled offline short name (see ``BUNDLED_DATASETS``), a local file (``.jsonl``,
``.jsonl.gz``, ``.json``, ``.json.gz``, ``.parquet``) or a ``datasets.save_to_disk``
directory, or a Hugging Face Hub id (``owner/name``, optionally ``owner/name:config``).

Everything that can go wrong with the data (unknown name, missing file or column, empty
set, rows without a problem or an answer, offline hub access) raises ``DatasetError``
with a message that names the source, the row and the fix. The checks are cheap, so a
trainer can call the loader before it loads any model.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from chat_text import render_prompt

__all__ = [
    "BOXED_INSTRUCTION",
    "BUNDLED_DATASETS",
    "DAPO_MATH_HUB_ID",
    "DAPO_PROMPT_TEMPLATE",
    "DatasetError",
    "apply_template",
    "build_prompt",
    "describe_bundled",
    "extract_boxed",
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

DAPO_MATH_HUB_ID = "BytedTsinghua-SIA/DAPO-Math-17k"

TEMPLATES = ("dapo", "boxed", "none")

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

_FILE_EXTENSIONS = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")

# Hub datasets that need a config name; used when the caller gives none.
_DEFAULT_HUB_CONFIGS = {"open-r1/DAPO-Math-17k-Processed": "all"}

_BAD_ROW_EXAMPLES = 5


class DatasetError(ValueError):
    """A dataset cannot be used; the message says what is wrong and how to fix it."""


# --------------------------------------------------------------------------------------
# Bundled datasets
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Bundled:
    name: str
    rows: int
    role: str  # "train" or "eval"
    description: str
    file: str | None = None  # data/<file>; None for generated sets
    arithmetic_split: str | None = None
    arithmetic_size: int = 0
    arithmetic_kwargs: tuple = ()  # extra generate_arithmetic(...) settings, as (name, value) pairs


ARITHMETIC_TRAIN_SIZE = 2000
ARITHMETIC_TEST_SIZE = 200
ARITHMETIC_SEED = 0
# The easy set uses every 1-digit +/- fact; a quarter of the facts are held out for evaluation.
ARITHMETIC_EASY_KWARGS = (("operations", ("+", "-")), ("max_digits", 1), ("word_fraction", 0.0), ("test_percent", 25))
ARITHMETIC_EASY_SIZES = {"train": 101, "test": 25}  # every fact of each split

_BUNDLED: dict[str, _Bundled] = {
    b.name: b
    for b in [
        _Bundled("gsm8k", 7473, "train", "GSM8K train: grade-school word problems, integer answers (MIT)",
                 file="gsm8k_train.jsonl.gz"),
        _Bundled("gsm8k_test", 1319, "eval", "GSM8K test split (MIT)", file="gsm8k_test.jsonl.gz"),
        _Bundled("math500", 500, "eval", "MATH-500: test subset of Hendrycks MATH, LaTeX answers (MIT)",
                 file="math500.jsonl.gz"),
        _Bundled("aime24", 30, "eval", "AIME 2024 I+II, integer answers (the DAPO paper's benchmark)",
                 file="aime24.jsonl.gz"),
        _Bundled("aime25", 30, "eval", "AIME 2025 I+II, integer answers", file="aime25.jsonl.gz"),
        _Bundled("amc23", 40, "eval", "AMC 2023 problems", file="amc23.jsonl.gz"),
        _Bundled("arithmetic", ARITHMETIC_TRAIN_SIZE, "train",
                 "generated 1-2 digit +, -, x word/plain problems, integer answers (small models)",
                 arithmetic_split="train", arithmetic_size=ARITHMETIC_TRAIN_SIZE),
        _Bundled("arithmetic_test", ARITHMETIC_TEST_SIZE, "eval",
                 "held-out arithmetic problems, disjoint from `arithmetic`",
                 arithmetic_split="test", arithmetic_size=ARITHMETIC_TEST_SIZE),
        # Within reach of the embedded 135M model (the CPU demo): "What is 7 + 5?" / "What is 9 - 4?".
        _Bundled("arithmetic_easy", ARITHMETIC_EASY_SIZES["train"], "train",
                 "generated 1-digit + and - problems, plain form (the embedded CPU demo)",
                 arithmetic_split="train", arithmetic_size=ARITHMETIC_EASY_SIZES["train"],
                 arithmetic_kwargs=ARITHMETIC_EASY_KWARGS),
        _Bundled("arithmetic_easy_test", ARITHMETIC_EASY_SIZES["test"], "eval",
                 "held-out 1-digit + and - problems, disjoint from `arithmetic_easy`",
                 arithmetic_split="test", arithmetic_size=ARITHMETIC_EASY_SIZES["test"],
                 arithmetic_kwargs=ARITHMETIC_EASY_KWARGS),
    ]
}

#: Short name -> description of every dataset that loads offline.
BUNDLED_DATASETS: dict[str, str] = {
    name: f"{b.description} [{b.role}, {b.rows} rows]" for name, b in _BUNDLED.items()
}

# name + split -> bundled name, for `load_dapo_dataset("gsm8k", split="test")`.
_SPLIT_ALIASES = {("gsm8k", "test"): "gsm8k_test", ("arithmetic", "test"): "arithmetic_test",
                  ("arithmetic_easy", "test"): "arithmetic_easy_test"}


def describe_bundled() -> str:
    """A plain-text table of the bundled offline datasets (for ``--help`` and the README)."""
    width = max(len(n) for n in _BUNDLED)
    lines = [f"{'name'.ljust(width)}  {'rows':>5}  {'use':5}  description",
             f"{'-' * width}  {'-' * 5}  {'-' * 5}  {'-' * 11}"]
    for name, b in _BUNDLED.items():
        lines.append(f"{name.ljust(width)}  {b.rows:>5}  {b.role:5}  {b.description}")
    return "\n".join(lines)


def _alternatives_hint() -> str:
    return (
        "Bundled offline datasets: " + ", ".join(_BUNDLED) + " (e.g. --dataset_name gsm8k, "
        "--dataset_name arithmetic); or a local file: --dataset_name path/to/data.jsonl "
        "(.jsonl, .jsonl.gz, .json, .parquet)."
    )


# --------------------------------------------------------------------------------------
# Prompt text helpers
# --------------------------------------------------------------------------------------


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
    if template not in ("dapo", "boxed") and "{problem}" not in template:
        raise DatasetError(
            f"unknown prompt template {template!r}: use one of {', '.join(TEMPLATES)} "
            "or a string containing '{problem}'"
        )
    core = strip_answer_instruction(extract_problem(problem).strip())
    if template == "dapo":
        return DAPO_PROMPT_TEMPLATE.replace("{problem}", core)
    if template == "boxed":
        return f"{core}\n{BOXED_INSTRUCTION}"
    return template.replace("{problem}", core)


def build_prompt(problem: str, template: str = "dapo", system_prompt: str | None = None) -> list[dict]:
    """Chat message list for one problem: optional system message, then the user message."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": apply_template(problem, template)})
    return messages


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, ``\\boxed 5``) in ``text``."""
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


# --------------------------------------------------------------------------------------
# Raw sources: a list of dicts (JSON files, bundled) or an Arrow table (parquet, hub)
# --------------------------------------------------------------------------------------


class _RowsSource:
    def __init__(self, rows: list[dict], label: str, description: str, indices: list[int] | None = None):
        self.rows = rows
        self.label = label  # prefix of row_id
        self.description = description  # for error messages
        self.indices = indices if indices is not None else list(range(len(rows)))

    @property
    def num_rows(self) -> int:
        return len(self.rows)

    def columns(self) -> list[str]:
        if getattr(self, "_columns", None) is None:
            names: dict[str, None] = {}
            for row in self.rows:
                for key, value in row.items():
                    names[key] = None
                    if isinstance(value, dict):
                        for sub in value:
                            names[f"{key}.{sub}"] = None
            self._columns = list(names)
        return self._columns

    def values(self, path: str) -> list:
        out = []
        for row in self.rows:
            if path in row:
                out.append(row[path])
                continue
            value: Any = row
            for part in path.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            out.append(value)
        return out


class _ArrowSource:
    def __init__(self, table, label: str, description: str, indices: list[int] | None = None):
        self.table = table
        self.label = label
        self.description = description
        self.indices = indices if indices is not None else list(range(table.num_rows))

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    def columns(self) -> list[str]:
        import pyarrow as pa

        names = []
        for field in self.table.schema:
            names.append(field.name)
            if pa.types.is_struct(field.type):
                names.extend(f"{field.name}.{sub.name}" for sub in field.type)
        return names

    def _column(self, path: str):
        import pyarrow.compute as pc

        if path in self.table.column_names:
            return self.table.column(path)
        top, *rest = path.split(".")
        column = self.table.column(top)
        for part in rest:
            column = pc.struct_field(column, part)
        return column

    def values(self, path: str) -> list:
        return self._column(path).to_pylist()

    def dedup_indices(self, paths: Sequence[str]) -> list[int] | None:
        """Positions of the first occurrence of each distinct combination of ``paths``,
        computed in Arrow (fast on DAPO-Math-17k's 1.8M rows); None if unsupported."""
        import pyarrow as pa

        try:
            keys = {f"k{i}": _arrow_text_key(self._column(p)) for i, p in enumerate(paths)}
            if any(k is None for k in keys.values()):
                return None
            keys["__pos"] = pa.array(range(self.table.num_rows), type=pa.int64())
            grouped = pa.table(keys).group_by([k for k in keys if k != "__pos"], use_threads=False)
            first = grouped.aggregate([("__pos", "min")]).column("__pos_min").to_pylist()
        except (pa.ArrowException, KeyError, TypeError, ValueError) as exc:  # pragma: no cover
            logger.debug("arrow dedup unavailable (%s); deduplicating in Python", exc)
            return None
        return sorted(first)

    def take(self, positions: list[int]) -> _ArrowSource:
        import pyarrow as pa

        table = self.table.take(pa.array(positions, type=pa.int64()))
        return _ArrowSource(table, self.label, self.description, [self.indices[p] for p in positions])


def _arrow_text_key(column):
    """A string array usable as a group-by key for ``column``, or None."""
    import pyarrow as pa
    import pyarrow.compute as pc

    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    kind = array.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return array
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        return pc.cast(array, pa.string())
    if (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and pa.types.is_struct(kind.value_type) \
            and kind.value_type.get_field_index("content") >= 0:
        lengths = pc.fill_null(pc.list_value_length(array), 0)
        contents = pc.struct_field(pc.list_flatten(array), "content")
        if len(array) and pc.min(lengths).as_py() == 1 and pc.max(lengths).as_py() == 1:
            return contents  # one message per row (DAPO): zero-copy
        offsets = pa.array([0] + pc.cumulative_sum(lengths).to_pylist(), type=pa.int32())
        return pc.binary_join(pa.ListArray.from_arrays(offsets, contents), "\x1e")
    return None


def _source_name(path: str) -> str:
    return os.path.basename(os.path.normpath(path))


def _read_text(path: str) -> str:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise DatasetError(f"cannot read dataset file {path}: {exc}") from exc


def _parse_jsonl(text: str, path: str) -> list[dict]:
    rows = []
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}, line {line_no}: invalid JSON ({exc.msg}); "
                               "each line of a .jsonl file must be one JSON object") from exc
        if not isinstance(row, dict):
            raise DatasetError(f"{path}, line {line_no}: expected a JSON object "
                               f"(one row with named columns), got {type(row).__name__}")
        rows.append(row)
    return rows


def _parse_json(text: str, path: str, split: str) -> list[dict]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # a JSON-lines file named .json
            return _parse_jsonl(text, path)
        raise DatasetError(f"{path}: invalid JSON ({exc.msg}, line {exc.lineno})") from exc
    if isinstance(data, dict):
        for key in (split, "data", "rows", "examples", "train"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
        else:
            lists = {k: v for k, v in data.items() if isinstance(v, list)}
            if lists and len(lists) == len(data) and len({len(v) for v in lists.values()}) == 1:
                keys = list(lists)
                data = [dict(zip(keys, values)) for values in zip(*lists.values())]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DatasetError(
            f"{path}: unsupported JSON layout; expected a list of objects (rows), an object "
            "with such a list under 'data', or an object of equal-length column lists"
        )
    return data


def _load_file(path: str, split: str):
    name = _source_name(path)
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise DatasetError(f"cannot read parquet file {path}: {exc}") from exc
        return _ArrowSource(table, name, f"file {path}")
    text = _read_text(path)
    if path.endswith((".jsonl", ".jsonl.gz")):
        rows = _parse_jsonl(text, path)
    else:
        rows = _parse_json(text, path, split)
    return _RowsSource(rows, name, f"file {path}")


def _load_from_disk(path: str, split: str):
    import datasets

    try:
        loaded = datasets.load_from_disk(path)
    except Exception as exc:
        raise DatasetError(
            f"{path} is a directory but not a saved dataset ({exc}); pass a data file "
            f"({', '.join(_FILE_EXTENSIONS)}) or a datasets.save_to_disk directory"
        ) from exc
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DatasetError(f"{path} has no split {split!r}; its splits: {', '.join(loaded)}")
        loaded = loaded[split]
    return _ArrowSource(loaded.with_format("arrow")[:], _source_name(path), f"saved dataset {path}")


def _load_bundled(name: str):
    spec = _BUNDLED[name]
    if spec.arithmetic_split:
        from arithmetic_data import generate_arithmetic

        rows = generate_arithmetic(spec.arithmetic_size, split=spec.arithmetic_split, seed=ARITHMETIC_SEED,
                                   **dict(spec.arithmetic_kwargs))
    else:
        path = os.path.join(DATA_DIR, spec.file)
        if not os.path.exists(path):
            raise DatasetError(f"bundled dataset file {path} is missing; reinstall the project "
                               "or rebuild it with data/make_bundled.py")
        rows = _parse_jsonl(_read_text(path), path)
    indices = [int(r.get("idx", i)) for i, r in enumerate(rows)]
    rows = [{"problem": r["problem"], "answer": r["answer"]} for r in rows]
    return _RowsSource(rows, name, f"bundled dataset {name!r}", indices)


# --------------------------------------------------------------------------------------
# Hub
# --------------------------------------------------------------------------------------

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(?::[\w.-]+)?$")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _hub_offline_flag() -> str | None:
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if _env_true(name):
            return name
    return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Quick check (DNS + TCP) that the hub host answers; True when a proxy is configured
    (we cannot tell) so that datasets' own error handling applies."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _maybe_cached(hub_id: str) -> bool:
    """Whether a local Hugging Face cache may hold ``hub_id`` (so offline loading can work)."""
    hf_home = os.path.expanduser(os.environ.get("HF_HOME", os.path.join("~", ".cache", "huggingface")))
    datasets_cache = os.path.expanduser(os.environ.get("HF_DATASETS_CACHE", os.path.join(hf_home, "datasets")))
    hub_cache = os.path.expanduser(os.environ.get("HF_HUB_CACHE", os.environ.get(
        "HUGGINGFACE_HUB_CACHE", os.path.join(hf_home, "hub"))))
    wanted = {hub_id.replace("/", "___").lower(), ("datasets--" + hub_id.replace("/", "--")).lower()}
    for directory in (datasets_cache, hub_cache):
        try:
            if any(entry.lower() in wanted for entry in os.listdir(directory)):
                return True
        except OSError:
            continue
    return False


def _offline_error(hub_id: str, why: str) -> DatasetError:
    return DatasetError(
        f"cannot load {hub_id!r} from the Hugging Face Hub: {why}. " + _alternatives_hint()
    )


def _load_hub(name: str, split: str):
    hub_id, _, config = name.partition(":")
    config = config or _DEFAULT_HUB_CONFIGS.get(hub_id)
    flag = _hub_offline_flag()
    if flag and not _maybe_cached(hub_id):
        raise _offline_error(hub_id, f"offline mode ({flag}=1) and no copy in the local Hugging Face cache")
    if not flag and not _hub_reachable():
        raise _offline_error(hub_id, "no network connection to the Hub (set HF_HUB_OFFLINE=1 "
                                     "to use a copy in the local Hugging Face cache)")
    import datasets

    try:
        loaded = datasets.load_dataset(hub_id, config, split=split)
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        if flag and ("offline" in text.lower() or "couldn't reach" in text.lower()
                     or isinstance(exc, ConnectionError)):
            raise _offline_error(hub_id, f"offline mode ({flag}=1) and not in the local cache") from exc
        if isinstance(exc, ConnectionError):
            raise _offline_error(hub_id, f"the Hub is unreachable ({exc})") from exc
        hint = ""
        if "config" in text.lower():
            hint = " Choose a config with --dataset_name owner/name:config."
        if "split" in text.lower():
            hint += " Check the split name (split=...)."
        raise DatasetError(f"cannot load hub dataset {hub_id!r} (config {config!r}, split {split!r}): "
                           f"{text}.{hint} " + _alternatives_hint()) from exc
    label = hub_id if split == "train" else f"{hub_id}[{split}]"
    return _ArrowSource(loaded.with_format("arrow")[:], label, f"hub dataset {hub_id!r} (split {split!r})")


# --------------------------------------------------------------------------------------
# Column layouts
# --------------------------------------------------------------------------------------

_PROBLEM_COLUMNS = ("problem", "question", "prompt", "source_prompt", "query", "instruction", "input")
_ANSWER_COLUMNS = ("reward_model.ground_truth", "answer", "ground_truth", "final_answer",
                   "expected_answer", "target", "solution")

_FLAGS_HINT = "set the columns explicitly with --prompt_column / --answer_column " \
              "(prompt_column= / answer_column=; dotted paths like reward_model.ground_truth work)"


def _resolve_columns(source, prompt_column: str | None, answer_column: str | None) -> tuple[str, str]:
    columns = source.columns()
    shown = ", ".join(columns) if columns else "(none)"
    for flag, column in (("--prompt_column", prompt_column), ("--answer_column", answer_column)):
        if column is not None and column not in columns:
            raise DatasetError(
                f"{source.description}: column {column!r} (given with {flag}) does not exist. "
                f"Columns found: {shown}. Pass one of these with {flag} "
                "(--prompt_column for the problem, --answer_column for the answer)."
            )
    problem = prompt_column or next((c for c in _PROBLEM_COLUMNS if c in columns), None)
    answer = answer_column or next((c for c in _ANSWER_COLUMNS if c in columns and c != problem), None)
    missing = [(what, looked) for what, col, looked in (
        ("problem", problem, _PROBLEM_COLUMNS), ("answer", answer, _ANSWER_COLUMNS)) if col is None]
    if missing:
        parts = "; ".join(f"no {what} column (looked for {', '.join(looked)})" for what, looked in missing)
        raise DatasetError(f"{source.description}: {parts}. Columns found: {shown}. Rename the "
                           f"columns or {_FLAGS_HINT}.")
    return problem, answer


def _problem_text(value: Any) -> tuple[str | None, str | None, str | None]:
    """(problem text, source system message, reason if bad) from a problem-column value."""
    if value is None:
        return None, None, "missing problem"
    if isinstance(value, dict) and "content" in value:
        value = [value]
    if isinstance(value, (list, tuple)):
        if not value or not all(isinstance(m, dict) for m in value):
            return None, None, "problem is an empty or malformed chat message list"
        users = [m for m in value if m.get("role", "user") == "user"]
        systems = [m for m in value if m.get("role") == "system"]
        if not users:
            return None, None, "chat prompt has no user message"
        content = users[-1].get("content")
        system = systems[0].get("content") if systems else None
        if not isinstance(content, str):
            return None, None, "user message has no text content"
        return content, system, None
    if isinstance(value, str):
        return value, None, None
    return None, None, f"problem is a {type(value).__name__}, not text"


def _answer_text(value: Any, column: str) -> tuple[str | None, str | None]:
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


# --------------------------------------------------------------------------------------
# Prompt-length filter
# --------------------------------------------------------------------------------------


def _prompt_lengths(tokenizer, prompts: list[list[dict]]) -> list[int]:
    texts = [render_prompt(tokenizer, p) for p in prompts]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


# --------------------------------------------------------------------------------------
# Main entry point
# --------------------------------------------------------------------------------------


def _open_source(name_or_path: str, split: str):
    """Return (source, kind) with kind in {"bundled", "file", "hub"}."""
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise DatasetError("no dataset given; " + _alternatives_hint())
    name = name_or_path.strip()
    bundled = _SPLIT_ALIASES.get((name, split), name)
    if bundled in _BUNDLED:
        if name in ("gsm8k", "arithmetic") and split not in ("train", "test"):
            raise DatasetError(f"bundled dataset {name!r} has splits 'train' and 'test', not {split!r}")
        return _load_bundled(bundled), "bundled"
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        return _load_from_disk(path, split), "file"
    if os.path.isfile(path):
        if not path.endswith(_FILE_EXTENSIONS):
            raise DatasetError(f"{path}: unsupported file type; use one of {', '.join(_FILE_EXTENSIONS)}")
        return _load_file(path, split), "file"
    if path.endswith(_FILE_EXTENSIONS) or name.startswith((".", "~", os.sep)) or name.count("/") > 1:
        raise DatasetError(f"dataset file not found: {path}. " + _alternatives_hint())
    if _HUB_ID_RE.match(name):
        return _load_hub(name, split), "hub"
    raise DatasetError(
        f"unknown dataset {name!r}: not a bundled name, an existing file or a hub id "
        "(owner/name). " + _alternatives_hint()
    )


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
    if template not in TEMPLATES and "{problem}" not in str(template):
        raise DatasetError(f"unknown prompt template {template!r}: use one of {', '.join(TEMPLATES)} "
                           "or a string containing '{problem}'")
    if max_samples is not None and max_samples <= 0:
        raise DatasetError(f"max_samples must be a positive number, got {max_samples}")
    if max_prompt_length is not None:
        if max_prompt_length <= 0:
            raise DatasetError(f"max_prompt_length must be positive, got {max_prompt_length}")
        if tokenizer is None:
            raise DatasetError("max_prompt_length needs a tokenizer to count prompt tokens")

    source, kind = _open_source(name_or_path, split)
    if source.num_rows == 0:
        raise DatasetError(f"{source.description} is empty (0 rows); nothing to train or evaluate on. "
                           + _alternatives_hint())
    problem_col, answer_col = _resolve_columns(source, prompt_column, answer_column)
    data_source_col = "data_source" if "data_source" in source.columns() else None
    default_source = source.label
    total = source.num_rows
    logger.info("%s: %d rows; problem from %r, answer from %r", source.description, total, problem_col, answer_col)

    # Exact-duplicate removal on the raw columns; in Arrow for big tables (DAPO-Math-17k).
    if dedup and isinstance(source, _ArrowSource):
        keep = source.dedup_indices([problem_col, answer_col])
        if keep is not None and len(keep) < source.num_rows:
            source = source.take(keep)

    problems = source.values(problem_col)
    answers = source.values(answer_col)
    sources = source.values(data_source_col) if data_source_col else [None] * len(problems)

    records: list[tuple[list[dict], str, str, str]] = []
    bad: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for raw_problem, raw_answer, data_source, index in zip(problems, answers, sources, source.indices):
        row_id = f"{source.label}:{index}"
        text, source_system, reason = _problem_text(raw_problem)
        if reason is None and not (extract_problem(text).strip() if template != "none" else text.strip()):
            reason = "empty problem"
        answer = None
        if reason is None:
            answer, reason = _answer_text(raw_answer, answer_col)
        if reason is not None:
            bad.append((row_id, reason))
            continue
        user = apply_template(text, template)
        if dedup:
            key = (user, answer)
            if key in seen:
                continue
            seen.add(key)
        system = system_prompt or source_system
        prompt = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        records.append((prompt, answer, data_source if isinstance(data_source, str) and data_source
                        else default_source, row_id))

    if bad:
        examples = "; ".join(f"{rid}: {why}" for rid, why in bad[:_BAD_ROW_EXAMPLES])
        more = f" (and {len(bad) - _BAD_ROW_EXAMPLES} more)" if len(bad) > _BAD_ROW_EXAMPLES else ""
        if not skip_bad_rows:
            raise DatasetError(
                f"{source.description}: {len(bad)} bad row(s) (row_id = source:0-based row index): "
                f"{examples}{more}. Fix the data, {_FLAGS_HINT}, or skip such rows with "
                "skip_bad_rows=True (--skip_bad_rows)."
            )
        logger.warning("%s: skipped %d bad row(s): %s%s", source.description, len(bad), examples, more)
    if dedup:
        removed = total - len(records) - len(bad)
        if removed or kind == "hub":
            logger.info("%s: deduplicated %d -> %d rows (%d duplicates removed)",
                        source.description, total - len(bad), len(records), removed)
    if not records:
        raise DatasetError(f"{source.description}: no usable rows left ({len(bad)} bad row(s) skipped)")

    order = list(range(len(records)))
    if shuffle:
        import random

        random.Random(seed).shuffle(order)

    if max_prompt_length is not None:
        kept, checked, dropped, longest = [], 0, 0, 0
        chunk = 512
        for start in range(0, len(order), chunk):
            part = order[start : start + chunk]
            lengths = _prompt_lengths(tokenizer, [records[i][0] for i in part])
            for i, length in zip(part, lengths):
                checked += 1
                longest = max(longest, length)
                if length <= max_prompt_length:
                    kept.append(i)
                else:
                    dropped += 1
                if max_samples is not None and len(kept) >= max_samples:
                    break
            if max_samples is not None and len(kept) >= max_samples:
                break
        logger.info("prompt-length filter (max_prompt_length=%d tokens): dropped %d of %d prompts checked "
                    "(longest %d tokens)", max_prompt_length, dropped, checked, longest)
        if not kept:
            raise DatasetError(
                f"{source.description}: all {checked} prompts are longer than max_prompt_length="
                f"{max_prompt_length} tokens (longest {longest}); raise --max_prompt_length"
            )
        order = kept
    if max_samples is not None:
        order = order[:max_samples]

    import datasets

    result = datasets.Dataset.from_dict({
        "prompt": [records[i][0] for i in order],
        "answer": [records[i][1] for i in order],
        "data_source": [records[i][2] for i in order],
        "row_id": [records[i][3] for i in order],
    })
    logger.info("loaded %d prompts from %s (template=%s)", len(result), source.description,
                template if template in TEMPLATES else "custom")
    return result
