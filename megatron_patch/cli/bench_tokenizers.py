"""Preprocessing speed with a Hugging Face tokenizer: this package against Megatron-LM's script.

Builds a corpus from the Python standard library's own source and trains a byte-level BPE
tokenizer.json on it, then runs both preprocess_data.py scripts with the same flags, alternately,
and checks their outputs are byte-identical. See megatron_patch/bench/tokenizers.py.

Run (CPU):
    python tools/bench_tokenizers.py --workdir /tmp/bench_tok --corpus-mb 30 --workers 2 \\
        --repeats 3 --megatron-lm /path/to/Megatron-LM --json /tmp/bench_tok/result.json
"""
from __future__ import annotations

import argparse
import os
import sys

from megatron_patch.bench.tokenizers import compare_preprocess, make_corpus, train_bpe_tokenizer
from megatron_patch.io import write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_tokenizers.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="corpus, tokenizer and outputs go here")
    parser.add_argument("--corpus-mb", type=float, default=30.0,
                        help="corpus size in MB (at most the standard library's, about 34)")
    parser.add_argument("--doc-bytes", type=int, default=None,
                        help="cut source files into documents of about this size (default: "
                             "one document per file)")
    parser.add_argument("--vocab-size", type=int, default=8000, help="BPE vocabulary to train")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--megatron-lm", default=None,
                        help="a Megatron-LM checkout (tools/preprocess_data.py) to compare with")
    parser.add_argument("--megatron-lm-pythonpath", nargs="*", default=[],
                        help="extra PYTHONPATH entries Megatron-LM's imports need")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    corpus_path = os.path.join(args.workdir, "corpus.jsonl")
    corpus = make_corpus(corpus_path, int(args.corpus_mb * 1e6), doc_bytes=args.doc_bytes)
    tokenizer_dir = train_bpe_tokenizer(os.path.join(args.workdir, "hf_tokenizer"), corpus.path,
                                        args.vocab_size)
    result = compare_preprocess(corpus.path, tokenizer_dir, os.path.join(args.workdir, "out"),
                                args.workers, args.repeats, args.megatron_lm,
                                args.megatron_lm_pythonpath)
    print(f"corpus: {corpus.documents} documents, {corpus.bytes / 1e6:.1f} MB, "
          f"{result.tokens:,} tokens; workers {args.workers}; {args.repeats} repeats")
    print(f"{'':14}{'median s':>10}{'min s':>8}{'max s':>8}{'MB/s':>8}{'CPU s':>8}")
    rows = [("this package", result.ours)]
    if result.megatron_lm is not None:
        rows.append(("Megatron-LM", result.megatron_lm))
    for name, timing in rows:
        print(f"{name:14}{timing.median_s:10.2f}{timing.min_s:8.2f}{timing.max_s:8.2f}"
              f"{corpus.bytes / 1e6 / timing.median_s:8.2f}{timing.median_cpu_s:8.1f}")
    if result.speedup is not None:
        print(f"speedup {result.speedup:.2f}x wall clock (medians), {result.cpu_ratio:.2f}x CPU "
              f"seconds; outputs byte-identical: {result.identical}")
    if args.json:
        write_json(args.json, result.to_dict())
    return 0


if __name__ == "__main__":
    sys.exit(main())
