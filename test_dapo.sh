#!/usr/bin/env bash
# Quick test: the embedded model (SmolLM2-135M-Instruct, offline, CPU), 10 training prompts,
# 2 generations per prompt, 2 optimizer steps. Same environment overrides as run_dapo.sh;
# extra arguments pass through to train_dapo.py.
set -euo pipefail
cd "$(dirname "$0")"
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
export CONFIG=${CONFIG:-recipes/quick_test.yaml}
exec bash run_dapo.sh "$@"
