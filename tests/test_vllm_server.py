"""vLLM server mode on the CPU build: what works (serve + generate through TRL's client) and what cannot (weight sync).

Runs only where vllm is importable (`make test-vllm`). Starts vLLM's own server the way `trl vllm-serve` would
(`trl vllm-serve` and `vllm serve` stop with PackageNotFoundError: the CPU distribution is named vllm-cpu; the
server module runs), on the loopback interface, eager, with the embedded model; stops it at the end.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
pytest.importorskip("vllm", reason="vLLM tests run in .venv-vllm (make setup-vllm; make test-vllm)")

START_TIMEOUT = 600  # s; a cold start is ~1 min on an idle 2-core machine, several on a busy one


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import model_utils

    path = str(model_utils.embedded_model_dir("smollm2-135m"))
    port = free_port()
    log = tmp_path_factory.mktemp("vllm_server") / "server.log"
    # `vllm serve` (and so `trl vllm-serve`) looks up the distribution "vllm", which the CPU build is not named;
    # the server module itself runs.
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", path,
           "--host", "127.0.0.1", "--port", str(port),
           "--enforce-eager", "--max-model-len", "512", "--max-num-seqs", "8", "--logprobs-mode", "processed_logprobs",
           "--weight-transfer-config", json.dumps({"backend": "nccl"})]
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        import requests
        from trl.generation.vllm_client import VLLMClient

        deadline = time.monotonic() + START_TIMEOUT
        client = None
        while client is None:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                client = VLLMClient(base_url=f"http://127.0.0.1:{port}", connection_timeout=5)
            except requests.exceptions.ConnectionError:  # not up yet (TRL raises requests' ConnectionError)
                if time.monotonic() > deadline:
                    pytest.fail(f"vllm serve did not come up in {START_TIMEOUT} s:\n{log.read_text()[-3000:]}")
        yield client, path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=60)


def test_server_generates_through_trls_client(server):
    from transformers import AutoTokenizer

    client, path = server
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                             tokenize=True, return_dict=False)
               for q in ("What is 2 + 3?", "What is 7 - 4?")]
    out = client.generate(prompts=prompts, n=3, max_tokens=8, temperature=1.0, logprobs=0)
    assert out["prompt_ids"] == prompts
    assert len(out["completion_ids"]) == 6 and all(1 <= len(c) <= 8 for c in out["completion_ids"])
    # One log-prob per generated token, each a probability's logarithm.
    for ids, lps in zip(out["completion_ids"], out["logprobs"], strict=True):
        assert len(lps) == len(ids) and all(lp[0] <= 0 for lp in lps)


def test_server_weight_sync_needs_cuda(server):
    client, _ = server
    with pytest.raises(NotImplementedError, match="needs a CUDA device"):
        client.init_communicator(device="cpu")
