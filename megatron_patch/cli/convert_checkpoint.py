"""Convert a checkpoint: weights only for the token stage, to a Hugging Face Llama directory, or
from one.

    python tools/convert_checkpoint.py --load runs/demo/patch --save runs/demo/patch_weights --to token
    python tools/convert_checkpoint.py --load runs/demo/token --save runs/demo/hf --to hf
    python tools/convert_checkpoint.py --from hf --load llama-hf-dir --save ckpt/llama

--load: a run directory of tools/pretrain.py (its last stage), a checkpoint directory (with
latest_checkpointed_iteration.txt) or one iter_*/release directory, saved at any TP/PP; with
`--from hf`, a LlamaForCausalLM directory (config.json + safetensors). It is only read.
`--config YAML` (optional) must describe the same model as the checkpoint. `token` writes
DST/release/ + the pointer "release": model weights only (no optimizer, scheduler, RNG or step),
loadable at any TP/PP (`tools/pretrain.py --init-from DST`). `hf` writes config.json +
model.safetensors (+ tokenizer files) via megatron_patch.export.export_hf. `--from hf` writes the
same kind of release checkpoint as `token`, its config.yaml taken from the HF config and the HF
tokenizer files in DST/tokenizer/ (docs/checkpoints.md). Runs as one process on CPU; a missing,
incomplete or unsupported input or a mismatched config exits with status 1 and writes nothing.
"""
import argparse
import os
import sys
import warnings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="convert_checkpoint.py", description=__doc__.split("\n")[0])
    p.add_argument("--load", required=True, help="source checkpoint or HF directory (never modified)")
    p.add_argument("--save", required=True, help="destination directory (must not exist or be empty)")
    p.add_argument("--to", choices=("token", "hf"), default=None,
                   help="output kind (required unless --from hf, which writes a release checkpoint)")
    p.add_argument("--from", dest="source", choices=("hf",), default=None,
                   help="hf: --load is a Hugging Face LlamaForCausalLM directory to import")
    p.add_argument("--tokenizer-model", default=None,
                   help="hf: ship this tokenizer (default: the run's, if the file exists)")
    p.add_argument("--allow-unfinished-stage", action="store_true",
                   help="token: hand over a stage that did not complete its steps (deliberately)")
    p.add_argument("--config", default=None,
                   help="run YAML the checkpoint must match (model architecture); an error if not")
    return p


def _convert(args) -> str:
    from megatron_patch import distributed
    from megatron_patch.config import ParallelConfig
    from megatron_patch.training.convert import convert_from_hf, convert_to_hf, convert_to_token, expected_model

    if args.source == "hf" and args.to not in (None, "token"):
        raise ValueError("--from hf writes a release checkpoint of this product; drop --to hf")
    if args.source is None and args.to is None:
        raise ValueError("give --to token|hf (or --from hf to import a Hugging Face model)")
    if args.source == "hf" or args.to == "hf":
        from megatron_patch.export.hf import check_installed

        check_installed(export=args.to == "hf")
    expect = expected_model(args.config, args.tokenizer_model) if args.config else None
    parallel = ParallelConfig()
    distributed.initialize(parallel)
    if args.source == "hf":
        return convert_from_hf(args.load, args.save, expect=expect)
    if args.to == "token":
        return convert_to_token(args.load, args.save, parallel, expect=expect,
                                allow_unfinished=args.allow_unfinished_stage)
    return convert_to_hf(args.load, args.save, tokenizer_model=args.tokenizer_model, expect=expect)


def main(argv=None) -> int:
    warnings.filterwarnings("ignore")
    args = build_parser().parse_args(argv)
    from megatron_patch import distributed

    rank = int(os.environ.get("RANK", 0))
    try:
        out = _convert(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:  # CheckpointError is a ValueError
        if rank == 0:
            print(f"convert_checkpoint.py: error: {err}", file=sys.stderr, flush=True)
        distributed.destroy()
        return 1
    if rank == 0:
        print(f"wrote {out}", flush=True)
    distributed.destroy()
    return 0
