"""The CPU demo's report (table, summary.json, validation loss against compute); see `--help`
and megatron_patch/cli/demo_report.py."""
import sys

from megatron_patch.cli.demo_report import main

if __name__ == "__main__":
    sys.exit(main())
