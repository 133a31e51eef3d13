"""Tokenise a corpus once, offline, into megatron-core .bin/.idx files for training.

Same flags and same output bytes as Megatron-LM's tools/preprocess_data.py for
--tokenizer-type SentencePieceTokenizer / Llama2Tokenizer / GPTSentencePieceTokenizer
(a sentencepiece .model), HuggingFaceTokenizer (a local directory with tokenizer.json),
NullTokenizer (text of whitespace-separated ids, with --vocab-size) and GPT2BPETokenizer
(--vocab-file vocab.json --merge-file merges.txt), and for --partitions, --split-sentences
(NLTK's punkt), --keep-newlines, --lang, --log-interval, so existing data and commands carry over. Inputs: JSON Lines (text under --json-keys), or plain text with one document
per line (--input-format text or a .txt name), each optionally .gz; several files and globs are
concatenated in the order given.

Run (CPU):
    python tools/preprocess_data.py --input data/corpus.jsonl \\
        --output-prefix data/corpus --tokenizer-model tokenizer.model \\
        --append-eod --workers 8
    # -> data/corpus_text_document.bin / .idx; train with --data-path data/corpus_text_document
    python tools/preprocess_data.py --input data/corpus.jsonl --output-prefix data/corpus \\
        --tokenizer-type HuggingFaceTokenizer --tokenizer-model hf_tokenizer/ --append-eod --workers 8
    python tools/preprocess_data.py --input data/corpus.jsonl --output-prefix data/corpus \\
        --tokenizer-type GPT2BPETokenizer --vocab-file gpt2-vocab.json \\
        --merge-file gpt2-merges.txt --append-eod --workers 8

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
    group.add_argument("--vocab-file", default=None,
                       help="GPT2BPETokenizer: the vocabulary (GPT-2's vocab.json)")
    group.add_argument("--merge-file", default=None,
                       help="GPT2BPETokenizer: the BPE merges (GPT-2's merges.txt)")
    group.add_argument("--legacy-tokenizer", action="store_true",
                       help="GPT2BPETokenizer: the ids of Megatron-LM's legacy tokenizer "
                            "(megatron.training), which spells out '<|endoftext|>' in the text "
                            "instead of matching it as the EOD token; no effect on other types")
    group.add_argument("--vocab-size", type=int, default=None,
                       help="NullTokenizer: ids are below N; the vocabulary is N + 1 with "
                            "end-of-document id N")
    group.add_argument("--append-eod", action="store_true",
                       help="append the tokenizer's end-of-document id to every non-empty document")
    group.add_argument("--split-sentences", action="store_true",
                       help="one sequence per sentence (NLTK's punkt, installed with its data); "
                            "writes PREFIX_{key}_sentence.bin/.idx")
    group.add_argument("--keep-newlines", action="store_true",
                       help="with --split-sentences: keep the newlines after sentences")
    group.add_argument("--lang", default="english",
                       help="punkt's language for --split-sentences")
    group = parser.add_argument_group("output data")
    group.add_argument("--output-prefix", required=True,
                       help="writes PREFIX_{key}_document.bin/.idx")
    group.add_argument("--partitions", type=int, default=1,
                       help="Megatron-LM's partitions: N > 1 orders the documents as its script "
                            "does (line i to partition i mod N, partitions concatenated); the "
                            "encoding is parallel over --workers either way")
    group.add_argument("--keep-sequential-samples", action="store_true",
                       help="with --partitions: contiguous partitions, so the input order is kept")
    group = parser.add_argument_group("runtime")
    group.add_argument("--workers", type=int, required=True, help="encoding processes")
    group.add_argument("--log-interval", type=int, default=1000,
                       help="documents between refreshes of the progress bar's counts")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.keep_newlines and not args.split_sentences:
        print(f"{PROG}: note: --keep-newlines only changes --split-sentences; ignored",
              file=sys.stderr)
    return PreprocessConfig(
        input=args.input, output_prefix=args.output_prefix, tokenizer_model=args.tokenizer_model,
        tokenizer_type=args.tokenizer_type, vocab_size=args.vocab_size,
        vocab_file=args.vocab_file, merge_file=args.merge_file,
        legacy_tokenizer=args.legacy_tokenizer,
        json_keys=tuple(args.json_keys), append_eod=args.append_eod, workers=args.workers,
        log_interval=max(1, args.log_interval), input_format=args.input_format,
        progress=not args.no_progress, partitions=args.partitions,
        keep_sequential_samples=args.keep_sequential_samples,
        split_sentences=args.split_sentences, keep_newlines=args.keep_newlines, lang=args.lang,
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
