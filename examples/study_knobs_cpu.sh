#!/usr/bin/env bash
# The recipe-knob study of docs/results.md on the CPU (2 cores, about 25 minutes of training): one
# knob at a time around the paper's recipe (K=4, lambda=2/3, same tokens per step), on the same
# corpus and model as examples/study_cpu.sh, against the token-only run of equal compute:
#   centre and the best setting (decay 0.5) twice, with two seeds; K=2, K=8; a higher patch-stage lr; the optimizer carried over the
#   hand-over; a short token-stage warmup; a K schedule 4 -> 2; target weights decaying 0.5**k;
#   token-only at 0.5x of the budget (the equal-compute control).
# Then tools/neuron_activation.py (the paper's Fig. 8 measure) on the K=1, 2, 4, 8 models.
#
#   bash examples/study_knobs_cpu.sh        # after examples/study_cpu.sh has made data/study
# Knobs (environment): OUT (runs/study_knobs), DATA_DIR (data/study), BUDGET (0.8M tokens),
# SETUP=0 (use the existing .venv as it is). Rerunning resumes: finished runs are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-runs/study_knobs}
DATA_DIR=${DATA_DIR:-data/study}
BUDGET=${BUDGET:-0.8M}
CENTRE=K4-lam0.6667-same_tokens

t0=$SECONDS
say() { printf '\n[knobs %4ds] %s\n' $((SECONDS - t0)) "$*"; }
if [[ "${SETUP:-1}" == 1 ]]; then
    say "environment (tools/setup_env.sh)"
    bash tools/setup_env.sh
fi
PY=$PWD/.venv/bin/python

say "corpus, tokenizer, .bin/.idx (examples/study_data.sh)"
bash examples/study_data.sh "$DATA_DIR"
TOK=$DATA_DIR/tok.model

say "grid (tools/study.py --design star)"
"$PY" tools/study.py --out "$OUT" --data-path "$DATA_DIR/train_text_document" --tokenizer-model "$TOK" \
    --model cpu-small --train-tokens "$BUDGET" --patch-sizes 4 2 8 --patch-fractions 2/3 \
    --batch-policies same_tokens --design star --controls 0.5 \
    --patch-lr none 3e-3 --handover-optimizer reset carry --token-lr-warmup-iters none 2 \
    --patch-schedule none 4:0.5,2:0.1667 --patch-target-decay 1 0.5 \
    --seeds 1234 5678 --seed-runs "$CENTRE" "$CENTRE-decay0.5" \
    --launcher python --keep-going -- --config examples/configs/study_cpu.yaml

say "neuron activation, the paper's Fig. 8 measure (tools/neuron_activation.py)"
"$PY" tools/neuron_activation.py --definition paper \
    --load "K1=$OUT/runs/token-0.5x/token" "K2=$OUT/runs/K2-lam0.6667-same_tokens/patch" \
           "K4=$OUT/runs/$CENTRE/patch" "K8=$OUT/runs/K8-lam0.6667-same_tokens/patch" \
    --data-path "$DATA_DIR/train_text_document" --seq-length 1024 --num-samples 8 \
    --csv "$OUT/neurons_by_K.csv" --plot "$OUT/neurons_by_K.png" | tee "$OUT/neurons_by_K.md"
say "done: $OUT/results.md, $OUT/*.png, $OUT/neurons_by_K.*"
