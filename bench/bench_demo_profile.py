"""Profile of the demo's phases on the embedded model, against this machine's limits.

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python -m bench.bench_demo_profile [--threads N]

In one process, at the demo's shapes (recipes/cpu_demo.yaml: arithmetic prompts without the DAPO
template, 32 completions of up to 32 tokens per rollout, micro-batches of 8 in the update):
  * machine limits: a plain fp32 matmul (GFLOP/s) and a large tensor copy (GB/s, read + write);
  * generation: HF ``generate`` of 32 sampled completions of exactly 32 new tokens, tokens/s, and the
    memory bandwidth it implies (every decode step reads all weights once) as a share of the copy rate;
  * old-log-prob pass (no grad) and update (forward + backward) on the same rows: tokens/s and the FLOP
    rate they imply (2 x matmul parameters per token forward, 6 x for forward + backward) as a share
    of the matmul rate.
Wall-clock numbers: on a shared machine read them with the load printed next to them.
"""

from __future__ import annotations

import argparse
import os
import time

from bench import common


def _best(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def machine_limits(torch) -> dict:
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = _best(lambda: [a @ b for _ in range(8)])
    gflops = 8 * 2 * n**3 / t / 1e9
    src = torch.randn(64 * 2**20)  # 256 MiB
    dst = torch.empty_like(src)
    dst.copy_(src)
    t = _best(lambda: dst.copy_(src))
    gbs = 2 * src.numel() * 4 / t / 1e9
    return {"matmul_gflops": gflops, "copy_gbs": gbs}


def run(threads: int | None = None) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import model_utils
    from dataset_utils import load_dapo_dataset

    if threads:
        torch.set_num_threads(threads)
    common.quiet()
    info = common.machine_info()
    limits = machine_limits(torch)
    path = model_utils.resolve_model_path("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    matmul_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))

    data = load_dapo_dataset("arithmetic_easy", template="none", max_samples=4, shuffle=True, seed=42)
    prompts = [tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
               for r in data for _ in range(8)]
    enc = tok(prompts, return_tensors="pt", padding=True)
    new = 32
    model.eval()
    torch.manual_seed(0)

    def generate():
        with torch.no_grad():
            return model.generate(**enc, do_sample=True, temperature=1.0, max_new_tokens=new, min_new_tokens=new,
                                  pad_token_id=tok.pad_token_id)

    out = generate()  # warm-up
    t_gen = _best(generate, repeats=2)
    gen_tokens = len(prompts) * new
    ids, mask = out, torch.cat([enc["attention_mask"], torch.ones(len(prompts), new, dtype=torch.long)], 1)
    seq_tokens = int(mask.sum())

    def logprob_pass():
        with torch.no_grad():
            for i in range(0, ids.size(0), 8):
                model(input_ids=ids[i : i + 8], attention_mask=mask[i : i + 8]).logits[:, -new - 1 : -1].log_softmax(-1)

    model.train()

    def update():
        for i in range(0, ids.size(0), 8):
            logits = model(input_ids=ids[i : i + 8], attention_mask=mask[i : i + 8]).logits[:, -new - 1 : -1]
            logits.float().log_softmax(-1).gather(-1, ids[i : i + 8, -new:, None]).mean().backward()
        model.zero_grad(set_to_none=True)

    logprob_pass()
    t_lp = _best(logprob_pass, repeats=2)
    update()
    t_up = _best(update, repeats=2)
    res = {
        "machine": info, "threads": torch.get_num_threads(), "limits": limits, "weight_gb": weight_bytes / 1e9,
        "rows": len(prompts), "prompt_tokens_padded": enc["input_ids"].size(1), "new_tokens": new,
        "generation": {"seconds": t_gen, "tokens_per_s": gen_tokens / t_gen,
                       "implied_gbs": new * weight_bytes / t_gen / 1e9},
        "logprob_pass": {"seconds": t_lp, "tokens_per_s": seq_tokens / t_lp,
                         "gflops": 2 * matmul_params * seq_tokens / t_lp / 1e9},
        "update": {"seconds": t_up, "tokens_per_s": seq_tokens / t_up,
                   "completion_tokens_per_s": gen_tokens / t_up,
                   "gflops": 6 * matmul_params * seq_tokens / t_up / 1e9},
        "loadavg_end": os.getloadavg()[0],
    }
    return res


def to_markdown(res: dict) -> str:
    lim, g, lp, up = res["limits"], res["generation"], res["logprob_pass"], res["update"]
    return "\n".join([
        f"{common.machine_line(res['machine'])}; load {res['loadavg_end']:.1f} at the end; {res['threads']} torch "
        f"thread(s). {res['rows']} rows, prompts padded to {res['prompt_tokens_padded']} tokens, "
        f"{res['new_tokens']} new tokens each; fp32 weights {res['weight_gb']:.2f} GB.",
        "",
        "| phase | time (s) | tokens/s | implied rate | share of machine limit |",
        "|---|---:|---:|---:|---:|",
        f"| machine: fp32 matmul 1024^3 | | | {lim['matmul_gflops']:.1f} GFLOP/s | 1 |",
        f"| machine: 256 MiB copy | | | {lim['copy_gbs']:.1f} GB/s | 1 |",
        f"| generation (HF generate, sampled) | {g['seconds']:.2f} | {g['tokens_per_s']:.0f} new | "
        f"{g['implied_gbs']:.2f} GB/s weights read | {g['implied_gbs'] / lim['copy_gbs']:.2f} of copy |",
        f"| old-log-prob pass (no grad) | {lp['seconds']:.2f} | {lp['tokens_per_s']:.0f} | "
        f"{lp['gflops']:.1f} GFLOP/s | {lp['gflops'] / lim['matmul_gflops']:.2f} of matmul |",
        f"| update (forward + backward) | {up['seconds']:.2f} | {up['tokens_per_s']:.0f} "
        f"({up['completion_tokens_per_s']:.0f} "
        f"completion) | {up['gflops']:.1f} GFLOP/s | {up['gflops'] / lim['matmul_gflops']:.2f} of matmul |",
    ])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    res = run(ap.parse_args(argv).threads)
    print(to_markdown(res))
    return res


if __name__ == "__main__":
    main()
