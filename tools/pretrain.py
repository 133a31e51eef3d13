"""Patch-level pretraining (Shao, Meng, Zhou 2024) on megatron-core: both stages in one command.

CPU demo (2 processes, gloo): K=4 on the first 2/3 of the data, then token-level training
    torchrun --nproc_per_node=2 tools/pretrain.py --config examples/configs/cpu_demo.yaml \
        --data-path data/demo/train_text_document --tokenizer-model data/demo/tokenizer.model \
        --patch-size 4 --patch-fraction 2/3 --save runs/demo/patch_k4

One 8-GPU node, the paper's 370M recipe (K=4, lambda=2/3, 2M-token steps, bf16):
    torchrun --nproc_per_node=8 tools/pretrain.py --config examples/configs/370m.yaml \
        --data-path /data/pile_text_document --tokenizer-model llama2/tokenizer.model \
        --train-tokens 360000000000 --save runs/370m --load runs/370m

Flags override the YAML (`--help` lists them). `--stage patch|token` runs one stage (separate
SLURM jobs; the token stage starts from SAVE/patch_weights, converting SAVE/patch if needed);
`--load SAVE` resumes a run where it stopped. Outputs: SAVE/{patch,patch_weights,token}/,
SAVE/metrics.jsonl, SAVE/compute.json (and SAVE/tensorboard/ when tensorboard is installed).
A setup error exits with status 1 and a message saying what to change.
"""
import os
import sys
import warnings


def _quiet_warnings() -> None:
    # Optional GPU extras and deprecations inside megatron-core/torch, not actionable by a user.
    for pattern in (".*(Apex|apex|Transformer Engine|transformer_engine).*", ".*cuda_graph_scope.*",
                    ".*`load_state_dict` is deprecated.*", ".*deprecating ShardedTensor.*"):
        warnings.filterwarnings("ignore", message=pattern)


def main(argv=None) -> int:
    _quiet_warnings()
    from megatron_patch.training.config import parse_config
    from megatron_patch.training.preflight import resolve

    try:
        cfg = resolve(parse_config(argv))  # fails fast, on every rank alike, before any collective
        from megatron_patch.training.loop import run

        run(cfg)
    except (ValueError, FileNotFoundError) as err:  # incl. CheckpointError (a ValueError)
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"pretrain.py: error: {err}", file=sys.stderr, flush=True)
        _destroy()
        return 1
    _destroy()
    return 0


def _destroy() -> None:
    if "megatron_patch.distributed" in sys.modules:
        sys.modules["megatron_patch.distributed"].destroy()


if __name__ == "__main__":  # import-safe: dist_checkpointing may spawn helper processes
    sys.exit(main())
