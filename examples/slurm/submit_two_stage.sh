#!/bin/bash
# Submit the whole patch-level recipe as three dependent Slurm jobs:
#   patch_stage.sbatch  ->  convert.sbatch  ->  token_stage.sbatch
# each starting only when the previous one succeeded (--dependency=afterok). A stage job that
# runs out of time (or is preempted) saves, requeues itself under the same job id and continues,
# so the jobs after it wait until the stage is complete. Every knob of the .sbatch files (CONFIG,
# DATA_PATH, TOKENIZER, SAVE, TP, PP, K, LAMBDA, TRAIN_TOKENS, MBS, ...) is read from the
# environment and passed on unchanged, so both stages see the same config, budget, K and LAMBDA;
# knobs left unset keep the config's values.
#
#   NODES=4 GPUS_PER_NODE=8 CONFIG=examples/configs/370m.yaml \
#   DATA_PATH=/data/pile_text_document TOKENIZER=/data/llama2/tokenizer.model \
#   SAVE=/ckpt/370m_k4 \
#   bash examples/slurm/submit_two_stage.sh
#
# What each stage job asks for: NODES (2) nodes, GPUS_PER_NODE (8) GPUs per node, and runs
# PROCS_PER_NODE training processes per node (default: GPUS_PER_NODE, or 1 when it is 0).
# GPUS_PER_NODE=0 is a CPU cluster: no GPU is requested and training runs with gloo.
# CPUS_PER_TASK (empty: the cluster's default) -> --cpus-per-task; EXCLUSIVE=1 (the default)
# -> --exclusive (whole nodes), EXCLUSIVE=0 shares nodes.
# Extra sbatch options (account, partition, qos, time) go in SBATCH_EXTRA, e.g. "--account=abc -p gpu".
# The jobs' logs go to LOG_DIR (default $SAVE.logs, beside the run directory: a first launch
# with --load SAVE wants SAVE empty or holding a run).
# DRY_RUN=1 prints the sbatch commands instead of submitting.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=${REPO:-$(cd "$HERE/../.." && pwd)}
NODES=${NODES:-2}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
PROCS_PER_NODE=${PROCS_PER_NODE:-$(( GPUS_PER_NODE > 0 ? GPUS_PER_NODE : 1 ))}
CPUS_PER_TASK=${CPUS_PER_TASK:-}
EXCLUSIVE=${EXCLUSIVE:-1}
CONFIG=${CONFIG-examples/configs/370m.yaml}
: "${DATA_PATH:?set DATA_PATH}" "${TOKENIZER:?set TOKENIZER}" "${SAVE:?set SAVE}"
LOG_DIR=${LOG_DIR:-$SAVE.logs}
export REPO NODES GPUS_PER_NODE PROCS_PER_NODE CONFIG
read -r -a EXTRA <<< "${SBATCH_EXTRA:-}"
STAGE_OPTS=(--nodes="$NODES")           # the two training jobs
CONVERT_OPTS=()                         # the hand-over: one process, CPU only
if (( GPUS_PER_NODE > 0 )); then STAGE_OPTS+=(--gpus-per-node="$GPUS_PER_NODE"); fi
if [[ -n "$CPUS_PER_TASK" ]]; then
    STAGE_OPTS+=(--cpus-per-task="$CPUS_PER_TASK"); CONVERT_OPTS+=(--cpus-per-task="$CPUS_PER_TASK")
fi
case "$EXCLUSIVE" in
    1) STAGE_OPTS+=(--exclusive) ;;
    0) ;;
    *) echo "EXCLUSIVE=$EXCLUSIVE: use 1 (whole nodes) or 0 (share nodes)" >&2; exit 2 ;;
esac
cd "$REPO"

if [[ -n "$CONFIG" && ! -f "$CONFIG" ]]; then
    echo "CONFIG=$CONFIG: no such file (a relative path is taken from $REPO)" >&2; exit 2
fi
# Fail before queueing anything when there is no budget at all (tools/pretrain.py checks the rest).
if [[ -z "${TRAIN_TOKENS:-}${TRAIN_ITERS:-}${TRAIN_SAMPLES:-}" ]]; then
    if [[ -z "$CONFIG" ]] || ! grep -Eq '^[[:space:]]*train_(tokens|iters|samples):[[:space:]]*[0-9]' "$CONFIG"; then
        echo "no budget: ${CONFIG:-no config} sets none of train_tokens/train_iters/train_samples;" \
             "set TRAIN_TOKENS, TRAIN_ITERS or TRAIN_SAMPLES (the whole two-stage budget)" >&2
        exit 2
    fi
fi

submit() {  # submit [sbatch options...] SCRIPT -> prints the job id
    if [[ -n "${DRY_RUN:-}" ]]; then
        echo "sbatch --parsable --export=ALL ${EXTRA[*]} $*" >&2
        echo "DRYRUN$RANDOM"
    else
        sbatch --parsable --export=ALL "${EXTRA[@]}" "$@" | cut -d';' -f1
    fi
}

# A job whose dependency failed is cancelled (reason DependencyNeverSatisfied) rather than left
# pending forever; resubmitting this script continues the run from its checkpoints.
mkdir -p "$SAVE" "$LOG_DIR"
PATCH_JOB=$(submit "${STAGE_OPTS[@]}" --output="$LOG_DIR/slurm-patch-%j.out" "$HERE/patch_stage.sbatch")
CONVERT_JOB=$(submit --dependency="afterok:$PATCH_JOB" --kill-on-invalid-dep=yes "${CONVERT_OPTS[@]}" \
    --output="$LOG_DIR/slurm-convert-%j.out" "$HERE/convert.sbatch")
TOKEN_JOB=$(submit --dependency="afterok:$CONVERT_JOB" --kill-on-invalid-dep=yes "${STAGE_OPTS[@]}" \
    --output="$LOG_DIR/slurm-token-%j.out" "$HERE/token_stage.sbatch")
echo "submitted: patch stage $PATCH_JOB -> convert $CONVERT_JOB -> token stage $TOKEN_JOB"
echo "logs in $LOG_DIR/slurm-*.out; metrics in $SAVE/metrics.jsonl; cancel all: scancel $PATCH_JOB $CONVERT_JOB $TOKEN_JOB"
echo "where a stage stands: python tools/run_status.py $SAVE --stage patch (or token)"
