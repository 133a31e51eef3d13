#!/usr/bin/env bash
# The regime map of docs/results.md on the CPU: where patch training starts to pay. Each point is
# one tools/study.py directory (one model size at one budget, K=4, lambda=2/3): the patch run, its
# token stage alone (--transfer-controls), token-only at equal compute (0.5x) and at the same
# data (1.0x). Then tools/study.py --regime-map plots transfer_nats and the gap to the
# equal-compute control against tokens per parameter, one line per model size.
# The centre budgets (tiny 1.5M, cpu-small 0.8M) come from examples/study_transfer_cpu.sh and are
# reused when they are finished; a finished run is never trained twice.
#
#   bash examples/study_regime_cpu.sh                    # after examples/study_data.sh
# Knobs (environment): OUT (runs/regime), DATA_DIR (data/study), POINTS (size:budget pairs, in the
# order they run), MAP (OUT/map).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-runs/regime}
DATA_DIR=${DATA_DIR:-data/study}
POINTS=${POINTS:-tiny:1.5M cpu-small:0.8M tiny:0.375M cpu-small:0.4M tiny:3M mid:0.4M cpu-small:1.6M}
MAP=${MAP:-$OUT/map}
PY=$PWD/.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# Model shapes (8k vocabulary of the study corpus; parameters without / with the embeddings):
#   tiny       4 x 64,  FFN 176                0.20M / 1.2M
#   cpu-small  4 x 256, FFN 688                3.2M  / 7.3M
#   mid        6 x 512, FFN 1376, 8 heads      19.0M / 27.2M
model_flags() {
    case $1 in
        tiny) echo "--model tiny -- --lr 3e-3 --min-lr 3e-4" ;;
        cpu-small) echo "--model cpu-small --" ;;
        mid) echo "--model cpu-small -- --num-layers 6 --hidden-size 512 --ffn-hidden-size 1376 --num-attention-heads 8" ;;
    esac
}

dirs=()
for point in $POINTS; do
    size=${point%%:*}
    budget=${point#*:}
    study=$OUT/$size-$budget
    dirs+=("$size=$study")
    if [[ -f $study/results.csv ]]; then echo "reused: $study"; continue; fi  # e.g. the transfer study's
    # shellcheck disable=SC2046
    "$PY" tools/study.py --out "$study" --data-path "$DATA_DIR/train_text_document" \
        --tokenizer-model "$DATA_DIR/tok.model" --train-tokens "$budget" --patch-sizes 4 \
        --patch-fractions 2/3 --batch-policies same_tokens --controls 1.0 0.5 --transfer-controls \
        --launcher python --keep-going $(model_flags "$size") --config examples/configs/study_cpu.yaml
done
"$PY" tools/study.py --regime-map "$MAP" "${dirs[@]}" --fit
