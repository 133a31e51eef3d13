#!/bin/bash
# Submit the whole patch-level recipe as three dependent Slurm jobs:
#   patch_stage.sbatch  ->  convert.sbatch  ->  token_stage.sbatch
# each starting only if the previous one succeeded (--dependency=afterok). Every knob of the
# .sbatch files (NODES, GPUS_PER_NODE, TP, PP, CONFIG, DATA_PATH, TOKENIZER, SAVE, K, LAMBDA,
# TRAIN_TOKENS/TRAIN_ITERS, MBS, GBS, SEQ_LEN, LR, ...) is read from the environment and passed on
# unchanged, so both stages see the same budget, K and LAMBDA.
#
#   NODES=4 GPUS_PER_NODE=8 CONFIG=examples/configs/370m.yaml \
#   DATA_PATH=/data/pile_text_document TOKENIZER=/data/llama2/tokenizer.model \
#   SAVE=/ckpt/370m_k4 TRAIN_TOKENS=360000000000 K=4 LAMBDA=0.6667 \
#   bash examples/slurm/submit_two_stage.sh
#
# Extra sbatch options (account, partition, qos) go in SBATCH_EXTRA, e.g. "--account=abc -p gpu".
# DRY_RUN=1 prints the sbatch commands instead of submitting.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=${REPO:-$(cd "$HERE/../.." && pwd)}
NODES=${NODES:-2}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
: "${DATA_PATH:?set DATA_PATH}" "${TOKENIZER:?set TOKENIZER}" "${SAVE:?set SAVE}"
if [[ -z "${TRAIN_TOKENS:-}" && -z "${TRAIN_ITERS:-}" ]]; then
    echo "set TRAIN_TOKENS or TRAIN_ITERS (the whole two-stage budget)" >&2; exit 2
fi
K=${K:-4}
LAMBDA=${LAMBDA:-0.6667}
export REPO NODES GPUS_PER_NODE K LAMBDA
read -r -a EXTRA <<< "${SBATCH_EXTRA:-}"

submit() {  # submit [sbatch options...] SCRIPT -> prints the job id
    if [[ -n "${DRY_RUN:-}" ]]; then
        echo "sbatch --parsable --export=ALL ${EXTRA[*]} $*" >&2
        echo "DRYRUN$RANDOM"
    else
        sbatch --parsable --export=ALL "${EXTRA[@]}" "$@" | cut -d';' -f1
    fi
}

mkdir -p "$SAVE"
cd "$REPO"
PATCH_JOB=$(submit --nodes="$NODES" --gpus-per-node="$GPUS_PER_NODE" \
    --output="$SAVE/slurm-patch-%j.out" "$HERE/patch_stage.sbatch")
CONVERT_JOB=$(submit --dependency="afterok:$PATCH_JOB" \
    --output="$SAVE/slurm-convert-%j.out" "$HERE/convert.sbatch")
TOKEN_JOB=$(submit --dependency="afterok:$CONVERT_JOB" --nodes="$NODES" --gpus-per-node="$GPUS_PER_NODE" \
    --output="$SAVE/slurm-token-%j.out" "$HERE/token_stage.sbatch")
echo "submitted: patch stage $PATCH_JOB -> convert $CONVERT_JOB -> token stage $TOKEN_JOB"
echo "logs in $SAVE/slurm-*.out; metrics in $SAVE/metrics.jsonl; cancel all: scancel $PATCH_JOB $CONVERT_JOB $TOKEN_JOB"
