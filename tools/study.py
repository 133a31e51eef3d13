"""A grid of two-stage runs and its results table: see megatron_patch/cli/study.py."""
import sys

from megatron_patch.cli.study import main

if __name__ == "__main__":
    sys.exit(main())
