"""Benchmark the offline data pipeline, side by side with its practical limits.

1. Preprocessing (tools/preprocess_data.py, end to end as a CLI run) at each worker count,
   against sentencepiece's raw batch encode of the same documents already in memory with as
   many threads (the limit: no reading, parsing or writing), and optionally against Megatron-LM's
   own tools/preprocess_data.py (--megatron-lm DIR) on the same corpus and worker count.
2. Flat memory: peak RSS of a preprocessing run on a larger corpus, sampled as it goes.
3. Sample-index build for 10^9 tokens in 10^7 synthetic documents: ours (C++) vs megatron-core's
   helpers_cpp.build_sample_idx (K=1) vs the NumPy reference.

The corpus is the Python standard library's own source (no download), one file per JSON line,
repeated to the requested size. Timings take the best of --repeats runs, interleaved, since a
shared machine is noisy. Output is a Markdown table.

Run (CPU):
    python tools/bench_data.py --work-dir /tmp/bench --corpus-mb 64 --memory-corpus-mb 300
    # with Megatron-LM side by side (its checkout and dependencies on the given path):
    python tools/bench_data.py --work-dir /tmp/bench --megatron-lm ~/Megatron-LM \\
        --megatron-lm-pythonpath ~/Megatron-LM
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import resource
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def get_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    return parser.parse_args()


# ---------------------------------------------------------------------------------------------
# Corpus and tokenizer


def build_corpus(source_dir: str, path: str, megabytes: float) -> tuple[list[str], int]:
    """JSONL of source files (repeated to `megabytes` of text); returns the texts and text bytes."""
    files = sorted(p for p in glob.glob(os.path.join(source_dir, "**", "*.py"), recursive=True)
                   if "site-packages" not in p)
    texts = []
    for name in files:
        try:
            with open(name, encoding="utf-8") as f:
                texts.append(f.read())
        except (UnicodeDecodeError, OSError):
            continue
    if not texts:
        raise SystemExit(f"no .py files under {source_dir}")
    target, total, corpus = int(megabytes * 1e6), 0, []
    while total < target:
        for text in texts:
            corpus.append(text)
            total += len(text.encode("utf-8"))
            if total >= target:
                break
    if not os.path.exists(path):
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            for text in corpus:
                f.write(json.dumps({"text": text}) + "\n")
        os.replace(path + ".tmp", path)
    return corpus, total


def ensure_tokenizer(args: argparse.Namespace, corpus_path: str) -> str:
    if args.tokenizer_model:
        return args.tokenizer_model
    prefix = os.path.join(args.work_dir, f"stdlib_bpe{args.vocab_size}")
    if not os.path.exists(prefix + ".model"):
        sys.path.insert(0, HERE)
        import train_tokenizer

        with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the table
            train_tokenizer.main(["--input", corpus_path, "--model-prefix", prefix, "--vocab-size",
                                  str(args.vocab_size), "--input-sentence-size", "500000"])
    return prefix + ".model"


def idx_tokens(prefix: str) -> int:
    """Total tokens recorded in a megatron-core .idx file (header, then int32 lengths)."""
    with open(prefix + ".idx", "rb") as f:
        header = f.read(34)
        count = int.from_bytes(header[18:26], "little")
        return int(np.fromfile(f, dtype=np.int32, count=count).sum(dtype=np.int64))


# ---------------------------------------------------------------------------------------------
# Timing helpers


@dataclass
class Run:
    seconds: float
    cpu_seconds: float  # user + system, the whole process tree
    peak_rss: int = 0  # bytes, the whole process tree
    rss_trace: tuple = ()


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_tree(cmd: list[str], env: Optional[dict] = None, sample_every: float = 0.2) -> Run:
    """Run a command: wall time, CPU time and peak RSS summed over it and its children.

    CPU time counts reaped descendants (both preprocess scripts join their workers), and is
    what to compare on a shared machine where wall time depends on other load.
    """
    cpu_before = _children_cpu()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, trace = 0, []
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            rss = sum(p.memory_info().rss for p in [root] + root.children(recursive=True))
        except psutil.Error:
            rss = 0
        peak = max(peak, rss)
        trace.append(rss)
        time.sleep(sample_every)
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out[-2000:]}\n{err[-4000:]}")
    return Run(seconds, _children_cpu() - cpu_before, peak, tuple(trace))


def best(fn: Callable[[], float], repeats: int) -> float:
    return min(fn() for _ in range(repeats))


# ---------------------------------------------------------------------------------------------
# 1-2. Preprocessing


def ours_cmd(corpus: str, out: str, tokenizer: str, workers: int) -> list[str]:
    return [sys.executable, os.path.join(HERE, "preprocess_data.py"), "--input", corpus,
            "--output-prefix", out, "--tokenizer-model", tokenizer, "--workers", str(workers),
            "--no-progress"]


def megatron_cmd(checkout: str, corpus: str, out: str, tokenizer: str, workers: int) -> list[str]:
    return [sys.executable, os.path.join(checkout, "tools", "preprocess_data.py"), "--input", corpus,
            "--output-prefix", out, "--tokenizer-type", "Llama2Tokenizer",
            "--tokenizer-model", tokenizer, "--workers", str(workers), "--log-interval", "100000"]


def bench_preprocess(args: argparse.Namespace, rows: list[str]) -> None:
    import sentencepiece

    os.makedirs(args.work_dir, exist_ok=True)
    corpus_path = os.path.join(args.work_dir, f"stdlib_{args.corpus_mb:g}MB.jsonl")
    texts, text_bytes = build_corpus(args.source_dir, corpus_path, args.corpus_mb)
    tokenizer = ensure_tokenizer(args, corpus_path)
    sp = sentencepiece.SentencePieceProcessor(model_file=tokenizer)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    mlm_env = None
    if args.megatron_lm:
        mlm_env = dict(os.environ, PYTHONPATH=args.megatron_lm_pythonpath or args.megatron_lm)
    print(f"corpus: {len(texts):,} documents, {text_bytes / 1e6:.1f} MB of text; tokenizer "
          f"{tokenizer} ({sp.get_piece_size()} pieces)", file=sys.stderr)

    rows += ["", f"Preprocessing {text_bytes / 1e6:.0f} MB of text ({len(texts):,} documents, "
             f"Python stdlib source), {sp.get_piece_size()}-piece BPE; {args.repeats} repeats: best "
             "times, median of back-to-back ratios; MB/s of document text", "",
             "| workers | what | wall s | MB/s | tokens/s | rate vs raw | CPU s | CPU vs raw | peak RSS |",
             "|---|---|---|---|---|---|---|---|---|"]
    for workers in args.workers:
        runs: dict[str, list[Run]] = {"raw": [], "ours": [], "megatron": []}
        tokens = 0

        def raw() -> None:
            nonlocal tokens
            start, cpu = time.perf_counter(), time.process_time()
            ids = sp.encode(texts, out_type="numpy", num_threads=workers)
            runs["raw"].append(Run(time.perf_counter() - start, time.process_time() - cpu))
            tokens = sum(a.size for a in ids)

        def ours() -> None:
            out = os.path.join(args.work_dir, f"ours_w{workers}")
            runs["ours"].append(run_tree(ours_cmd(corpus_path, out, tokenizer, workers), env))

        def megatron() -> None:
            out = os.path.join(args.work_dir, f"megatron_w{workers}")
            cmd = megatron_cmd(args.megatron_lm, corpus_path, out, tokenizer, workers)
            runs["megatron"].append(run_tree(cmd, mlm_env))

        order = [raw, ours] + ([megatron] if args.megatron_lm else [])
        for repeat in range(args.repeats):
            # Alternate the order so that a machine getting faster or slower favours no one.
            for step in (order if repeat % 2 == 0 else order[::-1]):
                step()
        assert idx_tokens(os.path.join(args.work_dir, f"ours_w{workers}_text_document")) == tokens, \
            "token counts differ from sentencepiece's"
        entries = [("sentencepiece raw encode (in memory, threads)", "raw", False),
                   ("megatron-patch preprocess_data.py (end to end)", "ours", True)]
        if args.megatron_lm:
            entries.append(("Megatron-LM preprocess_data.py (end to end)", "megatron", True))
        for name, key, has_rss in entries:
            wall = min(r.seconds for r in runs[key])
            cpu = min(r.cpu_seconds for r in runs[key])
            # Ratios pair runs of the same repeat (taken back to back), then take the median.
            rate = np.median([a.seconds / b.seconds for a, b in zip(runs["raw"], runs[key])])
            cpu_ratio = np.median([a.cpu_seconds / b.cpu_seconds for a, b in zip(runs["raw"], runs[key])])
            rss = f"{max(r.peak_rss for r in runs[key]) / 2**20:.0f} MiB" if has_rss else ""
            rows.append(f"| {workers} | {name} | {wall:.1f} | {text_bytes / 1e6 / wall:.2f} | "
                        f"{tokens / wall / 1e6:.2f}M | {rate:.0%} | {cpu:.1f} | {cpu_ratio:.0%} | {rss} |")
        print("\n".join(rows[-len(entries):]), file=sys.stderr)

    if args.memory_corpus_mb > 0:
        big_path = os.path.join(args.work_dir, f"stdlib_{args.memory_corpus_mb:g}MB.jsonl")
        big_texts, big_bytes = build_corpus(args.source_dir, big_path, args.memory_corpus_mb)
        del big_texts
        workers = max(args.workers)
        run = run_tree(ours_cmd(big_path, os.path.join(args.work_dir, "ours_big"), tokenizer,
                                workers), env, sample_every=0.5)
        trace = np.array(run.rss_trace[len(run.rss_trace) // 10:]) / 2**20  # after start-up
        quartiles = ", ".join(f"{np.percentile(trace, q):.0f}" for q in (0, 25, 50, 75, 100))
        rows += ["", f"Memory: megatron-patch on a {big_bytes / 1e6:.0f} MB corpus ({os.path.getsize(big_path) / 1e6:.0f} MB "
                 f"JSONL), {workers} workers, {run.seconds:.0f} s: peak RSS of all processes "
                 f"{run.peak_rss / 2**20:.0f} MiB; RSS percentiles over the run (MiB): {quartiles}"]


# ---------------------------------------------------------------------------------------------
# 3. Sample index


def bench_index(args: argparse.Namespace, rows: list[str]) -> None:
    from megatron.core.datasets import helpers_cpp

    from megatron_patch.data.sample_index import (
        build_sample_index,
        num_samples_in,
        reference_sample_index,
    )

    n = args.index_documents
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 200, n).astype(np.float64)
    sizes = np.maximum(1, np.round(sizes * (args.index_tokens / sizes.sum()))).astype(np.int32)
    document_index = np.arange(n, dtype=np.int32)
    np.random.RandomState(0).shuffle(document_index)
    tokens = int(sizes.sum())
    seq = 2048
    cases: list[tuple[str, Callable[[], np.ndarray]]] = [
        ("megatron-core helpers_cpp.build_sample_idx (K=1)",
         lambda: helpers_cpp.build_sample_idx_int32(sizes, document_index, seq, 1, tokens, True, 1)),
        ("megatron-patch build_sample_index (K=1)",
         lambda: build_sample_index(sizes, document_index, 1, seq, num_samples_in(tokens, 1, seq))),
        ("megatron-patch build_sample_index (K=4, T=512)",
         lambda: build_sample_index(sizes, document_index, 4, seq // 4, num_samples_in(tokens, 4, seq // 4))),
        ("megatron-patch build_sample_index (K=4, T=512, aligned documents)",
         lambda: build_sample_index(sizes, document_index, 4, seq // 4,
                                    num_samples_in(int(((sizes + 3) // 4 * 4).sum(dtype=np.int64)), 4, seq // 4),
                                    align_documents=True)),
        ("NumPy reference (K=1)",
         lambda: reference_sample_index(sizes, document_index, 1, seq, num_samples_in(tokens, 1, seq))),
    ]
    results, times = {}, {name: [] for name, _ in cases}
    for _ in range(args.repeats):
        for name, fn in cases:
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    names = [name for name, _ in cases]
    assert np.array_equal(results[names[0]], results[names[1]]), "K=1 differs from megatron-core"
    assert np.array_equal(results[names[1]], results[names[4]]), "C++ differs from NumPy"
    base = min(times[names[0]])
    rows += ["", f"Sample index: {tokens / 1e9:.2f}e9 tokens in {n / 1e6:.0f}e6 shuffled documents, "
             f"{seq}-token samples; best of {args.repeats}", "",
             "| builder | seconds | vs megatron-core |", "|---|---|---|"]
    for name in names:
        rows.append(f"| {name} | {min(times[name]):.3f} | {base / min(times[name]):.2f}x |")


def main() -> None:
    args = get_args()
    rows: list[str] = [f"machine: {os.cpu_count()} CPUs ({psutil.cpu_count(logical=False)} physical), "
                       f"load average {os.getloadavg()[0]:.1f} at start"]
    if not args.skip_preprocess:
        bench_preprocess(args, rows)
    if not args.skip_index:
        bench_index(args, rows)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
