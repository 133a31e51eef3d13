#!/usr/bin/env bash
# The transfer study of docs/results.md on the CPU: what the patch stage hands the token stage.
# For each model (tiny, cpu-small) on the study corpus (examples/study_data.sh), K=4, lambda=2/3:
#   1. tools/study.py at the model's centre budget, two seeds (OUT/<model>-<budget>, a regime-map
#      point too): the patch run, its token stage alone (--transfer-controls), token-only at the
#      same compute (0.5x) and at the same data (1.0x);
#   2. the hand-over variants, one at a time, each the patch run's own token stage started from
#      its patch weights (--stage token --init-from RUN/patch_weights): re-initialised groups,
#      shrink and perturb; and two whole runs with their own alone controls: one LR schedule over
#      the run, and the plain output-projection init.
# transfer_nats = val loss(alone) - val loss(run): positive means the patch stage helped.
#
#   bash examples/study_transfer_cpu.sh                  # after examples/study_data.sh
# Knobs (environment): OUT (runs/regime), DATA_DIR (data/study), MODELS ("tiny cpu-small"),
# SEEDS ("1234 5678"), VARIANT_SEEDS ("1234"), VARIANTS (names below), BUDGET_tiny (1.5M),
# BUDGET_cpu_small (0.8M). Rerunning resumes: finished runs are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-runs/regime}
DATA_DIR=${DATA_DIR:-data/study}
MODELS=${MODELS:-tiny cpu-small}
SEEDS=${SEEDS:-1234 5678}
VARIANT_SEEDS=${VARIANT_SEEDS:-1234}
VARIANTS=${VARIANTS:-reinit_layers reinit_out_proj reinit_embedding reinit_layers,final_norm,output_layer shrink_perturb oproj_plain lrscope_run}
PY=$PWD/.venv/bin/python
CENTRE=K4-lam0.6667-same_tokens
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

budget() { local v="BUDGET_${1//-/_}"; case $1 in tiny) echo "${!v:-1.5M}";; *) echo "${!v:-0.8M}";; esac; }
model_flags() { case $1 in tiny) echo "--model tiny --lr 3e-3 --min-lr 3e-4";; *) echo "--model $1";; esac; }
tokens() { "$PY" -c "from megatron_patch.analysis.grid import parse_tokens; print(parse_tokens('$1'))"; }

run() {  # run DIR FLAGS...: one tools/pretrain.py launch, skipped when finished
    local dir=$1; shift
    if [[ -f "$dir/compute.json" ]]; then echo "reused: $dir"; return; fi
    mkdir -p "$dir"
    echo "run: $dir"
    "$PY" tools/pretrain.py --config examples/configs/study_cpu.yaml \
        --data-path "$DATA_DIR/train_text_document" --tokenizer-model "$DATA_DIR/tok.model" \
        --save "$dir" --load "$dir" "$@" > "$dir.log" 2>&1 \
        || { echo "FAILED: $dir (log: $dir.log)"; tail -5 "$dir.log"; return 1; }
}

for model in $MODELS; do
    B=$(budget "$model")
    study=$OUT/$model-$B
    read -r -a mflags <<< "$(model_flags "$model")"
    # shellcheck disable=SC2086
    "$PY" tools/study.py --out "$study" --data-path "$DATA_DIR/train_text_document" \
        --tokenizer-model "$DATA_DIR/tok.model" --model "$model" --train-tokens "$B" \
        --patch-sizes 4 --patch-fractions 2/3 --batch-policies same_tokens --controls 1.0 0.5 \
        --transfer-controls --seeds $SEEDS --launcher python --keep-going \
        -- --config examples/configs/study_cpu.yaml "${mflags[@]:2}"
    patch=("${mflags[@]}" --train-tokens "$(tokens "$B")" --patch-size 4 --patch-fraction 2/3)
    first=${SEEDS%% *}
    for seed in $VARIANT_SEEDS; do
        centre=$study/runs/$CENTRE
        [[ $seed == "$first" ]] || centre=$study/runs/$CENTRE-seed$seed
        v_dir=$study/variants/s$seed
        from=(--seed "$seed" --stage token --init-from "$centre/patch_weights")
        for v in $VARIANTS; do
            case $v in
                reinit_*) run "$v_dir/$v" "${patch[@]}" "${from[@]}" --handover-reinit "${v#reinit_}" ;;
                shrink_perturb) run "$v_dir/$v" "${patch[@]}" "${from[@]}" \
                                    --handover-shrink 0.5 --handover-perturb 0.5 ;;
                lrscope_run|oproj_plain)
                    extra=(--lr-schedule-scope run)
                    [[ $v == oproj_plain ]] && extra=(--output-proj-init plain)
                    run "$v_dir/$v" "${patch[@]}" --seed "$seed" "${extra[@]}"
                    run "$v_dir/$v-alone" "${patch[@]}" --seed "$seed" "${extra[@]}" \
                        --stage token --handover-reinit all ;;
                *) echo "unknown variant $v"; exit 2 ;;
            esac
        done
    done
done

# shellcheck disable=SC2086  # one argument per model
"$PY" - "$OUT" $MODELS <<'EOF'
# The hand-over table: every variant's final token-level val loss against its alone control
# (transfer_nats) and against the study's equal-compute control (token-0.5x).
import json, math, os, sys

def loss(run_dir):
    path = os.path.join(run_dir, "compute.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)["final_val_loss"]

out = sys.argv[1]
print("| model | seed | run | val loss | val ppl | transfer_nats | vs token-0.5x (nats) |")
print("|---|---|---|---|---|---|---|")
for study in sorted(os.listdir(out)):
    if not any(study.startswith(m + "-") for m in sys.argv[2:]):
        continue
    runs = os.path.join(out, study, "runs")
    control = loss(os.path.join(runs, "token-0.5x"))
    for name in sorted(os.listdir(runs)) if os.path.isdir(runs) else []:
        value = loss(os.path.join(runs, name))
        if value is None or name.endswith("-alone") or name.startswith("token"):
            continue
        alone = loss(os.path.join(runs, name + "-alone"))
        seed = name.split("-seed")[1] if "-seed" in name else "1234"
        rows = [(seed, "patch+token (paper)", value, alone)]
        v_dir = os.path.join(out, study, "variants", f"s{seed}")
        for v in sorted(os.listdir(v_dir)) if os.path.isdir(v_dir) else []:
            v_loss = loss(os.path.join(v_dir, v))
            if v_loss is None or v.endswith("-alone"):
                continue
            own = loss(os.path.join(v_dir, v + "-alone"))
            rows.append((seed, v, v_loss, own if own is not None else alone))
        for seed, label, value, ref in rows:
            transfer = "" if ref is None else f"{ref - value:+.4f}"
            gap = "" if control is None else f"{value - control:+.4f}"
            print(f"| {study} | {seed} | {label} | {value:.4f} | {math.exp(value):.1f} | {transfer} | {gap} |")
EOF
