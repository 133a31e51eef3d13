"""The offline data pipeline measured side by side with its practical limits.

1. Preprocessing (tools/preprocess_data.py, end to end as a CLI run) at each worker count,
   against sentencepiece's raw batch encode of the same documents already in memory with as
   many threads (the limit: no reading, parsing or writing), and optionally against Megatron-LM's
   own tools/preprocess_data.py (`megatron_lm=DIR`) on the same corpus and worker count.
2. Flat memory: peak RSS of a preprocessing run on a larger corpus, sampled as it goes.
3. Sample-index build for 10^9 tokens in 10^7 synthetic documents: ours (C++) vs megatron-core's
   helpers_cpp.build_sample_idx (K=1) vs the NumPy reference.

The corpus is the Python standard library's own source (no download), one file per JSON line,
repeated to the requested size. Timings take the best of `repeats` runs, interleaved, since a
shared machine is noisy.

    res = {"machine": machine(), "preprocess": bench_preprocess(...), "index": bench_index(...)}
    print(format_markdown(res))                                 # tools/bench_data.py
"""
from __future__ import annotations

import glob
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import psutil

from megatron_patch import io

PREPROCESS_TOOL = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "tools",
                                                "preprocess_data.py"))
INDEX_SEQ_LENGTH = 2048


def _quiet(line: str) -> None:
    pass


def machine() -> dict:
    return {"cpus": os.cpu_count(), "physical_cpus": psutil.cpu_count(logical=False),
            "load_average": os.getloadavg()[0]}


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
        raise ValueError(f"no .py files under {source_dir}")
    target, total, corpus = int(megabytes * 1e6), 0, []
    while total < target:
        for text in texts:
            corpus.append(text)
            total += len(text.encode("utf-8"))
            if total >= target:
                break
    if not os.path.exists(path):
        io.write_lines(path, (json.dumps({"text": text}) + "\n" for text in corpus))
    return corpus, total


def ensure_tokenizer(work_dir: str, vocab_size: int, corpus_path: str) -> str:
    """A BPE of `vocab_size` pieces trained on the corpus (reused when already there)."""
    prefix = os.path.join(work_dir, f"stdlib_bpe{vocab_size}")
    if not os.path.exists(prefix + ".model"):
        from megatron_patch.tokenizer_training import train_tokenizer

        train_tokenizer([corpus_path], prefix, vocab_size, input_sentence_size=500000,
                        num_threads=os.cpu_count() or 1)
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
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out[-2000:]}\n{err[-4000:]}")
    return Run(seconds, _children_cpu() - cpu_before, peak, tuple(trace))


# ---------------------------------------------------------------------------------------------
# 1-2. Preprocessing


def ours_cmd(corpus: str, out: str, tokenizer: str, workers: int) -> list[str]:
    return [sys.executable, PREPROCESS_TOOL, "--input", corpus, "--output-prefix", out,
            "--tokenizer-model", tokenizer, "--workers", str(workers), "--no-progress"]


def megatron_cmd(checkout: str, corpus: str, out: str, tokenizer: str, workers: int) -> list[str]:
    return [sys.executable, os.path.join(checkout, "tools", "preprocess_data.py"), "--input", corpus,
            "--output-prefix", out, "--tokenizer-type", "Llama2Tokenizer",
            "--tokenizer-model", tokenizer, "--workers", str(workers), "--log-interval", "100000"]


PREPROCESS_ENTRIES = (  # (key, what, whether the peak RSS is measured)
    ("raw", "sentencepiece raw encode (in memory, threads)", False),
    ("ours", "megatron-patch preprocess_data.py (end to end)", True),
    ("megatron", "Megatron-LM preprocess_data.py (end to end)", True),
)


def bench_preprocess(work_dir: str, source_dir: str, corpus_mb: float = 64,
                     workers: Sequence[int] = (1, 2), repeats: int = 3,
                     tokenizer_model: Optional[str] = None, vocab_size: int = 32000,
                     megatron_lm: Optional[str] = None, megatron_lm_pythonpath: str = "",
                     memory_corpus_mb: float = 300, log: Callable[[str], None] = _quiet) -> dict:
    """{"documents", "text_mb", "pieces", "tokenizer", "repeats", "rows": [{"workers", "key",
    "what", "wall_s", "mb_s", "tokens_per_s", "rate_vs_raw", "cpu_s", "cpu_vs_raw",
    "peak_rss_mib"}], "memory": {...} or None}. Ratios are medians of back-to-back pairs."""
    import sentencepiece

    os.makedirs(work_dir, exist_ok=True)
    corpus_path = os.path.join(work_dir, f"stdlib_{corpus_mb:g}MB.jsonl")
    texts, text_bytes = build_corpus(source_dir, corpus_path, corpus_mb)
    tokenizer = tokenizer_model or ensure_tokenizer(work_dir, vocab_size, corpus_path)
    sp = sentencepiece.SentencePieceProcessor(model_file=tokenizer)
    mlm_env = dict(os.environ, PYTHONPATH=megatron_lm_pythonpath or megatron_lm) if megatron_lm else None
    log(f"corpus: {len(texts):,} documents, {text_bytes / 1e6:.1f} MB of text; tokenizer "
        f"{tokenizer} ({sp.get_piece_size()} pieces)")
    result = {"documents": len(texts), "text_mb": text_bytes / 1e6, "pieces": sp.get_piece_size(),
              "tokenizer": tokenizer, "repeats": repeats, "rows": [], "memory": None}
    for w in workers:
        runs: dict[str, list[Run]] = {"raw": [], "ours": [], "megatron": []}
        tokens = 0

        def raw() -> None:
            nonlocal tokens
            start, cpu = time.perf_counter(), time.process_time()
            ids = sp.encode(texts, out_type="numpy", num_threads=w)
            runs["raw"].append(Run(time.perf_counter() - start, time.process_time() - cpu))
            tokens = sum(a.size for a in ids)

        def ours() -> None:
            out = os.path.join(work_dir, f"ours_w{w}")
            runs["ours"].append(run_tree(ours_cmd(corpus_path, out, tokenizer, w)))

        def megatron() -> None:
            out = os.path.join(work_dir, f"megatron_w{w}")
            runs["megatron"].append(run_tree(megatron_cmd(megatron_lm, corpus_path, out, tokenizer, w), mlm_env))

        order = [raw, ours] + ([megatron] if megatron_lm else [])
        for repeat in range(repeats):
            # Alternate the order so that a machine getting faster or slower favours no one.
            for step in (order if repeat % 2 == 0 else order[::-1]):
                step()
        assert idx_tokens(os.path.join(work_dir, f"ours_w{w}_text_document")) == tokens, \
            "token counts differ from sentencepiece's"
        for key, what, has_rss in PREPROCESS_ENTRIES:
            if not runs[key]:
                continue
            wall = min(r.seconds for r in runs[key])
            row = {
                "workers": w, "key": key, "what": what, "wall_s": wall,
                "mb_s": text_bytes / 1e6 / wall, "tokens_per_s": tokens / wall,
                # Ratios pair runs of the same repeat (taken back to back), then take the median.
                "rate_vs_raw": float(np.median([a.seconds / b.seconds for a, b in zip(runs["raw"], runs[key])])),
                "cpu_s": min(r.cpu_seconds for r in runs[key]),
                "cpu_vs_raw": float(np.median([a.cpu_seconds / b.cpu_seconds
                                               for a, b in zip(runs["raw"], runs[key])])),
                "peak_rss_mib": max(r.peak_rss for r in runs[key]) / 2**20 if has_rss else None,
            }
            result["rows"].append(row)
            log(preprocess_row(row))
    if memory_corpus_mb > 0:
        big_path = os.path.join(work_dir, f"stdlib_{memory_corpus_mb:g}MB.jsonl")
        big_texts, big_bytes = build_corpus(source_dir, big_path, memory_corpus_mb)
        del big_texts
        w = max(workers)
        run = run_tree(ours_cmd(big_path, os.path.join(work_dir, "ours_big"), tokenizer, w),
                       sample_every=0.5)
        trace = np.array(run.rss_trace[len(run.rss_trace) // 10:]) / 2**20  # after start-up
        result["memory"] = {
            "text_mb": big_bytes / 1e6, "jsonl_mb": os.path.getsize(big_path) / 1e6, "workers": w,
            "seconds": run.seconds, "peak_rss_mib": run.peak_rss / 2**20,
            "rss_percentiles_mib": [float(np.percentile(trace, q)) for q in (0, 25, 50, 75, 100)],
        }
    return result


# ---------------------------------------------------------------------------------------------
# 3. Sample index


def bench_index(documents: int = 10_000_000, tokens: float = 1e9, repeats: int = 3) -> dict:
    """{"tokens", "documents", "seq_length", "repeats", "rows": [{"builder", "seconds",
    "vs_megatron_core"}]}; the builders' outputs are checked equal first."""
    from megatron.core.datasets import helpers_cpp

    from megatron_patch.data.sample_index import (
        build_sample_index,
        num_samples_in,
        reference_sample_index,
    )

    n = documents
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 200, n).astype(np.float64)
    sizes = np.maximum(1, np.round(sizes * (tokens / sizes.sum()))).astype(np.int32)
    document_index = np.arange(n, dtype=np.int32)
    np.random.RandomState(0).shuffle(document_index)
    total = int(sizes.sum())
    seq = INDEX_SEQ_LENGTH
    cases: list[tuple[str, Callable[[], np.ndarray]]] = [
        ("megatron-core helpers_cpp.build_sample_idx (K=1)",
         lambda: helpers_cpp.build_sample_idx_int32(sizes, document_index, seq, 1, total, True, 1)),
        ("megatron-patch build_sample_index (K=1)",
         lambda: build_sample_index(sizes, document_index, 1, seq, num_samples_in(total, 1, seq))),
        ("megatron-patch build_sample_index (K=4, T=512)",
         lambda: build_sample_index(sizes, document_index, 4, seq // 4, num_samples_in(total, 4, seq // 4))),
        ("megatron-patch build_sample_index (K=4, T=512, aligned documents)",
         lambda: build_sample_index(sizes, document_index, 4, seq // 4,
                                    num_samples_in(int(((sizes + 3) // 4 * 4).sum(dtype=np.int64)), 4, seq // 4),
                                    align_documents=True)),
        ("NumPy reference (K=1)",
         lambda: reference_sample_index(sizes, document_index, 1, seq, num_samples_in(total, 1, seq))),
    ]
    results, times = {}, {name: [] for name, _ in cases}
    for _ in range(repeats):
        for name, fn in cases:
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    names = [name for name, _ in cases]
    assert np.array_equal(results[names[0]], results[names[1]]), "K=1 differs from megatron-core"
    assert np.array_equal(results[names[1]], results[names[4]]), "C++ differs from NumPy"
    base = min(times[names[0]])
    return {"tokens": total, "documents": n, "seq_length": seq, "repeats": repeats,
            "rows": [{"builder": name, "seconds": min(times[name]), "vs_megatron_core": base / min(times[name])}
                     for name in names]}


# ---------------------------------------------------------------------------------------------
# Markdown


def preprocess_row(r: dict) -> str:
    rss = f"{r['peak_rss_mib']:.0f} MiB" if r["peak_rss_mib"] is not None else ""
    return (f"| {r['workers']} | {r['what']} | {r['wall_s']:.1f} | {r['mb_s']:.2f} | "
            f"{r['tokens_per_s'] / 1e6:.2f}M | {r['rate_vs_raw']:.0%} | {r['cpu_s']:.1f} | "
            f"{r['cpu_vs_raw']:.0%} | {rss} |")


def memory_sentence(m: dict) -> str:
    quartiles = ", ".join(f"{q:.0f}" for q in m["rss_percentiles_mib"])
    return (f"megatron-patch on a {m['text_mb']:.0f} MB corpus ({m['jsonl_mb']:.0f} MB JSONL), "
            f"{m['workers']} workers, {m['seconds']:.0f} s: peak RSS of all processes "
            f"{m['peak_rss_mib']:.0f} MiB; RSS percentiles over the run (MiB): {quartiles}")


def format_markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"machine: {m['cpus']} CPUs ({m['physical_cpus']} physical), "
             f"load average {m['load_average']:.1f} at start"]
    p = res.get("preprocess")
    if p:
        lines += ["", f"Preprocessing {p['text_mb']:.0f} MB of text ({p['documents']:,} documents, "
                  f"Python stdlib source), {p['pieces']}-piece BPE; {p['repeats']} repeats: best "
                  "times, median of back-to-back ratios; MB/s of document text", "",
                  "| workers | what | wall s | MB/s | tokens/s | rate vs raw | CPU s | CPU vs raw | peak RSS |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [preprocess_row(r) for r in p["rows"]]
        if p["memory"]:
            lines += ["", "Memory: " + memory_sentence(p["memory"])]
    x = res.get("index")
    if x:
        lines += ["", f"Sample index: {x['tokens'] / 1e9:.2f}e9 tokens in {x['documents'] / 1e6:.0f}e6 "
                  f"shuffled documents, {x['seq_length']}-token samples; best of {x['repeats']}", "",
                  "| builder | seconds | vs megatron-core |", "|---|---|---|"]
        lines += [f"| {r['builder']} | {r['seconds']:.3f} | {r['vs_megatron_core']:.2f}x |" for r in x["rows"]]
    return "\n".join(lines)
