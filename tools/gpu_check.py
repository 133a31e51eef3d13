"""The GPU path on one GPU in one command: environment, bf16 numerics, 370M speed at K=1 vs K=4,
and a two-stage training run with a checkpoint reload (< 5 minutes on an H100/H200).

    python tools/gpu_check.py --output gpu_check.json
    python tools/gpu_check.py --smoke --output /tmp/gpu_check_smoke.json   # CPU, toy sizes

See docs/gpu.md; the logic is megatron_patch/bench/gpu_check.py.
"""
import sys

from megatron_patch.cli.gpu_check import main

if __name__ == "__main__":  # import-safe: checkpoint saving may spawn helper processes
    sys.exit(main())
