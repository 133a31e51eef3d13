"""Fetch a freely licensed corpus as JSONL: see megatron_patch/cli/fetch_corpus.py."""
import sys

from megatron_patch.cli.fetch_corpus import main

if __name__ == "__main__":
    sys.exit(main())
