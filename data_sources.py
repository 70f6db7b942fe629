"""Where a dataset comes from: bundled offline sets, local files, saved datasets and the Hub.

``open_source(name_or_path, split)`` finds the dataset a user named and reads it into a
source: its rows (a list of dicts, or an Arrow table for the large formats), a label for
row ids (``"gsm8k_test"``, ``"train.jsonl"``) and a description for error messages. What
the columns mean is decided later (``data_columns``); how the rows become DAPO prompts is
``dataset_utils``.

Every failure raises ``DatasetError`` with a message that names the dataset and the fix,
including the offline alternatives, so a user without network sees what to run instead.
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

__all__ = [
    "BUNDLED_DATASETS",
    "FILE_EXTENSIONS",
    "DatasetError",
    "alternatives_hint",
    "describe_bundled",
    "open_source",
]

logger = logging.getLogger("dapo.data")

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

FILE_EXTENSIONS = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")

# Hub datasets that need a config name; used when the caller gives none.
_DEFAULT_HUB_CONFIGS = {"open-r1/DAPO-Math-17k-Processed": "all"}

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(?::[\w.-]+)?$")


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


def alternatives_hint() -> str:
    """What the user can load instead; ends every 'cannot find this dataset' message."""
    return (
        "Bundled offline datasets: " + ", ".join(_BUNDLED) + " (e.g. --dataset_name gsm8k, "
        "--dataset_name arithmetic); or a local file: --dataset_name path/to/data.jsonl "
        "(.jsonl, .jsonl.gz, .json, .parquet)."
    )


# --------------------------------------------------------------------------------------
# Sources: rows as a list of dicts (JSON files, bundled) or an Arrow table (parquet, Hub)
# --------------------------------------------------------------------------------------


class RowsSource:
    """Rows as dicts. ``indices`` are the rows' positions in the original data (for row ids)."""

    def __init__(self, rows: list[dict], label: str, description: str, indices: list[int] | None = None):
        self.rows = rows
        self.label = label  # prefix of row_id
        self.description = description  # for error messages
        self.indices = indices if indices is not None else list(range(len(rows)))
        self._columns: list[str] | None = None

    @property
    def num_rows(self) -> int:
        return len(self.rows)

    def columns(self) -> list[str]:
        """Column names, plus ``column.key`` for the keys of dict values (struct columns)."""
        if self._columns is None:
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

    def deduplicated(self, paths: Sequence[str]) -> RowsSource:
        # Small sources are deduplicated row by row after parsing (dataset_utils).
        return self


class ArrowSource:
    """Rows as an Arrow table, kept columnar because the Hub's DAPO-Math-17k has 1.8M rows."""

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

    def deduplicated(self, paths: Sequence[str]) -> ArrowSource:
        """The first copy of each distinct combination of ``paths``, found in Arrow:
        DAPO-Math-17k holds each of its prompts ~100 times, too many to parse them all in Python."""
        keep = self._first_occurrences(paths)
        if keep is None or len(keep) == self.num_rows:
            return self
        import pyarrow as pa

        table = self.table.take(pa.array(keep, type=pa.int64()))
        return ArrowSource(table, self.label, self.description, [self.indices[p] for p in keep])

    def _first_occurrences(self, paths: Sequence[str]) -> list[int] | None:
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


# --------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------


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
    """Rows of a .json file: a list of objects, such a list under a key, or a dict of columns."""
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
                data = [dict(zip(keys, values, strict=True)) for values in zip(*lists.values(), strict=True)]
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
        return ArrowSource(table, name, f"file {path}")
    text = _read_text(path)
    if path.endswith((".jsonl", ".jsonl.gz")):
        rows = _parse_jsonl(text, path)
    else:
        rows = _parse_json(text, path, split)
    return RowsSource(rows, name, f"file {path}")


def _load_from_disk(path: str, split: str):
    import datasets

    try:
        loaded = datasets.load_from_disk(path)
    except Exception as exc:
        raise DatasetError(
            f"{path} is a directory but not a saved dataset ({exc}); pass a data file "
            f"({', '.join(FILE_EXTENSIONS)}) or a datasets.save_to_disk directory"
        ) from exc
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DatasetError(f"{path} has no split {split!r}; its splits: {', '.join(loaded)}")
        loaded = loaded[split]
    return ArrowSource(loaded.with_format("arrow")[:], _source_name(path), f"saved dataset {path}")


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
    return RowsSource(rows, name, f"bundled dataset {name!r}", indices)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub endpoint opens within ``timeout`` seconds.

    Without network, huggingface_hub retries its first request five times with growing pauses
    before datasets reports the failure (half a minute, more when packets are dropped); this
    check lets the loader say so at once. Behind a proxy the direct connection proves nothing,
    so it answers True and datasets' own error handling applies."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (80 if url.scheme == "http" else 443)), timeout).close()
    except OSError:
        return False
    return True


def _load_hub(name: str, split: str):
    hub_id, _, config = name.partition(":")
    config = config or _DEFAULT_HUB_CONFIGS.get(hub_id)
    import datasets
    import httpx

    def unavailable(why: str) -> DatasetError:
        return DatasetError(f"cannot load {hub_id!r} from the Hugging Face Hub: {why}. " + alternatives_hint())

    no_network = ("no network connection to the Hub (set HF_HUB_OFFLINE=1 to use a copy in the local "
                  "Hugging Face cache)")
    if not datasets.config.HF_HUB_OFFLINE and not _hub_reachable():
        raise unavailable(no_network)
    try:
        loaded = datasets.load_dataset(hub_id, config, split=split)
    except (ConnectionError, httpx.TransportError) as exc:
        # datasets looks in its cache first and raises ConnectionError when the dataset is not there
        # and the Hub cannot be asked: offline mode (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) or no network.
        if datasets.config.HF_HUB_OFFLINE:
            raise unavailable("offline mode (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set) and no copy in the "
                              "local Hugging Face cache") from exc
        raise unavailable(f"{no_network}: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        hint = ""
        if "config" in text.lower():
            hint = " Choose a config with --dataset_name owner/name:config."
        if "split" in text.lower():
            hint += " Check the split name (split=...)."
        raise DatasetError(f"cannot load hub dataset {hub_id!r} (config {config!r}, split {split!r}): "
                           f"{text}.{hint} " + alternatives_hint()) from exc
    label = hub_id if split == "train" else f"{hub_id}[{split}]"
    return ArrowSource(loaded.with_format("arrow")[:], label, f"hub dataset {hub_id!r} (split {split!r})")


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


def open_source(name_or_path: str, split: str):
    """Return ``(source, kind)`` for a bundled name, a local file or directory, or a Hub id;
    ``kind`` is "bundled", "file" or "hub"."""
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise DatasetError("no dataset given; " + alternatives_hint())
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
        if not path.endswith(FILE_EXTENSIONS):
            raise DatasetError(f"{path}: unsupported file type; use one of {', '.join(FILE_EXTENSIONS)}")
        return _load_file(path, split), "file"
    if path.endswith(FILE_EXTENSIONS) or name.startswith((".", "~", os.sep)) or name.count("/") > 1:
        raise DatasetError(f"dataset file not found: {path}. " + alternatives_hint())
    if _HUB_ID_RE.match(name):
        return _load_hub(name, split), "hub"
    raise DatasetError(
        f"unknown dataset {name!r}: not a bundled name, an existing file or a hub id "
        "(owner/name). " + alternatives_hint()
    )
