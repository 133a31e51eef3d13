"""Benchmark the offline data pipeline, side by side with its practical limits: preprocessing
against raw sentencepiece (and Megatron-LM's tool), flat memory, and the sample-index build.

What each part measures: megatron_patch/bench/data.py. Output is a Markdown table; `--json OUT`
also writes the structured results.

Run (CPU):
    python tools/bench_data.py --work-dir /tmp/bench --corpus-mb 64 --memory-corpus-mb 300
    # with Megatron-LM side by side (its checkout and dependencies on the given path):
    python tools/bench_data.py --work-dir /tmp/bench --megatron-lm ~/Megatron-LM \\
        --megatron-lm-pythonpath ~/Megatron-LM
"""
from __future__ import annotations

import argparse
import sys
import sysconfig

from megatron_patch.bench import data


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--work-dir", required=True, help="corpus, tokenizer and outputs go here")
    parser.add_argument("--source-dir", default=sysconfig.get_paths()["stdlib"],
                        help="directory whose .py files form the corpus")
    parser.add_argument("--tokenizer-model", help="default: train a 32k BPE on the corpus")
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--corpus-mb", type=float, default=64, help="corpus for the rate table")
    parser.add_argument("--memory-corpus-mb", type=float, default=300,
                        help="corpus for the flat-memory run (0: skip)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--megatron-lm", help="Megatron-LM checkout: time its tools/preprocess_data.py")
    parser.add_argument("--megatron-lm-pythonpath", default="",
                        help="PYTHONPATH for the Megatron-LM run (default: the checkout)")
    parser.add_argument("--index-documents", type=int, default=10_000_000)
    parser.add_argument("--index-tokens", type=float, default=1e9)
    parser.add_argument("--skip-preprocess", action="store_true")
    parser.add_argument("--skip-index", action="store_true")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON here")
    return parser


def run(args, log=lambda line: print(line, file=sys.stderr, flush=True)) -> dict:
    """{"machine", "preprocess" (or None), "index" (or None)} for the parsed flags."""
    res = {"machine": data.machine(), "preprocess": None, "index": None}
    if not args.skip_preprocess:
        res["preprocess"] = data.bench_preprocess(
            args.work_dir, args.source_dir, args.corpus_mb, args.workers, args.repeats,
            args.tokenizer_model, args.vocab_size, args.megatron_lm, args.megatron_lm_pythonpath,
            args.memory_corpus_mb, log=log)
    if not args.skip_index:
        res["index"] = data.bench_index(args.index_documents, args.index_tokens, args.repeats)
    return res


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        res = run(args)
    except (ValueError, RuntimeError) as err:
        print(f"bench_data.py: error: {err}", file=sys.stderr)
        return 1
    print(data.format_markdown(res))
    if args.json:
        from megatron_patch.io import write_json

        write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
