"""Patch-level pretraining on megatron-core (launch with torchrun); see `--help` and
megatron_patch/cli/pretrain.py."""
import sys

from megatron_patch.cli.pretrain import main

if __name__ == "__main__":  # import-safe: dist_checkpointing may spawn helper processes
    sys.exit(main())
