"""HF-tokenizer preprocessing speed against Megatron-LM: see megatron_patch/cli/bench_tokenizers.py."""
import sys

from megatron_patch.cli.bench_tokenizers import main

if __name__ == "__main__":
    sys.exit(main())
