"""Token-level loss and perplexity of a checkpoint on a dataset; see `--help` and
megatron_patch/cli/evaluate.py."""
import sys

from megatron_patch.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
