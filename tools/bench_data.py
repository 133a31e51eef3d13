"""Data pipeline benchmark: see megatron_patch/cli/bench_data.py."""
import sys

from megatron_patch.cli.bench_data import main

if __name__ == "__main__":
    sys.exit(main())
