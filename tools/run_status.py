"""Where a stage of a run stands (exit 0 when complete): megatron_patch/cli/run_status.py."""
import sys

from megatron_patch.cli.run_status import main

if __name__ == "__main__":
    sys.exit(main())
