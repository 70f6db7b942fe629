"""Run train_dapo.py's command line unchanged, plus one callback that appends every log dict to a
JSONL file (``$BENCH_LOG``). Used by bench_embedded through ``bench/logged_python`` as run_dapo.sh's
``PYTHON``, so the benchmark runs the real ``test_dapo.sh`` / ``run_dapo.sh`` path even with
``--report_to none``.

    BENCH_LOG=log.jsonl python -m bench.logged_train train_dapo.py [train_dapo.py arguments]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str]) -> None:
    if argv and argv[0].endswith("train_dapo.py"):
        argv = argv[1:]
    log_path = os.environ["BENCH_LOG"]

    from transformers import TrainerCallback

    import logging_utils
    import train_dapo

    class JsonlLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                with open(log_path, "a") as f:
                    f.write(json.dumps({"step": state.global_step, **logs}, default=str) + "\n")

    original = logging_utils.default_callbacks
    logging_utils.default_callbacks = lambda args: [*original(args), JsonlLog()]
    try:
        script_args, training_args, model_args = train_dapo.make_parser().parse_args_and_config(argv)
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    train_dapo.main(script_args, training_args, model_args)


if __name__ == "__main__":
    main(sys.argv[1:])
