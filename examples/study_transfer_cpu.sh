#!/usr/bin/env bash
# The transfer study of docs/results.md on the CPU: what the patch stage hands the token stage.
# For each model (tiny, cpu-small) on the study corpus (examples/study_data.sh), K=4, lambda=2/3:
#   centre      patch stage then token stage (the paper's recipe)
#   alone       the centre's token stage from a fresh init (--stage token --handover-reinit all)
#   token-0.5x  token-only at the centre's compute (the equal-compute control)
#   hand-over variants, one at a time, each the centre's own token stage started from the centre's
#   patch weights (--stage token --init-from CENTRE/patch_weights): re-initialised groups,
#   shrink and perturb; and two whole runs: one LR schedule over the run, and the plain
#   output-projection init (with its own alone control).
# Seeds: SEEDS for the centre, alone and control; the variants with VARIANT_SEEDS.
# transfer_nats = val loss(alone) - val loss(run): positive means the patch stage helped.
#
#   bash examples/study_transfer_cpu.sh                  # after examples/study_data.sh
# Knobs (environment): OUT (runs/transfer), DATA_DIR (data/study), MODELS ("tiny cpu-small"),
# SEEDS ("1234 5678"), VARIANT_SEEDS ("1234"), BUDGET_tiny (1500000), BUDGET_cpu_small (800000),
# VARIANTS (names below). Rerunning resumes: a run whose compute.json exists is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-runs/transfer}
DATA_DIR=${DATA_DIR:-data/study}
MODELS=${MODELS:-tiny cpu-small}
SEEDS=${SEEDS:-1234 5678}
VARIANT_SEEDS=${VARIANT_SEEDS:-1234}
VARIANTS=${VARIANTS:-reinit_embedding reinit_output_layer reinit_final_norm reinit_out_proj reinit_layers shrink_perturb lrscope_run oproj_plain}
PY=$PWD/.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

budget() { local v="BUDGET_${1//-/_}"; case $1 in tiny) echo "${!v:-1500000}";; *) echo "${!v:-800000}";; esac; }
lr_flags() { case $1 in tiny) echo "--lr 3e-3 --min-lr 3e-4";; *) echo "";; esac; }

run() {  # run DIR FLAGS...: one tools/pretrain.py launch, skipped when finished
    local dir=$1; shift
    if [[ -f "$dir/compute.json" ]]; then echo "reused: $dir"; return; fi
    mkdir -p "$dir"
    echo "run: $dir"
    "$PY" tools/pretrain.py --config examples/configs/study_cpu.yaml \
        --data-path "$DATA_DIR/train_text_document" --tokenizer-model "$DATA_DIR/tok.model" \
        --save "$dir" --load "$dir" --no-tensorboard "$@" > "$dir.log" 2>&1 \
        || { echo "FAILED: $dir (log: $dir.log)"; tail -5 "$dir.log"; return 1; }
}

for model in $MODELS; do
    B=$(budget "$model")
    # shellcheck disable=SC2046
    common=(--model "$model" $(lr_flags "$model"))
    patch=(--train-tokens "$B" --patch-size 4 --patch-fraction 2/3)
    for seed in $SEEDS; do
        d=$OUT/$model/s$seed
        run "$d/centre" "${common[@]}" "${patch[@]}" --seed "$seed"
        run "$d/alone" "${common[@]}" "${patch[@]}" --seed "$seed" --stage token --handover-reinit all
        run "$d/token-0.5x" "${common[@]}" --train-tokens $((B / 2)) --seed "$seed"
    done
    for seed in $VARIANT_SEEDS; do
        d=$OUT/$model/s$seed
        from=(--stage token --init-from "$d/centre/patch_weights")
        for v in $VARIANTS; do
            case $v in
                reinit_*) run "$d/$v" "${common[@]}" "${patch[@]}" --seed "$seed" "${from[@]}" \
                              --handover-reinit "${v#reinit_}" ;;
                shrink_perturb) run "$d/$v" "${common[@]}" "${patch[@]}" --seed "$seed" "${from[@]}" \
                                    --handover-shrink 0.5 --handover-perturb 0.5 ;;
                lrscope_run) run "$d/$v" "${common[@]}" "${patch[@]}" --seed "$seed" --lr-schedule-scope run ;;
                oproj_plain)
                    run "$d/$v" "${common[@]}" "${patch[@]}" --seed "$seed" --output-proj-init plain
                    run "$d/$v-alone" "${common[@]}" "${patch[@]}" --seed "$seed" --output-proj-init plain \
                        --stage token --handover-reinit all ;;
                *) echo "unknown variant $v"; exit 2 ;;
            esac
        done
    done
done

"$PY" - "$OUT" <<'EOF'
# The table: final token-level val loss of every finished run, transfer against its alone control.
import json, math, os, sys
out = sys.argv[1]
print("| model | seed | run | val loss | val ppl | transfer_nats | vs token-0.5x (nats) |")
print("|---|---|---|---|---|---|---|")
for model in sorted(os.listdir(out)):
    for seed in sorted(os.listdir(os.path.join(out, model))):
        base = os.path.join(out, model, seed)
        loss = {}
        for name in sorted(os.listdir(base)):
            path = os.path.join(base, name, "compute.json")
            if os.path.isfile(path):
                with open(path) as f:
                    loss[name] = json.load(f)["final_val_loss"]
        for name, value in loss.items():
            alone = loss.get("oproj_plain-alone" if name == "oproj_plain" else "alone")
            transfer = "" if name.endswith("alone") or name.startswith("token") or alone is None \
                else f"{alone - value:+.4f}"
            gap = "" if "token-0.5x" not in loss or name.startswith("token") else f"{loss['token-0.5x'] - value:+.4f}"
            print(f"| {model} | {seed[1:]} | {name} | {value:.4f} | {math.exp(value):.1f} | {transfer} | {gap} |")
EOF
