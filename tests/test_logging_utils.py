"""Tests of logging_utils.py and run_report.py: metric aliases and derived metrics, samples, console line,
dashboard and summary; plus one short DAPO training run whose TensorBoard logs are checked against
the metrics table of docs/metrics.md (parsed here, so the doc and the code cannot drift apart)."""

from __future__ import annotations

import io
import json
import math
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import logging_utils as lu  # noqa: E402
import run_report as rr  # noqa: E402
from chat_text import message_text  # noqa: E402

DOC = ROOT / "docs" / "metrics.md"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Words allowed in the "Logged" column of docs/metrics.md; the last two are not exercised by the run below.
CONDITIONS = {"every step", "rollout steps", "dynamic sampling", "overlong shaping", "beta > 0", "eval"}
NOT_IN_TEST_RUN = {"beta > 0", "eval"}


def parse_metrics_table(text: str) -> list[tuple[str, set[str]]]:
    """(metric name, conditions) of every row of the metrics table."""
    rows = []
    for line in text.splitlines():
        match = re.match(r"\|\s*`([^`]+)`\s*\|([^|]*)\|", line)
        if match:
            conditions = {c.strip() for c in match.group(2).split(",") if c.strip()}
            rows.append((match.group(1), conditions))
    return rows


# ============================================================================ unit tests
def test_metric_table_parses_and_uses_known_conditions():
    rows = parse_metrics_table(DOC.read_text(encoding="utf-8"))
    names = [name for name, _ in rows]
    assert len(names) == len(set(names)) and len(rows) >= 40
    for name, conditions in rows:
        assert conditions and conditions <= CONDITIONS, (name, conditions)
    # the names promised by the README are all documented
    for promised in ("reward/mean", "reward/std", "loss", "learning_rate", "clip_fraction", "entropy",
                     "acc", "overlong/ratio",
                     "response_length/mean", "response_length/max", "response_length/clip_ratio",
                     "perf/tokens_per_second", "timing/generation_s", "timing/scoring_s", "timing/update_s",
                     "dynamic_sampling/kept_fraction"):
        assert promised in names, promised


def test_add_metric_aliases_copies_trl_values():
    metrics = {
        "reward": [-0.5, 0.25],
        "reward_std": [1.0],
        "clip_ratio/region_mean": [0.0, 0.004],
        "clip_ratio/low_mean": [0.0, 0.003],
        "clip_ratio/high_mean": [0.0, 0.001],
        "completions/mean_length": [10.0],
        "completions/max_length": [12.0],
        "completions/clipped_ratio": [0.25],
        "rewards/overlong_penalty/mean": [-0.125],
        "entropy": [],  # empty lists are not aliased
    }
    lu.add_metric_aliases(metrics)
    assert metrics["reward/mean"] == [-0.5, 0.25]
    assert metrics["reward/std"] == [1.0]
    assert metrics["clip_fraction"] == [0.0, 0.004]
    assert metrics["response_length/mean"] == [10.0]
    assert metrics["response_length/max"] == [12.0]
    assert metrics["response_length/clip_ratio"] == [0.25]
    assert "response_length/min" not in metrics
    metrics["reward"].append(9.0)  # a copy, not the same list
    assert metrics["reward/mean"] == [-0.5, 0.25]


def test_run_monitor_step_time_split_and_throughput():
    # 2 optimizer steps per rollout; one log per step. Hand-computed:
    monitor = lu.RunMonitor(steps_per_rollout=2, initial_tokens=0)
    # step 1 (rollout): 10 s, of which 6 s generation and 1 s scoring; 100 tokens sampled
    out = monitor.update({"step_time": [10.0], "timing/generation_s": [6.0], "timing/scoring_s": [1.0]}, 100)
    assert out == pytest.approx({
        "timing/update_s": 3.0,
        "timing/generation_frac": 0.6, "timing/scoring_frac": 0.1, "timing/update_frac": 0.3,
        "perf/tokens_per_second": 10.0,
    })
    # step 2 (update only, 4 s): window = steps 1-2 = 14 s, 6 s generation, 1 s scoring, 7 s update
    out = monitor.update({"step_time": [4.0]}, 100)
    assert out == pytest.approx({
        "timing/update_s": 4.0,
        "timing/generation_frac": 6 / 14, "timing/scoring_frac": 1 / 14, "timing/update_frac": 0.5,
        "perf/tokens_per_second": 100 / 14,
    })
    # step 3 (rollout, 12 s: 7 gen + 1 score, 150 new tokens): window = steps 2-3 = 16 s
    out = monitor.update({"step_time": [12.0], "timing/generation_s": [7.0], "timing/scoring_s": [1.0]}, 250)
    assert out == pytest.approx({
        "timing/update_s": 4.0,
        "timing/generation_frac": 7 / 16, "timing/scoring_frac": 1 / 16, "timing/update_frac": 0.5,
        "perf/tokens_per_second": 150 / 16,
    })
    # a log without optimizer steps (e.g. the end-of-training summary) adds nothing
    assert monitor.update({"reward": [1.0]}, 250) == {}


def test_run_monitor_with_several_steps_per_log():
    # logging_steps=2, 4 steps per rollout: each log holds 2 steps; the window keeps the last 4 steps.
    monitor = lu.RunMonitor(steps_per_rollout=4)
    monitor.update({"step_time": [9.0, 3.0], "timing/generation_s": [8.0], "timing/scoring_s": [0.0]}, 50)
    out = monitor.update({"step_time": [3.0, 3.0]}, 50)
    assert out["timing/generation_frac"] == pytest.approx(8 / 18)
    assert out["perf/tokens_per_second"] == pytest.approx(50 / 18)
    out = monitor.update({"step_time": [10.0, 2.0], "timing/generation_s": [8.0]}, 110)  # drops the first log
    assert out["timing/update_s"] == pytest.approx(2.0)
    assert out["timing/generation_frac"] == pytest.approx(8 / 18)
    assert out["perf/tokens_per_second"] == pytest.approx(60 / 18)


def test_steps_per_rollout_from_config():
    class Args:
        steps_per_generation, gradient_accumulation_steps, num_iterations = 32, 2, 3

    assert lu.steps_per_rollout(Args) == 48


def fake_logs(n=6, with_answer=False):
    logs = {
        "prompt": [[{"role": "system", "content": "sys"}, {"role": "user", "content": f"q{i}"}] for i in range(n)],
        "completion": [[{"role": "assistant", "content": f"c{i}"}] for i in range(n)],
        "rewards": {"correctness": [1.0 if i % 2 else -1.0 for i in range(n)], "overlong_penalty": [-0.5] * n},
        "advantages": [0.1 * i for i in range(n)],
        "extra": {"pred": [str(i) for i in range(n)], "acc": [bool(i % 2) for i in range(n)]},
    }
    if with_answer:
        logs["extra"]["answer"] = [f"a{i}" for i in range(n)]
    return logs


def test_collect_samples_fields_and_spread():
    asked = []

    def answers(prompts):
        asked.extend(prompts)
        return ["gt-" + p[-1]["content"] for p in prompts]

    rows = lu.collect_samples(fake_logs(), step=7, k=3, answers=answers, score_name="correctness")
    assert [r["index"] for r in rows] == [0, 2, 5]  # evenly spread: 0, 2.5 -> 2, 5
    assert len(asked) == 3
    assert set(rows[0]) == set(lu.SAMPLE_FIELDS)
    last = rows[-1]
    assert last == {
        "step": 7, "index": 5, "problem": "q5", "prompt": "q5", "completion": "c5", "answer": "gt-q5", "pred": "5",
        "score": 1.0, "reward": 0.5, "advantage": pytest.approx(0.5),
        "rewards": {"correctness": 1.0, "overlong_penalty": -0.5},
    }
    assert rows[0]["score"] == -1.0 and rows[0]["reward"] == -1.5
    # an `answer` column logged by the reward function (log_extra) wins over the dataset lookup
    rows = lu.collect_samples(fake_logs(with_answer=True), 1, 2, answers=lambda p: 1 / 0, score_name="correctness")
    assert [(r["index"], r["answer"]) for r in rows] == [(0, "a0"), (5, "a5")]
    assert lu.collect_samples(fake_logs(), 1, 0) == []
    assert len(lu.collect_samples(fake_logs(n=2), 1, 8)) == 2


def test_message_text():
    assert message_text("plain") == "plain"
    conv = [{"role": "system", "content": "s"}, {"role": "user", "content": "u1"}, {"role": "user", "content": "u2"}]
    assert message_text(conv, role="user") == "u2"
    assert message_text([{"role": "assistant", "content": [{"type": "text", "text": "hi"}]}], "assistant") == "hi"
    assert message_text(None) == ""


def test_samples_markdown_escapes_code_fences():
    rows = lu.collect_samples(fake_logs(), 3, 1, answers=lambda p: [None] * len(p), score_name="correctness")
    rows[0]["completion"] = "x ``` y"
    text = lu.samples_markdown(rows, 3)
    assert "step 3" in text and "answer `-`" in text and "x ''' y" in text


def test_console_line_marks_carried_rollout_values():
    logs = {"reward": -0.25, "acc": 0.375, "dynamic_sampling/groups_kept": 6.0,
            "dynamic_sampling/groups_generated": 12.0, "dynamic_sampling/groups_trained": 4.0,
            "response_length/mean": 211.43, "entropy": 0.8123,
            "clip_ratio/low_mean": 0.0031, "clip_ratio/high_mean": 0.0008, "loss": 0.01}
    line = lu.format_console_line(3, 100, logs, {}, 41.2, 3990)
    assert line == ("step 3/100 | reward -0.250 acc 0.375 | groups 6/12 informative, 4 trained | len 211.4 tok | "
                    "entropy 0.812 | clip lo/hi 0.0031/0.0008 | 41.2 s/step | ETA 1:06:30")
    carried = {k: logs[k] for k in lu.ROLLOUT_KEYS}
    update_only = {"entropy": 0.809, "clip_ratio/low_mean": 0.0042, "clip_ratio/high_mean": 0.0011, "loss": 0.02}
    line = lu.format_console_line(4, 100, update_only, carried, 6.3, 3852)
    assert line == ("step 4/100 | reward -0.250* acc 0.375* | groups 6/12* informative, 4 trained | len 211.4* tok | "
                    "entropy 0.809 | clip lo/hi 0.0042/0.0011 | 6.3 s/step | ETA 1:04:12")
    # no dynamic sampling, nothing carried yet: no kept field, dashes
    line = lu.format_console_line(1, 0, {"loss": 0.0}, {}, None, None)
    assert line == "step 1 | reward - acc - | len - tok | entropy - | - s/step | ETA -"


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("stream_type", [io.StringIO, _Terminal], ids=["log file", "terminal"])
def test_console_lines_start_on_their_own_line_next_to_the_progress_bar(stream_type):
    """The progress bar and the console line share one output (a terminal, or a log file with 2>&1)."""
    from tqdm.auto import tqdm
    from transformers import TrainerState

    out = stream_type()
    console = lu.ConsoleLogCallback(stream=out)
    state = TrainerState(max_steps=3)
    bar = tqdm(total=3, file=out, ncols=60, mininterval=0)  # what the Trainer's ProgressCallback draws
    try:
        console.on_train_begin(None, state, None)
        for step in (1, 2, 3):
            bar.update(1)
            state.global_step = step
            console.on_log(None, state, None, logs={"loss": 0.1, "reward": -0.5, "acc": 0.25})
    finally:
        bar.close()
    text = out.getvalue()
    assert len(re.findall(r"step \d/3", text)) == 3
    if stream_type is _Terminal:  # erased bar: the line starts at the start of the terminal line, no blank lines
        assert len(re.findall(r"\r *\rstep \d/3 \|", text)) == 3 and "\n\n" not in text
    else:  # in a file each step line starts a line
        assert [line.split(" |")[0] for line in text.split("\n") if line.startswith("step ")] == [
            "step 1/3", "step 2/3", "step 3/3"]
    assert "3/3" in text.rsplit("step 3/3", 1)[1]  # the bar is drawn again below the last line


def test_wandb_missing_gives_clear_error(monkeypatch):
    class Args:
        report_to = ["tensorboard", "wandb"]
        output_dir = "unused"

    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail
    with pytest.raises(lu.ReportingError, match="pip install wandb"):
        lu.default_callbacks(Args)
    Args.report_to = "tensorboard"
    assert [type(cb).__name__ for cb in lu.default_callbacks(Args)] == ["ConsoleLogCallback"]
    Args.report_to = "none"
    assert lu.report_to_list(Args) == []


def test_load_scalars_joins_resumed_runs(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    first = SummaryWriter(str(tmp_path / "runs" / "a"))
    for step in range(1, 6):
        first.add_scalar("train/acc", step / 10, step, walltime=1000.0 + step)
    first.close()
    second = SummaryWriter(str(tmp_path / "runs" / "b"))  # resumed from the checkpoint of step 3
    for step in range(4, 8):
        second.add_scalar("train/acc", step / 100, step, walltime=2000.0 + step)
    second.add_scalar("eval/avg@4", 0.5, 7, walltime=2007.0)
    second.close()
    scalars, runs = rr.load_scalars(str(tmp_path))
    assert [(s, round(v, 3)) for s, v, _ in scalars["train/acc"]] == [
        (1, 0.1), (2, 0.2), (3, 0.3), (4, 0.04), (5, 0.05), (6, 0.06), (7, 0.07)]
    assert len(runs) == 2
    assert rr.eval_accuracy_tags(scalars) == ["eval/avg@4"]
    text = rr.summarize(str(tmp_path))
    assert "| acc | 0.1 | 0.07 | 0.3 (3) | 7 |" in text
    assert "| eval/avg@4 | 0.5 | 0.5 | 0.5 (7) | 1 |" in text


def test_cli_reports_missing_logs(tmp_path, capsys):
    assert rr.main(["summary", str(tmp_path)]) == 1
    assert "No TensorBoard scalars" in capsys.readouterr().err
    assert rr.main(["dashboard", str(tmp_path / "nope")]) == 2


# ============================================================================ a short training run
SAMPLES_EVERY = 2
SAMPLES_PER_LOG = 5


def correctness(completion_ids, log_extra=None, **kwargs):
    """Synthetic +-1 reward: a random tiny model never answers right; this gives mixed groups."""
    if log_extra is not None:
        log_extra("pred", [str(ids[0]) for ids in completion_ids])
    return [1.0 if ids[0] % 4 == 0 else -1.0 for ids in completion_ids]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    import model_utils
    from reward_function import make_overlong_reward
    from train_dapo import DAPOConfig, DAPOTrainer

    os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
    out = tmp_path_factory.mktemp("dapo_run")
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # much faster than 2 contended threads for a model this small
    tok = AutoTokenizer.from_pretrained(model_utils.embedded_model_dir("smollm2-135m"))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=1,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    rows = [{"prompt": [{"role": "user", "content": f"What is {a} + {a + 3}?"}], "answer": str(2 * a + 3)}
            for a in range(40)]
    args = DAPOConfig(
        output_dir=str(out), per_device_train_batch_size=4, gradient_accumulation_steps=1, num_mini_batches=2,
        num_generations=4, max_completion_length=12, overlong_buffer_len=4, max_steps=4, learning_rate=1e-3,
        warmup_rollout_steps=0, bf16=False, report_to="tensorboard", logging_steps=1, save_strategy="no",
        gradient_checkpointing=False, max_prompt_length=None, filter_groups_enable=True,
        filter_groups_on_limit="continue", seed=0,
    )
    # Fields the lead adds to DAPOConfig; logging_utils reads them with getattr.
    args.log_samples_every = SAMPLES_EVERY
    args.num_samples_to_log = SAMPLES_PER_LOG
    console = io.StringIO()
    trainer = DAPOTrainer(
        model=model, reward_funcs=[correctness, make_overlong_reward(12, 4)], args=args,
        train_dataset=Dataset.from_list(rows), processing_class=tok,
        callbacks=[lu.ConsoleLogCallback(stream=console)],
    )
    try:
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    rr.finish_run(str(out), trainer)
    scalars, _ = rr.load_scalars(str(out))
    return {"out": out, "scalars": scalars, "console": console.getvalue(), "answers": {r["prompt"][0]["content"]:
            r["answer"] for r in rows}}


def test_every_documented_metric_is_logged_with_finite_values(run):
    scalars = run["scalars"]
    rows = parse_metrics_table(DOC.read_text(encoding="utf-8"))
    checked = 0
    for name, conditions in rows:
        if conditions & NOT_IN_TEST_RUN:
            continue
        tag = f"train/{name}"
        assert tag in scalars, f"{name} is in docs/metrics.md but not in the TensorBoard logs"
        values = [v for _, v, _ in scalars[tag]]
        assert all(math.isfinite(v) for v in values), (name, values)
        steps = {s for s, _, _ in scalars[tag]}
        if "every step" in conditions:
            assert steps >= {1, 2, 3, 4}, (name, steps)
        else:  # rollout steps: 2 optimizer steps per rollout -> steps 1 and 3
            assert steps == {1, 3}, (name, steps)
        checked += 1
    assert checked >= 35


def test_derived_metrics_are_consistent(run):
    scalars = run["scalars"]
    value = {tag: {s: v for s, v, _ in points} for tag, points in scalars.items()}
    for step in (1, 2, 3, 4):
        fracs = [value[f"train/timing/{k}_frac"][step] for k in ("generation", "scoring", "update")]
        assert sum(fracs) == pytest.approx(1.0, abs=1e-6) and all(0 <= f <= 1 for f in fracs)
        assert value["train/perf/tokens_per_second"][step] > 0
    assert value["train/timing/generation_frac"][2] > 0  # step 2's window includes the rollout of step 1
    assert value["train/reward/mean"] == value["train/reward"]
    assert value["train/response_length/max"][1] <= 12


def test_samples_jsonl(run):
    lines = (run["out"] / lu.SAMPLES_FILE).read_text(encoding="utf-8").splitlines()
    samples = [json.loads(line) for line in lines]
    # first rollout (step 1), then due at step 2 but the rollout is stale until step 3; due at 4, stale
    assert [s["step"] for s in samples] == [1] * SAMPLES_PER_LOG + [3] * SAMPLES_PER_LOG
    for s in samples:
        assert set(s) == set(lu.SAMPLE_FIELDS)
        assert s["answer"] == run["answers"][s["prompt"]]  # ground truth looked up in the dataset
        assert s["score"] in (1.0, -1.0) and s["pred"] is not None
        assert s["reward"] == pytest.approx(s["score"] + s["rewards"]["overlong_penalty"])
        assert math.isfinite(s["advantage"]) and isinstance(s["completion"], str)
    # the TensorBoard text panel
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run_dir,) = rr.event_dirs(str(run["out"]))
    acc = EventAccumulator(run_dir, size_guidance={"tensors": 0})
    acc.Reload()
    tag = f"{lu.SAMPLES_TAG}/text_summary"
    assert tag in acc.Tags()["tensors"]
    events = acc.Tensors(tag)
    assert [e.step for e in events] == [1, 3]
    assert "Completion samples at step 3" in events[-1].tensor_proto.string_val[0].decode()


def test_console_one_line_per_step_with_carried_values(run):
    lines = [line for line in run["console"].splitlines() if line.startswith("step ")]
    assert [line.split(" |")[0] for line in lines] == ["step 1/4", "step 2/4", "step 3/4", "step 4/4"]
    assert "reward" in lines[0] and "*" not in lines[0].split("| entropy")[0]
    assert re.search(r"reward [-+]\d\.\d{3}\* acc \d\.\d{3}\*", lines[1])  # carried from step 1
    assert (
        re.search(r"groups \d+/\d+ informative, \d+ trained", lines[0])
        and "s/step" in lines[3]
        and "ETA 0:00:00" in lines[3]
    )


def test_dashboard_and_summary(run, tmp_path):
    from PIL import Image

    out = run["out"]
    png = out / rr.DASHBOARD_FILE  # written by finish_run
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(png) as image:
        assert image.size[0] >= 1200 and image.size[1] >= 900
    summary = (out / rr.SUMMARY_FILE).read_text(encoding="utf-8")
    assert "optimizer steps logged: 4" in summary
    for label in ("reward/mean", "acc", "entropy", "clip_ratio/high_mean", "dynamic_sampling/kept_fraction"):
        assert f"| {label}" in summary, label
    # command line, for any output directory
    other = tmp_path / "d.png"
    assert rr.main(["dashboard", str(out), "--out", str(other)]) == 0
    assert other.read_bytes()[:8] == PNG_SIGNATURE
    assert rr.main(["summary", str(out), "--out", str(tmp_path / "s.md")]) == 0
    assert (tmp_path / "s.md").read_text(encoding="utf-8") == summary


def test_quiet_printer_drops_step_and_eval_dicts_but_keeps_the_end_of_training_summary(capsys):
    from transformers import TrainerControl, TrainerState

    cb, state, control = lu.QuietPrinterCallback(), TrainerState(), TrainerControl()
    cb.on_log(None, state, control, logs={"loss": 0.5, "reward": -1.0, "step_time": 3.0})
    cb.on_log(None, state, control, logs={"eval_avg@4": 0.7, "eval_pass@4": 0.84, "epoch": 0.2})
    cb.on_log(None, state, control, logs={"train_runtime": 219.3, "train_loss": 0.18})
    out = capsys.readouterr().out
    assert "train_runtime" in out and "219.3" in out
    assert "eval_avg@4" not in out and "step_time" not in out


def test_sampled_completions_are_shown_on_the_console(run):
    console = run["console"]
    samples = [json.loads(line) for line in (run["out"] / lu.SAMPLES_FILE).read_text(encoding="utf-8").splitlines()]
    assert console.count("sampled completions of the rollout at step") == 2
    for s in samples:  # each sample's line: problem, answer and prediction as in samples.jsonl
        assert f"  {s['problem']} -> " in console and f"| answer {s['answer']}, pred {s['pred']}, reward" in console


def test_a_sample_line_is_one_short_line():
    row = {"problem": "What is 3 + 4?", "completion": "Well,\nthe sum is " + "very " * 40 + "7", "answer": "7",
           "pred": "7", "reward": 1.0}
    line = lu.format_sample_line(row)
    assert "\n" not in line and line.startswith("  What is 3 + 4? -> 'Well, the sum is very")
    assert line.endswith("...' | answer 7, pred 7, reward 1.00") and len(line) < 140
