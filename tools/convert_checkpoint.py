"""Convert a checkpoint (weights only / Hugging Face Llama, both ways): megatron_patch/cli/convert_checkpoint.py."""
import sys

from megatron_patch.cli.convert_checkpoint import main

if __name__ == "__main__":  # import-safe: dist_checkpointing's writer spawns a Manager process
    sys.exit(main())
