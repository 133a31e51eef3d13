"""Train a SentencePiece BPE tokenizer (LLaMA-2 style, byte fallback) on preprocessing inputs.

For users without a tokenizer: the result plugs into tools/preprocess_data.py --tokenizer-model
and the trainer's --tokenizer-model. Settings follow LLaMA-2's tokenizer.model: BPE, byte
fallback (no <unk> on unseen characters), split digits, whitespace kept as is (code stays
intact), <unk>=0 <s>=1 </s>=2, no pad. Documents are split into lines for training, because
SentencePiece learns from single lines; newlines are then encoded with the byte pieces.

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
from typing import Iterator

import sentencepiece

from megatron_patch.data.encode import parse_chunk
from megatron_patch.data.text_input import InputError, expand_inputs, iter_chunks


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    return parser.parse_args(argv)


def iter_lines(args: argparse.Namespace) -> Iterator[str]:
    """Non-empty lines of every document of every input."""
    files = expand_inputs(args.input, args.input_format)
    for chunk, _ in iter_chunks(files):
        texts, _, _ = parse_chunk(chunk, args.json_keys)
        for key_texts in texts.values():
            for text in key_texts:
                for line in text.split("\n"):
                    if line and not line.isspace():
                        yield line


def train(args: argparse.Namespace) -> str:
    """Train and return the path of the .model file (written under a temporary name first)."""
    if args.vocab_size < 260:
        raise InputError(f"--vocab-size {args.vocab_size}: byte fallback alone needs 259 ids; use >= 260")
    expand_inputs(args.input, args.input_format)  # fail on missing inputs before training
    out_dir = os.path.dirname(os.path.abspath(args.model_prefix))
    os.makedirs(out_dir, exist_ok=True)
    tmp_prefix = f"{args.model_prefix}.tmp-{os.getpid()}"
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter_lines(args),
            model_prefix=tmp_prefix,
            model_type="bpe",
            vocab_size=args.vocab_size,
            byte_fallback=True,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            remove_extra_whitespaces=False,
            normalization_rule_name="identity",
            character_coverage=args.character_coverage,
            input_sentence_size=args.input_sentence_size,
            shuffle_input_sentence=True,
            max_sentence_length=args.max_sentence_length,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            hard_vocab_limit=False,  # a small corpus yields fewer pieces instead of failing
            num_threads=args.num_threads,
            minloglevel=2,
        )
        for ext in ("model", "vocab"):
            os.replace(f"{tmp_prefix}.{ext}", f"{args.model_prefix}.{ext}")
    finally:
        for ext in ("model", "vocab"):
            if os.path.exists(f"{tmp_prefix}.{ext}"):
                os.remove(f"{tmp_prefix}.{ext}")
    return f"{args.model_prefix}.model"


def main(argv: list[str] | None = None) -> int:
    args = get_args(argv)
    start = time.perf_counter()
    try:
        path = train(args)
    except InputError as err:
        print(f"train_tokenizer.py: error: {err}", file=sys.stderr)
        return 1
    sp = sentencepiece.SentencePieceProcessor(model_file=path)
    print(f"wrote {path} ({sp.get_piece_size()} pieces) in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
