"""Tests of evaluation.py (avg@k / pass@k, evaluate_model), eval_callback.py (training) and eval_cli.py.

Expected metric values are worked out by hand from the per-sample outcomes written next to them.
Models are tiny Llamas built from a config with the real SmolLM2 tokenizer (no downloads).
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import eval_callback  # noqa: E402
import eval_cli  # noqa: E402
import evaluation  # noqa: E402
from evaluation import avg_at_k, pass_at_k, pass_at_k_of_scores, summarize  # noqa: E402

RECORD_KEYS = {"row_id", "problem", "prompt", "completion", "answer", "pred", "score", "acc", "length", "truncated",
               "problem_index", "sample_index", "data_source"}


# ====================================================================== fixtures
@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny matrices on a shared 2-core machine: thread hand-offs cost more than the maths.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    import model_utils

    return AutoTokenizer.from_pretrained(model_utils.embedded_model_dir("smollm2-135m"))


def tiny_model(tok, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=1,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def problems(n: int) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "answer": str(2 * i),
             "row_id": f"p:{i}", "data_source": "toy"} for i in range(n)]


class PlannedScorer:
    """Marks sample j of problem i correct iff j < correct[i] (samples of a problem arrive in order)."""

    def __init__(self, correct: dict[str, int]):
        self.correct = correct
        self.seen: dict[str, int] = {}
        self.calls = 0

    def __call__(self, completions, answers, row_ids):
        self.calls += 1
        out = []
        for rid in row_ids:
            j = self.seen.get(rid, 0)
            self.seen[rid] = j + 1
            ok = j < self.correct[rid]
            out.append({"score": 1.0 if ok else -1.0, "acc": ok, "pred": "x"})
        return out


# ====================================================================== metric maths
@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 1, 1, 0.25),  # 1 - C(3,1)/C(4,1) = 1 - 3/4
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (5, 2, 3, 0.9),  # 1 - C(3,3)/C(5,3) = 1 - 1/10
        (10, 3, 1, 0.3),  # k=1: c/n
        (6, 0, 2, 0.0),  # no correct sample
        (6, 6, 2, 1.0),  # all correct
        (4, 3, 2, 1.0),  # n - c = 1 < k: every pair holds a correct one
        (4, 1, 4, 1.0),  # n == k: plain definition, any correct -> 1
        (4, 0, 4, 0.0),  # n == k, none correct -> 0
        (32, 1, 32, 1.0),
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_is_the_probability_over_all_k_subsets():
    # Brute force: the fraction of the C(n, k) subsets of samples that contain a correct one.
    for n in range(1, 7):
        for c in range(n + 1):
            samples = [1] * c + [0] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                brute = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)


@pytest.mark.parametrize(("n", "c", "k"), [(3, 1, 4), (4, 5, 2), (4, -1, 2), (4, 1, 0)])
def test_pass_at_k_rejects_impossible_inputs(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_avg_at_k_hand_values():
    # 1 of 4 and 2 of 4 correct: (1 + 2) / 8 samples = 0.375
    assert avg_at_k([[1, 0, 0, 0], [1, 1, 0, 0]]) == pytest.approx(0.375)
    # the same outcomes as verifier scores (+1 / -1) and as booleans
    assert avg_at_k([[1.0, -1.0, -1.0, -1.0], [1.0, 1.0, -1.0, -1.0]]) == pytest.approx(0.375)
    assert avg_at_k([[True, False, False, False], [True, True, False, False]]) == pytest.approx(0.375)
    assert avg_at_k([[0, 0], [0, 0]]) == 0.0
    assert avg_at_k([[1, 1, 1]]) == 1.0
    with pytest.raises(ValueError):
        avg_at_k([])
    with pytest.raises(ValueError):
        avg_at_k([[1], []])


def test_pass_at_k_of_scores_and_summarize():
    scores = [[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]]
    # k = n = 4: 2 of 3 problems have a correct sample
    assert pass_at_k_of_scores(scores, 4) == pytest.approx(2 / 3)
    # k = 2: (0.5 + 0 + 1) / 3, with pass@2(4, 1) = 1 - C(3,2)/C(4,2) = 0.5
    assert pass_at_k_of_scores(scores, 2) == pytest.approx(0.5)
    records = [{"problem_index": i, "acc": bool(s), "length": 10 * (i + 1), "truncated": i == 2}
               for i, row in enumerate(scores) for s in row]
    m = summarize(records, 4)
    assert m["avg@4"] == pytest.approx(5 / 12)  # (1 + 0 + 4) / 12 samples
    assert m["pass@4"] == pytest.approx(2 / 3)
    assert m["mean_length"] == pytest.approx(20.0)  # (4*10 + 4*20 + 4*30) / 12
    assert m["truncated_ratio"] == pytest.approx(1 / 3)
    assert (m["num_problems"], m["num_samples"]) == (3, 12)


def test_metric_names_become_eval_slash_names_in_tensorboard():
    from transformers.integrations.integration_utils import rewrite_logs

    names = evaluation.metric_names(32)
    assert set(rewrite_logs(dict.fromkeys(names.values(), 0.0))) == {
        "eval/avg@32", "eval/pass@32", "eval/mean_length", "eval/truncated_ratio", "eval/num_problems",
        "eval/runtime",
    }


# ====================================================================== evaluate_model
def test_evaluate_model_metrics_match_the_recorded_scores(tok, tmp_path):
    model = tiny_model(tok)
    # 3 problems x 4 samples, batches of 5: problems straddle batches.
    plan = {"p:0": 1, "p:1": 0, "p:2": 4}
    scorer = PlannedScorer(plan)
    rng_before = torch.get_rng_state()
    model.train()
    result = evaluation.evaluate_model(model, tok, problems(3), k=4, temperature=1.0, top_p=0.7, max_new_tokens=5,
                                     reward_mode="dapo", batch_size=5, seed=0, progress=False, scorer=scorer)
    assert model.training, "train mode is restored"
    assert torch.equal(torch.get_rng_state(), rng_before), "the global RNG is not disturbed"
    assert scorer.calls == 3  # ceil(12 / 5) generate calls
    recs = result.records
    assert [(r["problem_index"], r["sample_index"]) for r in recs] == [(i, j) for i in range(3) for j in range(4)]
    for r in recs:
        assert set(r) == RECORD_KEYS
        assert r["acc"] == (r["sample_index"] < plan[r["row_id"]])
        assert r["score"] == (1.0 if r["acc"] else -1.0)
        assert 1 <= r["length"] <= 5
        assert r["length"] == 5 or not r["truncated"]  # truncated = 5 tokens without EOS
        assert r["prompt"] == f"What is {r['problem_index']} + {r['problem_index']}?"
        assert r["answer"] == str(2 * r["problem_index"])
    # Hand-computed: accuracies 1/4, 0/4, 4/4 -> avg@4 = 5/12; 2 of 3 problems solved -> pass@4 = 2/3.
    assert result.avg_at_k == pytest.approx(5 / 12)
    assert result.pass_at_k == pytest.approx(2 / 3)
    assert result.metrics["mean_length"] == pytest.approx(sum(r["length"] for r in recs) / 12)
    assert result.metrics["truncated_ratio"] == pytest.approx(sum(r["truncated"] for r in recs) / 12)
    assert result.metrics["num_problems"] == 3
    logged = result.log_metrics()
    assert logged["eval_avg@4"] == pytest.approx(5 / 12) and logged["eval_pass@4"] == pytest.approx(2 / 3)

    # JSONL: one line per sample with the documented fields.
    path = tmp_path / "out" / "r.jsonl"
    result.write_jsonl(str(path), extra={"step": 7})
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 12 and all(set(x) == RECORD_KEYS | {"step"} for x in lines)

    # Same seed and batch size: the same completions.
    again = evaluation.evaluate_model(model, tok, problems(3), k=4, temperature=1.0, top_p=0.7, max_new_tokens=5,
                                    reward_mode="dapo", batch_size=5, seed=0, progress=False,
                                    scorer=PlannedScorer(plan))
    assert [r["completion"] for r in again.records] == [r["completion"] for r in recs]


def test_shared_prompt_cache_gives_the_same_completions_as_plain_generate(tok):
    model = tiny_model(tok, seed=2)
    rows = problems(3)
    rows[1]["prompt"][0]["content"] = "A much longer question, so that the prompts need left padding: 1 + 1?"
    kwargs = dict(k=3, temperature=1.0, top_p=0.9, max_new_tokens=6, reward_mode="dapo", batch_size=4, seed=3,
                  progress=False)
    shared = evaluation.evaluate_model(model, tok, rows, share_prompt_cache=True, **kwargs)
    plain = evaluation.evaluate_model(model, tok, rows, share_prompt_cache=False, **kwargs)
    assert [r["completion"] for r in shared.records] == [r["completion"] for r in plain.records]
    assert [r["length"] for r in shared.records] == [r["length"] for r in plain.records]


def test_evaluate_model_default_verifier_and_greedy(tok):
    from reward_function import verify

    model = tiny_model(tok, seed=1)
    ds = evaluation.load_eval_dataset("arithmetic_test", max_problems=2)
    result = evaluation.evaluate_model(model, tok, ds, k=2, temperature=0.0, top_p=1.0, max_new_tokens=4,
                                     reward_mode="last_number", batch_size=4, seed=0, progress=False)
    recs = result.records
    for r in recs:  # the scores are the verifier's
        v = verify(r["completion"], r["answer"], mode="last_number")
        assert (r["score"], r["acc"], r["pred"]) == (v["score"], v["acc"], v["pred"])
        assert r["row_id"].startswith("arithmetic_test:")
    # greedy: the k samples of a problem agree
    assert recs[0]["completion"] == recs[1]["completion"] and recs[2]["completion"] == recs[3]["completion"]
    accs = [[r["acc"] for r in recs if r["problem_index"] == i] for i in range(2)]
    assert result.avg_at_k == pytest.approx(avg_at_k(accs))


def test_evaluate_model_rejects_bad_settings(tok):
    model = tiny_model(tok)
    for bad in (dict(k=0), dict(batch_size=0), dict(max_new_tokens=0), dict(top_p=0.0), dict(temperature=-1.0),
                dict(reward_mode="nope")):
        kwargs = dict(k=1, temperature=1.0, top_p=1.0, max_new_tokens=2, reward_mode="dapo", batch_size=2, seed=0)
        with pytest.raises(ValueError):
            evaluation.evaluate_model(model, tok, problems(1), progress=False, **{**kwargs, **bad})


def test_sharded_evaluation_agrees_on_every_process(tok, monkeypatch):
    """Two "processes" as threads: a strided shard each, a barrier all-gather, equal generate() call counts."""
    import threading

    local = threading.local()
    slots: dict[int, list] = {}
    barrier = threading.Barrier(2, timeout=120)

    def thread_gather(values, num_processes):
        if num_processes == 1:
            return list(values)
        slots[local.rank] = list(values)
        barrier.wait()
        gathered = [v for r in range(num_processes) for v in slots[r]]
        barrier.wait()
        return gathered

    monkeypatch.setattr(evaluation, "_gather_objects", thread_gather)
    plan = {f"p:{i}": c for i, c in enumerate([0, 1, 2, 3, 4])}
    results, calls, errors = {}, {0: 0, 1: 0}, []

    def run(rank):
        try:
            local.rank = rank
            model = tiny_model(tok)
            generate = model.generate

            def counted(*a, **k):
                calls[rank] += 1
                return generate(*a, **k)

            model.generate = counted
            acc = type("Acc", (), dict(num_processes=2, process_index=rank, is_main_process=rank == 0, device="cpu"))
            results[rank] = evaluation.evaluate_model(
                model, tok, problems(5), k=4, temperature=1.0, top_p=0.7, max_new_tokens=3, reward_mode="dapo",
                batch_size=3, seed=0, accelerator=acc, progress=False, scorer=PlannedScorer(plan))
        except BaseException as exc:  # surfaced below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    # rank 0 has problems 0, 2, 4 (12 samples, 4 batches of 3); rank 1 has 1, 3 (8 samples, 3 batches + 1 dummy)
    assert calls == {0: 4, 1: 4}
    a, b = results[0], results[1]
    assert a.records == b.records and a.metrics == b.metrics
    assert [(r["problem_index"], r["sample_index"]) for r in a.records] == [(i, j) for i in range(5) for j in range(4)]
    # accuracies 0, 1/4, 2/4, 3/4, 4/4 -> avg@4 = 0.5; 4 of 5 problems solved -> pass@4 = 0.8
    assert a.avg_at_k == pytest.approx(0.5) and a.pass_at_k == pytest.approx(0.8)


DIST_WORKER = r'''
import json, os, sys
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from accelerate import PartialState
import evaluation
from test_evaluate import PlannedScorer, problems, tiny_model
from transformers import AutoTokenizer
import model_utils

state = PartialState(cpu=True)
tok = AutoTokenizer.from_pretrained(model_utils.embedded_model_dir("smollm2-135m"))
model = tiny_model(tok)
plan = {{f"p:{{i}}": c for i, c in enumerate([0, 1, 2, 3, 4])}}
res = evaluation.evaluate_model(model, tok, problems(5), k=4, temperature=1.0, top_p=0.7, max_new_tokens=3,
                                reward_mode="dapo", batch_size=3, seed=0, accelerator=state, progress=False,
                              scorer=PlannedScorer(plan))
with open(os.path.join({out!r}, f"rank{{state.process_index}}.json"), "w") as f:
    json.dump({{"world": state.num_processes, "metrics": res.metrics, "records": res.records}}, f)
'''


@pytest.mark.skipif(os.environ.get("DAPO_SLOW_TESTS") != "1",
                    reason="two real processes (torch.distributed, gloo): ~25 s; set DAPO_SLOW_TESTS=1")
def test_two_processes_shard_problems_and_agree_on_the_summary(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(DIST_WORKER.format(root=str(ROOT), tests=str(ROOT / "tests"), out=str(tmp_path)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Two plain processes with the torchrun environment (cheaper than starting torchrun itself).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    procs = [subprocess.Popen([sys.executable, str(script)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    # 5 problems over 2 processes (3 + 2, so one runs a dummy batch); everyone has all 20 records.
    assert ranks[0]["records"] == ranks[1]["records"]
    assert ranks[0]["metrics"] == ranks[1]["metrics"]
    recs = ranks[0]["records"]
    assert [(r["problem_index"], r["sample_index"]) for r in recs] == [(i, j) for i in range(5) for j in range(4)]
    # accuracies 0, 1/4, 2/4, 3/4, 4/4 -> avg@4 = 0.5; 4 of 5 problems solved -> pass@4 = 0.8
    assert ranks[0]["metrics"]["avg@4"] == pytest.approx(0.5)
    assert ranks[0]["metrics"]["pass@4"] == pytest.approx(0.8)


# ====================================================================== training callback
def test_callback_logs_eval_metrics_during_a_two_step_dapo_run(tok, tmp_path):
    from dataset_utils import load_dapo_dataset
    from train_dapo import DAPOConfig, DAPOScriptArguments, DAPOTrainer, build_reward_funcs

    args = DAPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=1,
                      num_mini_batches=2, num_generations=4, max_completion_length=12, overlong_buffer_len=4,
                      max_steps=2, learning_rate=1e-3, warmup_rollout_steps=0, bf16=False,
                      report_to="tensorboard", logging_steps=1,
                      save_strategy="no", gradient_checkpointing=False, max_prompt_length=None,
                      reward_mode="last_number", filter_groups_enable=False)
    script_args = DAPOScriptArguments(eval_dataset="arithmetic_test", eval_every_steps=1, eval_num_samples=2,
                                      eval_max_problems=3, eval_max_new_tokens=6, eval_batch_size=4)
    callback = eval_callback.make_eval_callback(script_args, args, tok)
    assert len(callback.dataset) == 3 and callback.k == 2
    trainer = DAPOTrainer(model=tiny_model(tok), reward_funcs=build_reward_funcs(args), args=args,
                          train_dataset=load_dapo_dataset("arithmetic", max_samples=8),
                          processing_class=tok, callbacks=[callback])
    callback.trainer = trainer
    trainer.train()

    history = trainer.state.log_history
    evals = [e for e in history if "eval_avg@2" in e]
    assert [e["step"] for e in evals] == [0, 1, 2]  # before training, then every step
    for e in evals:
        assert {"eval_pass@2", "eval_mean_length", "eval_truncated_ratio", "eval_num_problems"} <= set(e)
        assert e["eval_num_problems"] == 3
    # The regular training log of each step survives (the callback logs from on_step_end).
    assert [e["step"] for e in history if "loss" in e] == [1, 2]
    for step, e in zip([0, 1, 2], evals, strict=True):
        lines = [json.loads(x) for x in (tmp_path / "eval" / f"step_{step}.jsonl").read_text().splitlines()]
        assert len(lines) == 6 and all(set(x) == RECORD_KEYS | {"step"} for x in lines)
        assert e["eval_avg@2"] == pytest.approx(sum(x["acc"] for x in lines) / 6)
        assert all(x["length"] <= 6 for x in lines)

    # TensorBoard (event files under <output_dir>/runs/): eval/... next to train/..., at steps 0, 1, 2.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    event_dirs = {p.parent for p in tmp_path.rglob("events.out.tfevents*")}
    assert len(event_dirs) == 1
    tb = EventAccumulator(str(event_dirs.pop()))
    tb.Reload()
    tags = set(tb.Tags()["scalars"])
    assert {"eval/avg@2", "eval/pass@2", "eval/mean_length", "eval/truncated_ratio", "train/loss"} <= tags
    assert [s.step for s in tb.Scalars("eval/avg@2")] == [0, 1, 2]


def test_make_eval_callback_fails_on_a_bad_eval_dataset(tok, tmp_path):
    from dataset_utils import DatasetError
    from train_dapo import DAPOConfig, DAPOScriptArguments

    args = DAPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4,
                      gradient_accumulation_steps=1, num_mini_batches=1, max_completion_length=12,
                      overlong_buffer_len=4, report_to="none", bf16=False)
    with pytest.raises(DatasetError, match="unknown dataset"):
        eval_callback.make_eval_callback(DAPOScriptArguments(eval_dataset="no_such_eval_set"), args, tok)
    with pytest.raises(ValueError, match="eval_num_samples"):
        eval_callback.make_eval_callback(DAPOScriptArguments(eval_dataset="aime24", eval_num_samples=0), args, tok)


# ====================================================================== command line
@pytest.fixture
def no_weights(monkeypatch):
    """Any attempt to load weights fails the test."""
    from transformers import AutoModelForCausalLM

    def forbidden(*a, **k):
        raise AssertionError("weights were loaded before the argument checks")

    monkeypatch.setattr(eval_cli, "load_model_and_tokenizer", forbidden)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", forbidden)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "smollm2-135m", "--dataset", "no_such_dataset"], "unknown dataset"),
        (["--model", "smollm2-135m", "--dataset", "missing/file.jsonl"], "not found"),
        (["--model", "nobody-xyz/no-such-model-xyz", "--dataset", "aime24"], "not in the local Hugging Face cache"),
        (["--model", "./no/such/model/dir", "--dataset", "aime24"], "no such directory"),
        (["--model", "smollm2-135m", "--dataset", "aime24", "--reward_mode", "nope"], "--reward_mode"),
        (["--model", "smollm2-135m", "--dataset", "aime24", "--k", "0"], "--k must be >= 1"),
    ],
)
def test_cli_fails_fast_before_loading_weights(no_weights, capsys, monkeypatch, argv, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert eval_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err


def test_cli_points_at_checkpoints_of_an_output_dir(no_weights, capsys, tmp_path):
    for step in (5, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "config.json").write_text("{}")
    assert eval_cli.main(["--model", str(tmp_path), "--dataset", "aime24"]) == 2
    assert "checkpoint-10" in capsys.readouterr().err


def test_cli_evaluates_a_saved_model_and_a_peft_adapter(tok, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    model_dir = tmp_path / "model"
    tiny_model(tok).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    out = tmp_path / "results.jsonl"
    argv = ["--dataset", "arithmetic_test", "--max_problems", "2", "--k", "2", "--max_new_tokens", "4",
            "--reward_mode", "last_number", "--batch_size", "4", "--no_progress", "true"]
    assert eval_cli.main(["--model", str(model_dir), "--output", str(out), *argv]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 4 and all(set(x) == RECORD_KEYS for x in lines)
    summary = json.loads((tmp_path / "results.summary.json").read_text())
    assert summary["metrics"]["avg@2"] == pytest.approx(sum(x["acc"] for x in lines) / 4)
    printed = capsys.readouterr().out
    assert "avg@2" in printed and "pass@2" in printed and "truncated_ratio" in printed

    # A LoRA adapter directory (adapter_config.json names the base model) is merged into its base.
    peft_model = get_peft_model(tiny_model(tok), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(model_dir)
    (adapter_dir / "adapter_config.json").write_text(json.dumps(config))
    out2 = tmp_path / "adapter.jsonl"
    assert eval_cli.main(["--model", str(adapter_dir), "--output", str(out2), *argv]) == 0
    assert len(out2.read_text().splitlines()) == 4


def test_cli_help_lists_the_options():
    text = eval_cli.make_parser().format_help()
    for option in ("--model", "--dataset", "--k", "--max_problems", "--temperature", "--top_p", "--max_new_tokens",
                   "--reward_mode", "--batch_size", "--output", "--seed", "--template", "--dtype", "gsm8k_test"):
        assert option in text
