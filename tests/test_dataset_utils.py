"""Tests of dataset_utils.py, data_sources.py, data_columns.py and arithmetic_data.py (offline; fixtures in
tests/fixtures/)."""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

import arithmetic_data  # noqa: E402
import data_columns  # noqa: E402
import data_sources  # noqa: E402
import dataset_utils as du  # noqa: E402
from dataset_utils import DAPO_PROMPT_TEMPLATE, DatasetError, load_dapo_dataset  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
DAPO_PREFIX = "Solve the following math problem step by step."
BOXED = "Please reason step by step, and put your final answer within \\boxed{}."


def fixture(name: str) -> str:
    return str(FIXTURES / name)


def user_text(row) -> str:
    return row["prompt"][-1]["content"]


def problem_of(row) -> str:
    """The problem inside a DAPO-templated user message."""
    return du.extract_problem(user_text(row))


@pytest.fixture(scope="module")
def tiny_tokenizer():
    """Word-level tokenizer built offline: one token per whitespace-separated word.
    Its chat template renders ``<|role|> content `` per message and ``<|assistant|>`` for
    the generation prompt, so a prompt's length is easy to count by hand."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    return tokenizer


# ---------------------------------------------------------------------------------------
# Constants and API surface
# ---------------------------------------------------------------------------------------


def test_dapo_prompt_template_is_exact():
    assert DAPO_PROMPT_TEMPLATE == (
        "Solve the following math problem step by step. The last line of your response should be "
        "of the form Answer: $Answer (without quotes) where $Answer is the answer to the problem."
        "\n\n{problem}\n\nRemember to put your answer on its own line after \"Answer:\"."
    )


def test_bundled_names_and_describe():
    assert list(du.BUNDLED_DATASETS) == [
        "gsm8k", "gsm8k_test", "math500", "aime24", "aime25", "amc23", "arithmetic", "arithmetic_test",
        "arithmetic_easy", "arithmetic_easy_test"]
    table = du.describe_bundled()
    for name in du.BUNDLED_DATASETS:
        assert re.search(rf"^{name}\s", table, re.M), name
    assert "7473" in table and "1319" in table


def test_bundled_data_is_small():
    total = sum(p.stat().st_size for p in (ROOT / "data").glob("*.jsonl.gz"))
    assert total < 2_000_000
    assert (ROOT / "data" / "README.md").read_text().count("MIT") >= 3


# ---------------------------------------------------------------------------------------
# Bundled datasets
# ---------------------------------------------------------------------------------------

BUNDLED_ROWS = {"gsm8k": 7473, "gsm8k_test": 1319, "math500": 500, "aime24": 30, "aime25": 30,
                "amc23": 40, "arithmetic": 2000, "arithmetic_test": 200, "arithmetic_easy": 101,
                "arithmetic_easy_test": 25}


def test_arithmetic_easy_holds_every_one_digit_fact_once():
    # 1-digit a + b: 9 x 9 = 81 facts; a - b with b <= a: 9 + 8 + ... + 1 = 45 facts; 126 in all.
    train, test = load_dapo_dataset("arithmetic_easy"), load_dapo_dataset("arithmetic_easy_test")
    problems = [re.search(r"What is (\d) ([+-]) (\d)\?", r["prompt"][-1]["content"]) for r in [*train, *test]]
    facts = {(m.group(1), m.group(2), m.group(3)) for m in problems}
    assert len(facts) == len(problems) == 126
    for m, row in zip(problems, [*train, *test], strict=True):
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        assert row["answer"] == str(a + b if op == "+" else a - b)


@pytest.mark.parametrize("name", list(BUNDLED_ROWS))
def test_bundled_loads_with_schema_and_row_count(name):
    ds = load_dapo_dataset(name)
    assert len(ds) == BUNDLED_ROWS[name]
    assert ds.column_names == ["prompt", "answer", "data_source", "row_id"]
    row = ds[0]
    assert row["prompt"] == [{"role": "user", "content": row["prompt"][0]["content"]}]
    assert user_text(row).startswith(DAPO_PREFIX)
    assert user_text(row).count(DAPO_PREFIX) == 1
    assert row["data_source"] == name
    assert row["row_id"] == f"{name}:0"
    assert all(isinstance(a, str) and a for a in ds["answer"])
    assert len(set(ds["row_id"])) == len(ds)


def test_bundled_gsm8k_answers_are_final_numbers():
    ds = load_dapo_dataset("gsm8k_test")
    assert ds[0]["answer"] == "18"  # Janet's ducks
    assert "Janet" in user_text(ds[0])
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", a) for a in ds["answer"])
    # original row index is kept: row 17 of the original file
    row = ds.filter(lambda r: r["row_id"] == "gsm8k_test:17")[0]
    with gzip.open(ROOT / "data" / "gsm8k_test.jsonl.gz", "rt", encoding="utf-8") as f:
        original = [json.loads(line) for line in f][17]
    assert original["idx"] == 17 and row["answer"] == original["answer"]


def test_bundled_split_alias():
    assert len(load_dapo_dataset("gsm8k", split="test")) == 1319
    assert load_dapo_dataset("arithmetic", split="test")["row_id"][0] == "arithmetic_test:0"


@pytest.mark.parametrize("name", ["math500", "aime24", "aime25", "amc23"])
def test_dapo_template_strips_boxed_instruction(name):
    ds = load_dapo_dataset(name)
    for row in ds:
        text = user_text(row)
        assert "within \\boxed{}" not in text
        assert text.endswith('Remember to put your answer on its own line after "Answer:".')
        assert problem_of(row).strip() and not problem_of(row).endswith(BOXED)


def test_boxed_and_none_templates():
    boxed = load_dapo_dataset("aime24", template="boxed")
    none = load_dapo_dataset("aime24", template="none")
    for b, n in zip(boxed, none, strict=True):
        assert user_text(b).endswith("\n" + BOXED)
        assert user_text(b).count("\\boxed{}") == 1
        assert user_text(n) == user_text(b)  # the original text already had the instruction
        assert DAPO_PREFIX not in user_text(b)
    gsm = load_dapo_dataset("gsm8k_test", template="boxed", max_samples=3)
    assert all(user_text(r).endswith(BOXED) for r in gsm)
    custom = load_dapo_dataset("aime24", template="Q: {problem}\nA:", max_samples=1)
    assert user_text(custom[0]).startswith("Q: Every morning Aya") and "\\boxed" not in user_text(custom[0])


# ---------------------------------------------------------------------------------------
# Local files and column layouts
# ---------------------------------------------------------------------------------------


def test_gsm8k_layout_jsonl():
    ds = load_dapo_dataset(fixture("gsm8k_sample.jsonl"))
    assert ds["answer"] == ["7", "1500", "-2"]  # '#### 1,500' -> '1500'
    assert ds["row_id"] == ["gsm8k_sample.jsonl:0", "gsm8k_sample.jsonl:1", "gsm8k_sample.jsonl:2"]
    assert ds["data_source"] == ["gsm8k_sample.jsonl"] * 3
    assert problem_of(ds[0]) == "Ann has 3 pens and buys 4 more. How many pens does she have?"


def test_problem_answer_layout_json():
    ds = load_dapo_dataset(fixture("problem_answer.json"))
    assert ds["answer"] == ["\\frac{1}{2}", "9", "4"]  # the int 9 becomes "9"
    assert problem_of(ds[0]) == "Simplify $\\frac{2}{4}$."


def test_question_answer_layout_jsonl_gz():
    ds = load_dapo_dataset(fixture("question_answer.jsonl.gz"))
    assert ds["answer"] == ["5", "5"]
    assert [problem_of(r) for r in ds] == ["What is 2 + 3?", "What is 9 - 4?"]


def test_problem_solution_layout_extracts_boxed():
    ds = load_dapo_dataset(fixture("problem_solution.jsonl"))
    assert ds["answer"] == ["\\frac{3}{4}", "6"]


def test_dapo_layout_parquet_is_deduplicated(caplog):
    with caplog.at_level(logging.INFO, logger="dapo.data"):
        ds = load_dapo_dataset(fixture("dapo_math17k_sample.parquet"))
    # 12 rows = 5 + 3 + 1 + 2 + 1 copies of 5 distinct (problem, answer) pairs
    assert len(ds) == 5
    assert "deduplicated 12 -> 5 rows" in caplog.text
    assert ds["answer"] == ["2", "6", "56", "5", "3"]
    # row ids are those of the first copies in the original file
    assert ds["row_id"] == [f"dapo_math17k_sample.parquet:{i}" for i in (0, 5, 8, 9, 11)]
    assert ds["data_source"] == ["math_dapo"] * 5
    for row in ds:  # the template already in the data is not applied twice
        assert user_text(row).count(DAPO_PREFIX) == 1
        assert user_text(row).count("Remember to put your answer") == 1
    assert problem_of(ds[0]) == "What is $1+1$?"
    assert len(load_dapo_dataset(fixture("dapo_math17k_sample.parquet"), dedup=False)) == 12


def test_dapo_processed_community_layout():
    # open-r1/DAPO-Math-17k-Processed: prompt (str, templated), solution, source_prompt, reward_model
    ds = load_dapo_dataset(fixture("dapo_processed_sample.jsonl"))
    assert ds["answer"] == ["2", "6", "56", "5", "3"]
    assert all(user_text(r).count(DAPO_PREFIX) == 1 for r in ds)
    by_solution = load_dapo_dataset(fixture("dapo_processed_sample.jsonl"), answer_column="solution")
    assert by_solution["answer"] == ds["answer"]
    by_chat = load_dapo_dataset(fixture("dapo_processed_sample.jsonl"), prompt_column="source_prompt")
    assert by_chat["prompt"] == ds["prompt"]


def test_explicit_column_overrides_with_dotted_path():
    ds = load_dapo_dataset(fixture("custom_columns.jsonl"), prompt_column="text", answer_column="meta.gt")
    assert ds["answer"] == ["42", "13"]
    assert problem_of(ds[0]) == "What is 6 x 7?"
    # dotted path into a parquet struct column
    dapo = load_dapo_dataset(fixture("dapo_math17k_sample.parquet"), prompt_column="prompt",
                             answer_column="reward_model.ground_truth")
    assert dapo["answer"] == ["2", "6", "56", "5", "3"]


def test_json_column_dict_and_save_to_disk(tmp_path):
    path = tmp_path / "cols.json"
    path.write_text(json.dumps({"question": ["What is 1 + 2?", "What is 2 + 2?"], "answer": [3, 4]}))
    assert load_dapo_dataset(str(path))["answer"] == ["3", "4"]

    import datasets

    datasets.Dataset.from_dict({"problem": ["What is 5 + 5?"], "answer": ["10"]}).save_to_disk(
        str(tmp_path / "saved"))
    ds = load_dapo_dataset(str(tmp_path / "saved"))
    assert ds["answer"] == ["10"] and ds["row_id"] == ["saved:0"]


def test_dedup_of_json_rows(tmp_path, caplog):
    path = tmp_path / "dups.jsonl"
    rows = [{"problem": "What is 1 + 1?", "answer": "2"}] * 3 + [{"problem": "What is 1 + 1?", "answer": "3"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.INFO, logger="dapo.data"):
        ds = load_dapo_dataset(str(path))
    assert ds["answer"] == ["2", "3"] and ds["row_id"] == ["dups.jsonl:0", "dups.jsonl:3"]
    assert "deduplicated 4 -> 2 rows" in caplog.text
    assert len(load_dapo_dataset(str(path), dedup=False)) == 4


# ---------------------------------------------------------------------------------------
# System prompt, sampling, shuffling, prompt length
# ---------------------------------------------------------------------------------------


def test_system_prompt():
    ds = load_dapo_dataset("aime24", system_prompt="You are a careful mathematician.", max_samples=2)
    for row in ds:
        assert row["prompt"][0] == {"role": "system", "content": "You are a careful mathematician."}
        assert row["prompt"][1]["role"] == "user" and len(row["prompt"]) == 2


def test_max_samples():
    ds = load_dapo_dataset("gsm8k_test", max_samples=10)
    assert len(ds) == 10
    assert ds["row_id"] == [f"gsm8k_test:{i}" for i in range(10)]  # file order without shuffle


def test_seeded_shuffle():
    a = load_dapo_dataset("math500", shuffle=True, seed=1)["row_id"]
    b = load_dapo_dataset("math500", shuffle=True, seed=1)["row_id"]
    c = load_dapo_dataset("math500", shuffle=True, seed=2)["row_id"]
    plain = load_dapo_dataset("math500")["row_id"]
    assert a == b
    assert a != c and a != plain
    assert sorted(a) == sorted(plain)
    first = load_dapo_dataset("math500", shuffle=True, seed=1, max_samples=5)["row_id"]
    assert first == a[:5]


def test_prompt_length_filter_counts(tiny_tokenizer, tmp_path, caplog):
    # With template "none", a prompt has (words of the problem) + 2 tokens: "<|user|>" and
    # "<|assistant|>". Word counts 3, 5, 6, 8, 12 -> lengths 5, 7, 8, 10, 14.
    problems = ["one two three", "a b c d e", "a b c d e f", "a b c d e f g h", " ".join(["w"] * 12)]
    path = tmp_path / "lengths.jsonl"
    path.write_text("".join(json.dumps({"problem": p, "answer": str(i)}) + "\n" for i, p in enumerate(problems)))
    with caplog.at_level(logging.INFO, logger="dapo.data"):
        ds = load_dapo_dataset(str(path), template="none", tokenizer=tiny_tokenizer, max_prompt_length=8)
    assert ds["answer"] == ["0", "1", "2"]  # lengths 5, 7, 8 <= 8; 10 and 14 dropped
    assert "dropped 2 of 5 prompts" in caplog.text
    # a system prompt of 2 words adds 1 + 2 tokens ("<|system|>", the words): 8, 10, 11, 13, 17
    ds = load_dapo_dataset(str(path), template="none", system_prompt="be brief",
                           tokenizer=tiny_tokenizer, max_prompt_length=10)
    assert ds["answer"] == ["0", "1"]
    # the DAPO template has 42 words: lengths 44 + words of the problem = 47, 49, 50, 52, 56
    ds = load_dapo_dataset(str(path), tokenizer=tiny_tokenizer, max_prompt_length=50)
    assert ds["answer"] == ["0", "1", "2"]
    # max_samples with the filter: the first rows that fit
    ds = load_dapo_dataset(str(path), template="none", tokenizer=tiny_tokenizer, max_prompt_length=8,
                           max_samples=2)
    assert ds["answer"] == ["0", "1"]


def test_prompt_length_filter_on_bundled(tiny_tokenizer):
    ds = load_dapo_dataset("arithmetic_test", tokenizer=tiny_tokenizer, max_prompt_length=50)
    expected = [r for r in arithmetic_data.generate_arithmetic(200, split="test")
                if len(r["problem"].split()) + 44 <= 50]
    assert len(ds) == len(expected) and 0 < len(ds) < 200
    assert ds["answer"] == [r["answer"] for r in expected]


# ---------------------------------------------------------------------------------------
# Arithmetic generator
# ---------------------------------------------------------------------------------------

# phrase -> operation, most specific first ("in each ... in total?" is a product)
_WORD_OPS = [("in each", "x"), ("Each", "x"), ("gives", "-"), ("took", "-"), ("lost", "-"),
             ("more", "+"), ("in total?", "+")]


def _independent_answer(problem: str) -> int:
    plain = re.fullmatch(r"What is (\d+) ([+\-x]) (\d+)\?", problem)
    if plain:
        a, op, b = int(plain.group(1)), plain.group(2), int(plain.group(3))
    else:
        numbers = [int(n) for n in re.findall(r"\d+", problem)]
        assert len(numbers) == 2, problem
        a, b = numbers
        op = next(o for key, o in _WORD_OPS if key in problem)
    return eval(f"{a} {'*' if op == 'x' else op} {b}")  # noqa: S307 (test-only, digits and an operator)


def test_arithmetic_answers_are_correct():
    rows = arithmetic_data.generate_arithmetic(3000, seed=7)
    assert {r["form"] for r in rows} == {"word", "plain"}
    assert {r["op"] for r in rows} == {"+", "-", "x"}
    for r in rows:
        assert r["answer"] == str(_independent_answer(r["problem"])), r
        assert int(r["answer"]) >= 0
        assert 1 <= r["a"] <= 99 and 1 <= r["b"] <= 99
        if r["op"] == "x":
            assert r["b"] <= 9


def test_arithmetic_is_deterministic_and_seeded():
    a = arithmetic_data.generate_arithmetic(300, seed=3)
    assert a == arithmetic_data.generate_arithmetic(300, seed=3)
    assert a != arithmetic_data.generate_arithmetic(300, seed=4)
    assert load_dapo_dataset("arithmetic")["prompt"] == load_dapo_dataset("arithmetic")["prompt"]
    assert len({(r["op"], r["a"], r["b"]) for r in a}) == 300  # no duplicate problem


def test_arithmetic_train_test_disjoint():
    def facts(rows):
        return {(r["op"], r["a"], r["b"]) for r in rows}

    train = facts(arithmetic_data.generate_arithmetic(10000, split="train", seed=1))
    test = facts(arithmetic_data.generate_arithmetic(1400, split="test", seed=2))
    assert not train & test
    bundled_train = {problem_of(r) for r in load_dapo_dataset("arithmetic")}
    bundled_test = {problem_of(r) for r in load_dapo_dataset("arithmetic_test")}
    assert not bundled_train & bundled_test
    assert all(arithmetic_data.problem_split(*f) == "test" for f in test)


def test_arithmetic_parameters():
    rows = arithmetic_data.generate_arithmetic(50, operations=["+"], min_digits=1, max_digits=1,
                                               word_fraction=0.0)
    assert all(re.fullmatch(r"What is [1-9] \+ [1-9]\?", r["problem"]) for r in rows)
    words = arithmetic_data.generate_arithmetic(20, operations=["*"], word_fraction=1.0)
    assert all(r["form"] == "word" and r["op"] == "x" for r in words)
    with pytest.raises(ValueError, match="only have"):
        arithmetic_data.generate_arithmetic(10_000, operations=["+"], max_digits=1)
    with pytest.raises(ValueError, match="unknown arithmetic operation"):
        arithmetic_data.generate_arithmetic(5, operations=["/"])


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


def test_error_missing_explicit_column():
    with pytest.raises(DatasetError) as err:
        load_dapo_dataset(fixture("custom_columns.jsonl"), prompt_column="txt", answer_column="meta.gt")
    msg = str(err.value)
    assert "custom_columns.jsonl" in msg and "'txt'" in msg
    assert "text, meta, meta.gt" in msg  # the columns that exist
    assert "--prompt_column" in msg and "--answer_column" in msg


def test_error_no_recognised_columns():
    with pytest.raises(DatasetError) as err:
        load_dapo_dataset(fixture("custom_columns.jsonl"))
    msg = str(err.value)
    assert "custom_columns.jsonl" in msg and "no problem column" in msg and "no answer column" in msg
    assert "Columns found: text, meta" in msg and "--prompt_column / --answer_column" in msg


def test_error_empty_dataset():
    with pytest.raises(DatasetError, match=r"empty\.jsonl is empty \(0 rows\)"):
        load_dapo_dataset(fixture("empty.jsonl"))


def test_error_bad_rows_and_skip(caplog):
    with pytest.raises(DatasetError) as err:
        load_dapo_dataset(fixture("bad_rows.jsonl"))
    msg = str(err.value)
    assert "bad_rows.jsonl" in msg and "3 bad row(s)" in msg
    assert "bad_rows.jsonl:1: no answer" in msg
    assert "bad_rows.jsonl:2: empty problem" in msg
    assert "bad_rows.jsonl:3: no answer" in msg
    assert "skip_bad_rows=True" in msg and "--answer_column" in msg
    with caplog.at_level(logging.WARNING, logger="dapo.data"):
        ds = load_dapo_dataset(fixture("bad_rows.jsonl"), skip_bad_rows=True)
    assert ds["row_id"] == ["bad_rows.jsonl:0", "bad_rows.jsonl:4"]
    assert "skipped 3 bad row(s)" in caplog.text


def test_error_worked_solution_without_boxed(tmp_path):
    path = tmp_path / "sol.jsonl"
    path.write_text(json.dumps({"problem": "What is 2+2?", "solution": "Two plus two\nmakes four."}) + "\n")
    with pytest.raises(DatasetError, match=r"sol\.jsonl:0: no \\boxed\{\} final answer in column 'solution'"):
        load_dapo_dataset(str(path))


def test_error_invalid_json_names_line():
    with pytest.raises(DatasetError, match=r"invalid\.jsonl, line 2: invalid JSON"):
        load_dapo_dataset(fixture("invalid.jsonl"))


def test_error_file_not_found_and_unknown_name():
    with pytest.raises(DatasetError) as err:
        load_dapo_dataset(fixture("does_not_exist.jsonl"))
    assert "not found" in str(err.value) and "does_not_exist.jsonl" in str(err.value)
    with pytest.raises(DatasetError) as err:
        load_dapo_dataset("gsm9k")
    assert "'gsm9k'" in str(err.value) and "gsm8k" in str(err.value) and "--dataset_name" in str(err.value)


def test_error_bad_arguments(tiny_tokenizer):
    with pytest.raises(DatasetError, match="unknown prompt template 'chatml'"):
        load_dapo_dataset("aime24", template="chatml")
    with pytest.raises(DatasetError, match="needs a tokenizer"):
        load_dapo_dataset("aime24", max_prompt_length=100)
    with pytest.raises(DatasetError, match="max_samples"):
        load_dapo_dataset("aime24", max_samples=0)
    with pytest.raises(DatasetError, match="splits 'train' and 'test'"):
        load_dapo_dataset("gsm8k", split="validation")
    with pytest.raises(DatasetError, match="all 30 prompts are longer than max_prompt_length=10"):
        load_dapo_dataset("aime24", tokenizer=tiny_tokenizer, max_prompt_length=10)
    assert issubclass(DatasetError, ValueError)


# ---------------------------------------------------------------------------------------
# Hub ids
# ---------------------------------------------------------------------------------------


def _assert_names_alternatives(msg: str) -> None:
    for name in du.BUNDLED_DATASETS:
        assert name in msg
    assert "--dataset_name" in msg


def test_hub_id_offline_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    start = time.monotonic()
    with pytest.raises(DatasetError) as err:
        load_dapo_dataset("BytedTsinghua-SIA/DAPO-Math-17k")
    assert time.monotonic() - start < 5
    msg = str(err.value)
    assert "BytedTsinghua-SIA/DAPO-Math-17k" in msg and "HF_HUB_OFFLINE" in msg
    _assert_names_alternatives(msg)


def test_hub_id_without_network_fails_fast(tmp_path):
    # Online mode, an empty cache and a Hub endpoint that refuses connections, with the real libraries
    # (huggingface_hub alone retries for half a minute); in a fresh process because huggingface_hub and
    # datasets read these variables when they are imported.
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path))
    code = ("import time, datasets, dataset_utils\n"
            "start = time.monotonic()\n"
            "try:\n    dataset_utils.load_dapo_dataset('open-r1/DAPO-Math-17k-Processed')\n"
            "except dataset_utils.DatasetError as exc:\n    print(exc)\n"
            "print(f'elapsed={time.monotonic() - start:.1f}')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert "no network" in proc.stdout, proc.stdout + proc.stderr
    _assert_names_alternatives(proc.stdout)
    assert float(re.search(r"elapsed=([\d.]+)", proc.stdout).group(1)) < 5


def test_hub_dapo_math_dedup_with_mocked_hub(monkeypatch, caplog):
    import datasets
    import pyarrow.parquet as pq

    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return datasets.Dataset(pq.read_table(fixture("dapo_math17k_sample.parquet")))

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(data_sources, "_hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with caplog.at_level(logging.INFO, logger="dapo.data"):
        ds = load_dapo_dataset(du.DAPO_MATH_HUB_ID)
    assert calls == [(du.DAPO_MATH_HUB_ID, None, "train")]
    assert len(ds) == 5 and "deduplicated 12 -> 5 rows" in caplog.text
    assert ds["row_id"][1] == "BytedTsinghua-SIA/DAPO-Math-17k:5"
    assert all(user_text(r).count(DAPO_PREFIX) == 1 for r in ds)
    # community variant: its required config defaults to "all"; "id:config" picks another
    load_dapo_dataset("open-r1/DAPO-Math-17k-Processed")
    load_dapo_dataset("open-r1/DAPO-Math-17k-Processed:en")
    assert calls[1:] == [("open-r1/DAPO-Math-17k-Processed", "all", "train"),
                         ("open-r1/DAPO-Math-17k-Processed", "en", "train")]


# ---------------------------------------------------------------------------------------
# Text helpers
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "Find x.\nPlease reason step by step, and put your final answer within \\boxed{}.",
    "Find x. Let's think step by step and output the final answer within \\boxed{}.",
    "Find x.\n\nPut your final answer in $\\boxed{}$.",
    "Find x. Return your final response as 'Final Answer: \\boxed{<answer>}', where <answer> is the number.",
    "Find x.\nLet's think step by step.\nPlease put the final answer in \\boxed{}.",
    "Please put your final answer within \\boxed{}.\nFind x.",
])
def test_strip_answer_instruction_variants(text):
    assert du.strip_answer_instruction(text) == "Find x."


def test_strip_keeps_boxed_in_problem_and_extract_helpers():
    assert du.strip_answer_instruction("Show that $\\boxed{x}$ is 3.") == "Show that $\\boxed{x}$ is 3."
    templated = DAPO_PROMPT_TEMPLATE.replace("{problem}", "What is 1+1?")
    assert du.extract_problem(templated) == "What is 1+1?"
    assert du.apply_template(templated) == templated  # idempotent
    assert data_columns.extract_boxed("so $\\boxed{\\frac{1}{2}}$ and \\boxed{7}") == "7"
    assert data_columns.extract_boxed("\\boxed{\\frac{a}{b}}") == "\\frac{a}{b}"
    assert data_columns.extract_boxed("no box") is None
    assert du.build_prompt("What is 1+1?", "none", "sys") == [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "What is 1+1?"}]
