"""Patch-level pretraining (Shao, Meng, Zhou 2024) on megatron-core: both stages in one command.

CPU demo (2 processes, gloo): K=4 on the first 2/3 of the data, then token-level training
    torchrun --nproc_per_node=2 tools/pretrain.py --config examples/configs/cpu_demo.yaml \\
        --data-path data/demo/train_text_document --tokenizer-model data/demo/tokenizer.model \\
        --patch-size 4 --patch-fraction 2/3 --save runs/demo/patch_k4

One 8-GPU node, the paper's 370M recipe (K=4, lambda=2/3, 2M-token steps, bf16):
    torchrun --nproc_per_node=8 tools/pretrain.py --config examples/configs/370m.yaml \\
        --data-path /data/pile_text_document --tokenizer-model llama2/tokenizer.model \\
        --train-tokens 360000000000 --save runs/370m --load runs/370m --exit-signal-handler

Flags override the YAML (`--help` lists them with their meaning). Exit status:
    0  every stage of this launch finished
    1  a setup error (the message says what to change); nothing was trained
    2  training diverged (a NaN/Inf loss or gradient norm); nothing was saved after it
    3  stopped early on --exit-signal-handler / --exit-duration-in-mins / --exit-interval after
       saving a checkpoint: relaunch the same command with --load SAVE to continue
"""
import os
import sys
import warnings

EXIT_OK, EXIT_SETUP, EXIT_DIVERGED = 0, 1, 2


def _quiet_warnings() -> None:
    # Optional GPU extras and deprecations inside megatron-core/torch, not actionable by a user.
    for pattern in (".*(Apex|apex|Transformer Engine|transformer_engine).*", ".*cuda_graph_scope.*",
                    ".*`load_state_dict` is deprecated.*", ".*deprecating ShardedTensor.*"):
        warnings.filterwarnings("ignore", message=pattern)


def _error(message: str) -> None:
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"pretrain.py: error: {message}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    _quiet_warnings()
    from megatron_patch.training.config import parse_config
    from megatron_patch.training.preflight import resolve

    try:
        cfg = resolve(parse_config(argv))  # fails fast, on every rank alike, before any collective
    except (ValueError, FileNotFoundError) as err:
        _error(str(err))
        return EXIT_SETUP
    from megatron_patch import distributed
    from megatron_patch.training.divergence import Diverged
    from megatron_patch.training.preemption import EXIT_CODE, ExitRequested
    from megatron_patch.training.trainer import Trainer

    try:
        Trainer(cfg).train()
        return EXIT_OK
    except ExitRequested as stop:
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"pretrain.py: stopped early: {stop}", flush=True)
        return EXIT_CODE
    except Diverged as err:
        _error(str(err))
        return EXIT_DIVERGED
    except (ValueError, FileNotFoundError) as err:  # incl. CheckpointError (a ValueError)
        _error(str(err))
        return EXIT_SETUP
    finally:
        distributed.destroy()


if __name__ == "__main__":  # import-safe: dist_checkpointing may spawn helper processes
    sys.exit(main())
