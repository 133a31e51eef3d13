"""Tokenise a corpus into megatron-core .bin/.idx files: see megatron_patch/cli/preprocess_data.py."""
import sys

from megatron_patch.cli.preprocess_data import main

if __name__ == "__main__":
    sys.exit(main())
