#!/usr/bin/env bash
# A sorted corpus (docs/results.md, "Data order"): the study corpus written source by source
# (State of the Union, Shakespeare, Moby-Dick, then the e-mails) instead of hash-ordered, so a
# cut in file order would give the patch stage and the token stage different text. Trains the
# study's centre run (cpu-small, K=4, lambda=2/3) and its equal-compute token-only control on it.
#
#   bash examples/study_sorted_cpu.sh           # after examples/study_data.sh
# Knobs (environment): OUT (runs/sorted), DATA_DIR (data/study), BUDGET (400000 tokens), SEED (1234).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-runs/sorted}
DATA_DIR=${DATA_DIR:-data/study}
BUDGET=${BUDGET:-400000}
SEED=${SEED:-1234}
SORTED=${DATA_DIR}_sorted
PY=$PWD/.venv/bin/python

if [[ ! -f $SORTED/train_text_document.idx ]]; then
    mkdir -p "$SORTED"
    "$PY" - "$DATA_DIR/train.jsonl" "$SORTED/train.jsonl" <<'EOF'
import json, sys
order = ["sotu", "shakespeare", "moby-dick", "ham"]  # tools/fetch_corpus.py sources, id "source/..."
with open(sys.argv[1]) as f:
    docs = [json.loads(line) for line in f]
docs.sort(key=lambda d: order.index(d["id"].split("/")[0]))  # stable: hash order within a source
with open(sys.argv[2], "w") as f:
    f.writelines(json.dumps(d) + "\n" for d in docs)
EOF
    cp "$DATA_DIR/tok.model" "$SORTED/tok.model"
    "$PY" tools/preprocess_data.py --input "$SORTED/train.jsonl" --output-prefix "$SORTED/train" \
        --tokenizer-model "$SORTED/tok.model" --append-eod --workers 1 --no-progress
fi

run() {  # run DIR FLAGS...: skipped when finished
    local dir=$1; shift
    if [[ -f "$dir/compute.json" ]]; then echo "reused: $dir"; return; fi
    mkdir -p "$dir"
    "$PY" tools/pretrain.py --config examples/configs/study_cpu.yaml --model cpu-small \
        --data-path "$SORTED/train_text_document" --tokenizer-model "$SORTED/tok.model" \
        --seed "$SEED" --save "$dir" --load "$dir" "$@" > "$dir.log" 2>&1
}
run "$OUT/after-centre" --train-tokens "$BUDGET" --patch-size 4 --patch-fraction 2/3
run "$OUT/token-0.5x" --train-tokens $((BUDGET / 2))
for name in after-centre token-0.5x; do
    printf '%s: final val loss ' "$name"
    "$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['final_val_loss'])" "$OUT/$name/compute.json"
done
