"""Train a SentencePiece BPE tokenizer (LLaMA-2 style, byte fallback) on preprocessing inputs.

Settings and why: megatron_patch/tokenizer_training.py.

Run (CPU):
    python tools/train_tokenizer.py --input data/corpus.jsonl --model-prefix data/tok \\
        --vocab-size 8000
    # -> data/tok.model, data/tok.vocab
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from megatron_patch.data.text_input import InputError
from megatron_patch.tokenizer_training import train_tokenizer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True,
                        help="JSONL or plain-text files (one document per line), .gz, or globs")
    parser.add_argument("--input-format", default="auto", choices=["auto", "jsonl", "text"],
                        help="auto: from the extension (.jsonl/.json, .txt)")
    parser.add_argument("--json-keys", nargs="+", default=["text"],
                        help="JSON keys whose text is used")
    parser.add_argument("--model-prefix", required=True,
                        help="output path without extension: writes PREFIX.model and PREFIX.vocab")
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--input-sentence-size", type=int, default=2_000_000,
                        help="lines sampled for training (SentencePiece samples at random)")
    parser.add_argument("--max-sentence-length", type=int, default=8192,
                        help="longer lines (bytes) are skipped")
    parser.add_argument("--character-coverage", type=float, default=0.99995)
    parser.add_argument("--num-threads", type=int, default=os.cpu_count() or 1)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        path = train_tokenizer(args.input, args.model_prefix, args.vocab_size, args.input_format,
                               args.json_keys, args.input_sentence_size, args.max_sentence_length,
                               args.character_coverage, args.num_threads)
    except InputError as err:
        print(f"train_tokenizer.py: error: {err}", file=sys.stderr)
        return 1
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=path)
    print(f"wrote {path} ({sp.get_piece_size()} pieces) in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
