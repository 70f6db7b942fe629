#!/usr/bin/env bash
# Full DAPO training. Every setting can be overridden by an environment variable; extra command-line
# arguments are passed through to train_dapo.py (they win over everything else).
#
#   MODEL_PATH=Qwen/Qwen2.5-7B NUM_PROCESSES=8 ./run_dapo.sh
#   CONFIG=recipes/cpu_demo.yaml ./run_dapo.sh --max_steps 5
#
# With CONFIG set, the YAML recipe supplies the defaults and only the variables you set are passed on.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
CONFIG=${CONFIG:-}
ARGS=()

# opt VAR --flag default: pass --flag $VAR if VAR is set; else the default, unless a CONFIG recipe is used.
opt() {
  local var=$1 flag=$2 default=${3-}
  if [ -n "${!var-}" ]; then ARGS+=("$flag" "${!var}")
  elif [ -z "$CONFIG" ] && [ -n "$default" ]; then ARGS+=("$flag" "$default"); fi
}

[ -n "$CONFIG" ] && ARGS+=(--config "$CONFIG")
# Model and data
opt MODEL_PATH                  --model_name_or_path          Qwen/Qwen2.5-7B
opt DATASET_NAME                --dataset_name                BytedTsinghua-SIA/DAPO-Math-17k
opt MAX_TRAIN_SAMPLES           --max_train_samples
opt OUTPUT_DIR                  --output_dir                  outputs/DAPO-TRL
# Batch: completions per update = PER_DEVICE_BATCH_SIZE x GRADIENT_ACCUMULATION_STEPS x processes
opt PER_DEVICE_BATCH_SIZE       --per_device_train_batch_size 1
opt GRADIENT_ACCUMULATION_STEPS --gradient_accumulation_steps 32
opt NUM_MINI_BATCHES            --num_mini_batches            16
opt NUM_GENERATIONS             --num_generations             16
opt NUM_ITERATIONS              --num_iterations
# Optimisation
opt LEARNING_RATE               --learning_rate               1e-6
opt WARMUP_ROLLOUT_STEPS        --warmup_rollout_steps        10
opt WEIGHT_DECAY                --weight_decay                0.1
opt MAX_GRAD_NORM               --max_grad_norm               1.0
opt NUM_TRAIN_EPOCHS            --num_train_epochs            1
opt MAX_STEPS                   --max_steps
opt SEED                        --seed                        42
opt BF16                        --bf16                        true
# DAPO
opt LOSS_TYPE                   --loss_type                   dapo
opt EPSILON                     --epsilon                     0.2
opt EPSILON_HIGH                --epsilon_high                0.28
opt DELTA                       --delta                       10.0
opt BETA                        --beta                        0.0
opt ENTROPY_COEFF               --entropy_coeff               0.0
opt APPLY_OVERLONG_PENALTY      --apply_overlong_penalty      true
opt OVERLONG_BUFFER_LEN         --overlong_buffer_len         4096
opt OVERLONG_PENALTY_FACTOR     --overlong_penalty_factor     1.0
opt MASK_TRUNCATED_COMPLETIONS  --mask_truncated_completions
opt FILTER_GROUPS               --filter_groups_enable        true
opt FILTER_GROUPS_METRIC        --filter_groups_metric        acc
opt MAX_FILTER_GEN_BATCHES      --max_filter_gen_batches      10
opt GEN_BATCH_MULTIPLIER        --gen_batch_multiplier        3
opt FILTER_GROUPS_ON_LIMIT      --filter_groups_on_limit
opt FILTER_GROUPS_CARRY_OVER    --filter_groups_carry_over
opt REWARD_MODE                 --reward_mode                 dapo
# Generation
opt MAX_PROMPT_LENGTH           --max_prompt_length           2048
opt MAX_COMPLETION_LENGTH       --max_completion_length       20480
opt TEMPERATURE                 --temperature                 1.0
opt TOP_P                       --top_p                       1.0
opt USE_VLLM                    --use_vllm
opt VLLM_MODE                   --vllm_mode
# Logging and checkpoints
opt REPORT_TO                   --report_to                   tensorboard
opt LOGGING_STEPS               --logging_steps               1
opt SAVE_STEPS                  --save_steps                  50
opt SAVE_TOTAL_LIMIT            --save_total_limit
opt RESUME                      --auto_resume                 true

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

echo "+ ${LAUNCH[*]} train_dapo.py ${ARGS[*]} $*" >&2
exec "${LAUNCH[@]}" train_dapo.py "${ARGS[@]}" "$@"
