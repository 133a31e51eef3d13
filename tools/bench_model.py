"""Model throughput at K=1 and K: see megatron_patch/cli/bench_model.py."""
import sys

from megatron_patch.cli.bench_model import main

if __name__ == "__main__":
    sys.exit(main())
