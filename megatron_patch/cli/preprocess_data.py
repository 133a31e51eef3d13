"""Tokenise a corpus once, offline, into megatron-core .bin/.idx files for training.

Same flags and same output bytes as Megatron-LM's tools/preprocess_data.py for
--tokenizer-type SentencePieceTokenizer / Llama2Tokenizer / GPTSentencePieceTokenizer
(a sentencepiece .model), HuggingFaceTokenizer (a local directory with tokenizer.json) and
NullTokenizer (text of whitespace-separated ids, with --vocab-size), so existing data and
commands carry over. Inputs: JSON Lines (text under --json-keys), or plain text with one document
per line (--input-format text or a .txt name), each optionally .gz; several files and globs are
concatenated in the order given.

Run (CPU):
    python tools/preprocess_data.py --input data/corpus.jsonl \\
        --output-prefix data/corpus --tokenizer-model tokenizer.model \\
        --append-eod --workers 8
    # -> data/corpus_text_document.bin / .idx; train with --data-path data/corpus_text_document
    python tools/preprocess_data.py --input data/corpus.jsonl --output-prefix data/corpus \\
        --tokenizer-type HuggingFaceTokenizer --tokenizer-model hf_tokenizer/ --append-eod --workers 8

Without --tokenizer-type, a directory is read as a Hugging Face tokenizer and a file as a
sentencepiece model. Bad input (malformed JSON, a missing key, invalid UTF-8, a missing file or
tokenizer) stops with `FILE:LINE: what is wrong` and exit status 1. Outputs are written under
temporary names and renamed when complete, so a failed or killed run never leaves a
finished-looking .bin/.idx (a previous run's files under the final names are left as they were).
"""
from __future__ import annotations

import argparse
import signal
import sys
from concurrent.futures.process import BrokenProcessPool

from megatron_patch.data.preprocess import PreprocessConfig, preprocess
from megatron_patch.data.text_input import InputError
from megatron_patch.data.tokenizer import TOKENIZER_TYPES

PROG = "preprocess_data.py"


def get_args(argv: list[str] | None = None) -> PreprocessConfig:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    group = parser.add_argument_group("input data")
    group.add_argument("--input", nargs="+", required=True,
                       help="JSONL or plain-text files (.gz allowed), or quoted globs")
    group.add_argument("--input-format", default="auto", choices=["auto", "jsonl", "text"],
                       help="auto: .jsonl/.json -> jsonl, .txt -> text (before any .gz)")
    group.add_argument("--json-keys", nargs="+", default=["text"],
                       help="keys to extract from each JSON object; one output per key")
    group = parser.add_argument_group("tokenizer")
    group.add_argument("--tokenizer-type", default=None, metavar="TYPE",
                       help=f"one of {', '.join(TOKENIZER_TYPES)}; default: HuggingFaceTokenizer "
                            "for a directory, SentencePieceTokenizer for a file")
    group.add_argument("--tokenizer-model", default=None,
                       help="sentencepiece .model file (e.g. LLaMA-2's tokenizer.model), or a "
                            "directory with tokenizer.json for HuggingFaceTokenizer")
    group.add_argument("--vocab-size", type=int, default=None,
                       help="NullTokenizer: ids are below N; the vocabulary is N + 1 with "
                            "end-of-document id N")
    group.add_argument("--append-eod", action="store_true",
                       help="append the tokenizer's end-of-document id to every non-empty document")
    group = parser.add_argument_group("output data")
    group.add_argument("--output-prefix", required=True,
                       help="writes PREFIX_{key}_document.bin/.idx")
    group = parser.add_argument_group("runtime")
    group.add_argument("--workers", type=int, required=True, help="encoding processes")
    group.add_argument("--log-interval", type=int, default=1000,
                       help="documents between refreshes of the progress bar's counts")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    return PreprocessConfig(
        input=args.input, output_prefix=args.output_prefix, tokenizer_model=args.tokenizer_model,
        tokenizer_type=args.tokenizer_type, vocab_size=args.vocab_size,
        json_keys=tuple(args.json_keys), append_eod=args.append_eod, workers=args.workers,
        log_interval=max(1, args.log_interval), input_format=args.input_format,
        progress=not args.no_progress,
    )


def main(argv: list[str] | None = None) -> int:
    config = get_args(argv)
    # `kill` (SIGTERM) unwinds like an error, so temporary outputs are removed too.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        result = preprocess(config)
    except InputError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except BrokenProcessPool:
        print(f"{PROG}: error: a worker process died (killed for memory?); no output written",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; no output written", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    rate = result.tokens / max(result.seconds, 1e-9)
    print(f"{result.documents:,} documents, {result.tokens:,} tokens in {result.seconds:.1f} s "
          f"({rate:,.0f} tokens/s, {result.input_bytes / 1e6 / max(result.seconds, 1e-9):.1f} MB/s)"
          f" -> {', '.join(p for p in result.outputs if p.endswith('.bin'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
