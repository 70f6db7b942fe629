"""Rebuild the bundled data files in this directory from the original JSONL files.

Usage (one-off, maintainers only; nothing calls this at run time):

    python data/make_bundled.py /path/to/original/jsonl/dir

Each output row is ``{"idx": <0-based row index in the original file>, "problem": ...,
"answer": ...}``, gzip-compressed JSONL (gzip mtime fixed to 0 so rebuilds are
byte-identical). GSM8K keeps only the question and the final number after ``#### ``
(thousands separators removed); the step-by-step reasoning is dropped. The other sets
are copied field for field (their ``problem`` text keeps its trailing boxed-answer
instruction; the loader strips it when it applies the DAPO template).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import sys

# output name -> (input file, problem field, is_gsm8k)
FILES = {
    "gsm8k_train": ("gsm8k_train.jsonl", "question", True),
    "gsm8k_test": ("gsm8k_test.jsonl", "question", True),
    "math500": ("math500.jsonl", "problem", False),
    "aime24": ("aime24.jsonl", "problem", False),
    "aime25": ("aime25.jsonl", "problem", False),
    "amc23": ("amc2023.jsonl", "problem", False),
}


def gsm8k_final_answer(answer: str) -> str:
    if "####" not in answer:
        raise ValueError(f"GSM8K answer without '####': {answer!r}")
    return answer.rsplit("####", 1)[1].strip().replace(",", "")


def main(src_dir: str, out_dir: str) -> None:
    for out_name, (in_name, field, is_gsm8k) in FILES.items():
        rows = []
        with open(os.path.join(src_dir, in_name), encoding="utf-8") as f:
            for idx, line in enumerate(f):
                if not line.strip():
                    continue
                row = json.loads(line)
                answer = row["answer"]
                answer = gsm8k_final_answer(answer) if is_gsm8k else str(answer).strip()
                rows.append({"idx": idx, "problem": row[field], "answer": answer})
        path = os.path.join(out_dir, out_name + ".jsonl.gz")
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
            for row in rows:
                gz.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
        with open(path, "wb") as f:
            f.write(buf.getvalue())
        print(f"{path}: {len(rows)} rows, {len(buf.getvalue())} bytes")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1], os.path.dirname(os.path.abspath(__file__)))
