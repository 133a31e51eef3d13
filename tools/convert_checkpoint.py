"""Convert a checkpoint: weights only for the token stage, or a Hugging Face Llama directory.

    python tools/convert_checkpoint.py --load runs/demo/patch --save runs/demo/patch_weights --to token
    python tools/convert_checkpoint.py --load runs/demo/token --save runs/demo/hf --to hf

--load: a run directory of tools/pretrain.py (its last stage), a checkpoint directory (with
latest_checkpointed_iteration.txt) or one iter_*/release directory, saved at any TP/PP; it is
only read. `--config YAML` (optional) must describe the same model as the checkpoint. `token` writes DST/release/ + the pointer
"release": model weights only (no optimizer, scheduler, RNG or step), loadable by the token-level
model at any TP/PP (`tools/pretrain.py --stage token --init-from DST`). `hf` writes config.json +
model.safetensors (+ tokenizer files) via megatron_patch.export.export_hf. Runs as one process
on CPU; a missing/incomplete checkpoint or a mismatched config exits with status 1.
"""
import argparse
import os
import sys
import warnings


def main(argv=None) -> int:
    warnings.filterwarnings("ignore")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--load", required=True, help="source checkpoint (never modified)")
    p.add_argument("--save", required=True, help="destination directory (must not exist or be empty)")
    p.add_argument("--to", required=True, choices=("token", "hf"), help="output kind")
    p.add_argument("--tokenizer-model", default=None,
                   help="hf: ship this tokenizer (default: the run's, if the file exists)")
    p.add_argument("--config", default=None,
                   help="run YAML the checkpoint must match (model architecture); an error if not")
    args = p.parse_args(argv)

    from megatron_patch import distributed
    from megatron_patch.config import ParallelConfig
    from megatron_patch.training.checkpointing import CheckpointError
    from megatron_patch.training.convert import convert_to_hf, convert_to_token, expected_model

    rank = int(os.environ.get("RANK", 0))
    try:
        expect = expected_model(args.config, args.tokenizer_model) if args.config else None
        parallel = ParallelConfig()
        distributed.initialize(parallel)
        if args.to == "token":
            out = convert_to_token(args.load, args.save, parallel, expect=expect)
        else:
            out = convert_to_hf(args.load, args.save, tokenizer_model=args.tokenizer_model, expect=expect)
    except (ValueError, CheckpointError, FileNotFoundError, FileExistsError) as err:
        if rank == 0:
            print(f"convert_checkpoint.py: error: {err}", file=sys.stderr, flush=True)
        distributed.destroy()
        return 1
    if rank == 0:
        print(f"wrote {out}", flush=True)
    distributed.destroy()
    return 0


if __name__ == "__main__":  # import-safe: dist_checkpointing's writer spawns a Manager process
    sys.exit(main())
