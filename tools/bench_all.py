"""Run every benchmark and print one table: see megatron_patch/cli/bench_all.py."""
import sys

from megatron_patch.cli.bench_all import main

if __name__ == "__main__":
    sys.exit(main())
