"""Benchmark 6: generation tokens/s on the embedded SmolLM2-135M, Hugging Face `generate` vs vLLM (CPU).

    make setup-vllm
    .venv-vllm/bin/python -m bench.bench_vllm_generation [--quick] [--compile] [--packed] [--write]

Runs in the vLLM virtualenv (.venv-vllm), both engines in ONE process, one after the other, on the same
prompts (the DAPO prompt of the bundled arithmetic_easy set, chat template applied), T=1.0, every
sequence exactly --tokens new tokens long (HF: min_new_tokens; vLLM: ignore_eos), so both do the same work:
  * HF `generate` in fp32 (what `make demo` uses on CPU) and in bf16;
  * vLLM built the way TRL's colocate mode builds it (external_launcher, in-process, processed logprobs,
    the sampled token's logprob returned), with the CPU weight-sync change of vllm_cpu.py applied (the
    configuration training runs), eager (`enforce_eager=True`) unless --compile.
--packed: vLLM alone, with its own packed CPU kernels (no vllm_cpu.py change: weights cannot be synced
into it), to show what that change costs. One untimed warm-up call per engine, then --repeats timed calls;
tokens/s = new tokens / wall time.
Engine start-up (load + KV-cache allocation, + compilation with --compile) is reported separately.
Both engines use every core this process may run on (torch threads = vLLM's OMP threads). The machine
is shared: the load average is printed with the table. --write puts the table into BENCHMARKS.md between
the ``bench-vllm`` markers.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

from bench import common
from bench.common import fmt

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache; vLLM's CPU default is far larger


def prompts(tokenizer, count: int) -> list[list[int]]:
    from dataset_utils import load_dapo_dataset

    ds = load_dapo_dataset("arithmetic_easy", max_samples=count, shuffle=True, seed=0)
    return [tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)
            for row in ds]


def time_calls(call, repeats: int) -> list[float]:
    call()  # warm-up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        out.append(time.perf_counter() - t)
    return out


def hf_arm(path: str, ids: list[list[int]], tokens: int, repeats: int, dtype) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    start = time.perf_counter() - t
    batch = tok.pad({"input_ids": ids}, return_tensors="pt")

    def call():
        with torch.no_grad():
            out = model.generate(**batch, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                 max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=tok.pad_token_id)
        assert out.shape[1] - batch["input_ids"].shape[1] == tokens

    times = time_calls(call, repeats)
    model = None  # free the weights before the next engine loads
    return {"engine": f"HF generate ({str(dtype).removeprefix('torch.')})", "start_s": start, "times": times}


def vllm_arm(path: str, ids: list[list[int]], tokens: int, repeats: int, compile_: bool, packed: bool) -> dict:
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29561")
    import vllm_cpu

    if not packed:
        vllm_cpu.apply_if_cpu()
    from vllm import LLM, SamplingParams

    t = time.perf_counter()
    llm = LLM(model=path, max_model_len=512, max_num_seqs=len(ids), max_num_batched_tokens=4096, seed=0,
              distributed_executor_backend="external_launcher", logprobs_mode="processed_logprobs",
              enforce_eager=not compile_)
    start = time.perf_counter() - t
    dtype = str(llm.llm_engine.model_config.dtype).removeprefix("torch.")
    params = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=tokens, ignore_eos=True, logprobs=0, seed=None)
    batch = [{"prompt_token_ids": p} for p in ids]

    def call():
        outs = llm.generate(batch, sampling_params=params, use_tqdm=False)
        assert all(len(o.outputs[0].token_ids) == tokens for o in outs)

    times = time_calls(call, repeats)
    mode = ("torch.compile" if compile_ else "eager") + (", packed CPU kernels" if packed else "")
    return {"engine": f"vLLM {mode} ({dtype})", "start_s": start, "times": times}


def run(quick: bool = False, compile_: bool = False, packed: bool = False) -> dict:
    import torch
    import vllm
    from transformers import AutoTokenizer

    import model_utils

    common.quiet()
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    count, tokens, repeats = (16, 32, 1) if quick else (32, 64, 2)
    path = str(model_utils.embedded_model_dir("smollm2-135m"))
    ids = prompts(AutoTokenizer.from_pretrained(path), count)
    info = common.machine_info()
    info["vllm"] = vllm.__version__
    arms = [] if packed else [hf_arm(path, ids, tokens, repeats, torch.float32),
                              hf_arm(path, ids, tokens, repeats, torch.bfloat16)]
    arms.append(vllm_arm(path, ids, tokens, repeats, compile_, packed))
    for arm in arms:
        arm["tokens_per_s"] = [count * tokens / t for t in arm["times"]]
    return {"machine": info, "prompts": count, "tokens": tokens, "repeats": repeats, "arms": arms,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "loadavg_end": os.getloadavg()[0], "date": common.now()}


def to_markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        f"{res['prompts']} prompts x {res['tokens']} new tokens, T=1.0, {res['repeats']} timed call(s) per engine "
        f"after one warm-up; {res['date']}; vllm-cpu {m['vllm']}, torch {m['torch']}, {m['torch_threads']} threads "
        f"on {m.get('usable_cores')} cores, load {m.get('loadavg_1min')} at start and {res['loadavg_end']:.1f} at end; "
        f"process peak RSS {res['peak_rss_gib']:.1f} GiB.",
        "",
        "| engine | start-up s | tokens/s (median) | tokens/s (min-max) | vs HF fp32 |",
        "|---|---|---|---|---|",
    ]
    first = res["arms"][0]
    base = common.spread(first["tokens_per_s"])["median"] if first["engine"].startswith("HF") else None
    for arm in res["arms"]:
        s = common.spread(arm["tokens_per_s"])
        ratio = f"{fmt(s['median'] / base, 1)}x" if base else "n/a"
        lines.append(f"| {arm['engine']} | {fmt(arm['start_s'], 1)} | {fmt(s['median'], 0)} | "
                     f"{fmt(s['min'], 0)}-{fmt(s['max'], 0)} | {ratio} |")
    return "\n".join(lines)


def write(markdown: str, command: str) -> None:
    from bench.run_all import DOC, rewrite_section

    tag = "bench-vllm" + ("-packed" if "--packed" in command else "")
    body = f"Command: `{command}`\n\n{markdown}"
    DOC.write_text(rewrite_section(DOC.read_text(), body, f"<!-- {tag}:start -->", f"<!-- {tag}:end -->"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16 prompts x 32 tokens, one timed call")
    ap.add_argument("--compile", action="store_true", help="vLLM with its default torch.compile (minutes to start)")
    ap.add_argument("--packed", action="store_true", help="vLLM only, with its packed CPU kernels (no weight sync)")
    ap.add_argument("--write", action="store_true", help="rewrite the bench-vllm section of BENCHMARKS.md")
    a = ap.parse_args(argv)
    res = run(quick=a.quick, compile_=a.compile, packed=a.packed)
    table = to_markdown(res)
    print(table)
    if a.write:
        flags = " ".join(f for f, on in (("--quick", a.quick), ("--compile", a.compile), ("--packed", a.packed)) if on)
        write(table, f".venv-vllm/bin/python -m bench.bench_vllm_generation {flags}".strip())


if __name__ == "__main__":
    main()
