"""Layer specs sdpa vs local: see megatron_patch/cli/bench_spec.py."""
import sys

from megatron_patch.cli.bench_spec import main

if __name__ == "__main__":
    sys.exit(main())
