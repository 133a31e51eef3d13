"""Train a SentencePiece BPE tokenizer: see megatron_patch/cli/train_tokenizer.py."""
import sys

from megatron_patch.cli.train_tokenizer import main

if __name__ == "__main__":
    sys.exit(main())
