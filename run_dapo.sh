#!/usr/bin/env bash
# DAPO training. Every setting is an environment variable named like its flag in upper case
# (LEARNING_RATE=1e-6 -> --learning_rate 1e-6; `python train_dapo.py --help` lists them); MODEL_PATH,
# PER_DEVICE_BATCH_SIZE, FILTER_GROUPS and RESUME are accepted as short names. Unset variables fall back to
# the recipe (CONFIG=recipes/....yaml) and then to the defaults in train_dapo.py's dataclasses (the DAPO
# reference recipe); extra command-line arguments win over everything.
#
#   MODEL_PATH=smollm2-135m DATASET_NAME=arithmetic_easy ./run_dapo.sh --max_steps 5
#   CONFIG=recipes/dapo_qwen2.5_7b_8gpu.yaml ACCELERATE_CONFIG=zero3 NUM_PROCESSES=8 ./run_dapo.sh
set -euo pipefail
cd "$(dirname "$0")"

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python
  else
    echo "error: no .venv here; run \`make setup\` first (or set PYTHON to an interpreter with requirements.txt installed)" >&2
    exit 2
  fi
fi

# Torch's CPU threads sleep at barriers instead of spinning: on a shared or busy CPU a spinning wait policy
# slows every process down many times over (BENCHMARKS.md, "Threads under load").
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

ARGS=()
[ -n "${CONFIG:-}" ] && ARGS+=(--config "$CONFIG")
# Environment variables -> flags (cli.py knows every setting; a misspelled variable is an error).
ENV_FLAGS=$(mktemp)
trap 'rm -f "$ENV_FLAGS" "$ENV_FLAGS.err"' EXIT
if ! "$PYTHON" cli.py env-args > "$ENV_FLAGS" 2> "$ENV_FLAGS.err"; then
  cat "$ENV_FLAGS.err" >&2
  if grep -q ModuleNotFoundError "$ENV_FLAGS.err"; then
    echo "error: $PYTHON lacks the project's packages; run \`make setup\` (or pip install -r requirements.txt)" >&2
  fi
  exit 2
fi
while IFS= read -r -d '' arg; do ARGS+=("$arg"); done < "$ENV_FLAGS"

# Launcher: plain python for one process; accelerate (GPU: DDP / DeepSpeed / FSDP via ACCELERATE_CONFIG)
# for several; torch's launcher for several CPU processes (USE_CPU=1; accelerate's multi-CPU mode needs MPI) unless
# ACCELERATE_CONFIG asks for DeepSpeed / FSDP2, which accelerate launches on CPU processes too.
# ACCELERATE_CONFIG takes a path or a short name from configs/ (single_gpu, multi_gpu, zero2, zero3,
# zero3_offload, fsdp2). NUM_PROCESSES counts the processes on ALL machines (accelerate's meaning); with
# ACCELERATE_CONFIG and no NUM_PROCESSES, the config's num_processes is used. Several machines: run this
# script once per machine with the same NUM_PROCESSES / NUM_MACHINES / MAIN_PROCESS_IP / MAIN_PROCESS_PORT
# and MACHINE_RANK 0..NUM_MACHINES-1 (docs/scaling.md, examples/slurm_dapo.sbatch).
NUM_PROCESSES_SET=${NUM_PROCESSES:-}
NUM_PROCESSES=${NUM_PROCESSES:-1}
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-}
USE_CPU=${USE_CPU:-0}
if [ -n "$ACCELERATE_CONFIG" ] && [ ! -f "$ACCELERATE_CONFIG" ] && [ -f "configs/$ACCELERATE_CONFIG.yaml" ]; then
  ACCELERATE_CONFIG=configs/$ACCELERATE_CONFIG.yaml
fi
if [ -n "$ACCELERATE_CONFIG" ] && [ ! -f "$ACCELERATE_CONFIG" ]; then
  echo "error: ACCELERATE_CONFIG=$ACCELERATE_CONFIG is neither a file nor one of: $(cd configs && ls *.yaml | sed 's/\.yaml$//' | tr '\n' ' ')" >&2
  exit 2
fi
if [ "${NUM_MACHINES:-1}" -gt 1 ]; then
  if [ -z "$NUM_PROCESSES_SET" ] || [ $((NUM_PROCESSES % NUM_MACHINES)) -ne 0 ]; then
    echo "error: with NUM_MACHINES=$NUM_MACHINES set NUM_PROCESSES to the total number of processes (GPUs) on all machines, a multiple of NUM_MACHINES" >&2
    exit 2
  fi
fi
# CPU processes (USE_CPU=1): fp32, gloo. DeepSpeed is turned off by accelerate under --use_cpu, so a DeepSpeed
# config runs with --use_cpu false --ddp_backend gloo and DeepSpeed's CPU accelerator; FSDP2 keeps --use_cpu
# (sharding.py switches accelerate to FSDP on CPU processes).
if [ "$USE_CPU" = 1 ] && [ -n "$ACCELERATE_CONFIG" ] && grep -q '^distributed_type: *DEEPSPEED' "$ACCELERATE_CONFIG"; then
  ARGS+=(--use_cpu false --ddp_backend gloo)
  export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
elif [ "$USE_CPU" = 1 ]; then
  ARGS+=(--use_cpu true)
fi
if [ "$USE_CPU" = 1 ] && [ "$NUM_PROCESSES" -gt 1 ] && [ -z "$ACCELERATE_CONFIG" ]; then
  LAUNCH=("$PYTHON" -m torch.distributed.run --nproc_per_node "$NUM_PROCESSES" --master_port "${MAIN_PROCESS_PORT:-29500}")
elif [ "$NUM_PROCESSES" -gt 1 ] || [ -n "$ACCELERATE_CONFIG" ]; then
  LAUNCH=("$PYTHON" -m accelerate.commands.launch)
  if [ -n "$NUM_PROCESSES_SET" ] || [ -z "$ACCELERATE_CONFIG" ]; then LAUNCH+=(--num_processes "$NUM_PROCESSES"); fi
  [ -n "$ACCELERATE_CONFIG" ] && LAUNCH+=(--config_file "$ACCELERATE_CONFIG")
  [ "$USE_CPU" = 1 ] && LAUNCH+=(--mixed_precision no)
  [ -n "${NUM_MACHINES:-}" ] && LAUNCH+=(--num_machines "$NUM_MACHINES")
  [ -n "${MACHINE_RANK:-}" ] && LAUNCH+=(--machine_rank "$MACHINE_RANK")
  [ -n "${MAIN_PROCESS_IP:-}" ] && LAUNCH+=(--main_process_ip "$MAIN_PROCESS_IP")
  [ -n "${MAIN_PROCESS_PORT:-}" ] && LAUNCH+=(--main_process_port "$MAIN_PROCESS_PORT")
else
  LAUNCH=("$PYTHON")
fi

printf "+ %s\n" "$(printf "%q " "${LAUNCH[@]}" train_dapo.py "${ARGS[@]}" "$@")" >&2
rm -f "$ENV_FLAGS" "$ENV_FLAGS.err"
trap - EXIT
exec "${LAUNCH[@]}" train_dapo.py "${ARGS[@]}" "$@"
