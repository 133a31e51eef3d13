"""Preprocessing speed with a Hugging Face tokenizer: this package against Megatron-LM's script.

    corpus = make_corpus("bench/corpus.jsonl", max_bytes=8 << 20)      # the stdlib's own source
    tok = train_bpe_tokenizer("bench/hf_tok", corpus.path, vocab_size=8000)
    result = compare_preprocess(corpus.path, tok, "bench/out", workers=2, repeats=3,
                                megatron_lm="/path/to/Megatron-LM")
    result.ours.median_s, result.megatron_lm.median_s, result.speedup, result.identical

Both sides run as separate processes with the same flags (`--tokenizer-type
HuggingFaceTokenizer --append-eod --workers N`), alternating within each repeat so that load
on a shared machine hits both alike; times are end-to-end wall clock, imports included. The
outputs of every run are compared byte for byte. Megatron-LM is optional: without it only this
package is timed. Nothing here prints; tools/bench_tokenizers.py formats the results.
"""
from __future__ import annotations

import dataclasses
import filecmp
import json
import os
import resource
import statistics
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

from megatron_patch.io import atomic_path


@dataclass
class Corpus:
    """A JSONL corpus: one document per source file."""

    path: str
    documents: int
    bytes: int


@dataclass
class Timing:
    """Wall-clock seconds of repeated runs of one command, and the CPU seconds each used.

    CPU seconds (user + system, all its processes) hardly depend on what else the machine runs,
    so they compare the two sides even when wall-clock times are noisy."""

    command: list[str]
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def min_s(self) -> float:
        return min(self.seconds)

    @property
    def max_s(self) -> float:
        return max(self.seconds)

    @property
    def median_cpu_s(self) -> float:
        return statistics.median(self.cpu_seconds)

    def to_dict(self) -> dict:
        return {"command": self.command, "seconds": self.seconds, "median_s": self.median_s,
                "min_s": self.min_s, "max_s": self.max_s, "cpu_seconds": self.cpu_seconds,
                "median_cpu_s": self.median_cpu_s}


@dataclass
class Comparison:
    """Result of compare_preprocess; `megatron_lm`, `speedup`, `identical` are None without it."""

    corpus: Corpus
    tokenizer_dir: str
    workers: int
    repeats: int
    tokens: int
    ours: Timing
    megatron_lm: Optional[Timing] = None
    identical: Optional[bool] = None

    @property
    def speedup(self) -> Optional[float]:
        """Megatron-LM's median wall-clock time over ours (2.0: twice as fast)."""
        if self.megatron_lm is None:
            return None
        return self.megatron_lm.median_s / self.ours.median_s

    @property
    def cpu_ratio(self) -> Optional[float]:
        """Megatron-LM's median CPU seconds over ours."""
        if self.megatron_lm is None:
            return None
        return self.megatron_lm.median_cpu_s / self.ours.median_cpu_s

    def to_dict(self) -> dict:
        return {"corpus": dataclasses.asdict(self.corpus), "tokenizer_dir": self.tokenizer_dir,
                "workers": self.workers, "repeats": self.repeats, "tokens": self.tokens,
                "ours": self.ours.to_dict(),
                "megatron_lm": self.megatron_lm.to_dict() if self.megatron_lm else None,
                "speedup": self.speedup, "cpu_ratio": self.cpu_ratio, "identical": self.identical}


def stdlib_sources(root: Optional[str] = None) -> list[str]:
    """The Python standard library's .py files (its tests included, no site-packages), sorted."""
    root = root or sysconfig.get_paths()["stdlib"]
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in ("site-packages", "__pycache__"))
        found.extend(os.path.join(directory, f) for f in sorted(files) if f.endswith(".py"))
    return found


def make_corpus(path: str, max_bytes: int, sources: Optional[Sequence[str]] = None,
                doc_bytes: Optional[int] = None) -> Corpus:
    """Write up to `max_bytes` of source files as JSONL ({"text": ...}), deterministically.

    doc_bytes None: one document per file. Otherwise files are cut at blank lines into documents
    of about `doc_bytes` characters (web-text corpora average a few KB per document).
    """
    documents = written = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for source in sources if sources is not None else stdlib_sources():
            try:
                with open(source, encoding="utf-8") as f:
                    text = f.read()
            except (UnicodeDecodeError, OSError):
                continue
            for document in _split_document(text, doc_bytes):
                line = json.dumps({"text": document}) + "\n"
                if written + len(line) > max_bytes:
                    return Corpus(path, documents, written)
                out.write(line)
                documents += 1
                written += len(line)
    return Corpus(path, documents, written)


def _split_document(text: str, doc_bytes: Optional[int]) -> list[str]:
    if not doc_bytes:
        return [text]
    pieces, current = [], ""
    for paragraph in text.split("\n\n"):
        current = f"{current}\n\n{paragraph}" if current else paragraph
        if len(current) >= doc_bytes:
            pieces.append(current)
            current = ""
    if current:
        pieces.append(current)
    return pieces


def train_bpe_tokenizer(out_dir: str, corpus_path: str, vocab_size: int = 8000,
                        eos_token: str = "<|endoftext|>") -> str:
    """A byte-level BPE tokenizer directory (tokenizer.json + tokenizer_config.json) for `corpus`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    def texts():
        with open(corpus_path, encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)["text"]

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[eos_token],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(texts(), trainer)
    os.makedirs(out_dir, exist_ok=True)
    with atomic_path(os.path.join(out_dir, "tokenizer.json")) as tmp:
        tokenizer.save(tmp)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos_token,
              "model_max_length": 1 << 30}
    from megatron_patch.io import write_json

    write_json(os.path.join(out_dir, "tokenizer_config.json"), config)
    return out_dir


def preprocess_command(corpus_path: str, tokenizer_dir: str, prefix: str, workers: int,
                       script: Optional[str] = None) -> list[str]:
    """The command line for this package (script None) or for Megatron-LM's script."""
    head = [sys.executable, script] if script else [sys.executable, "-m",
                                                     "megatron_patch.cli.preprocess_data"]
    tail = ["--input", corpus_path, "--output-prefix", prefix, "--tokenizer-type",
            "HuggingFaceTokenizer", "--tokenizer-model", tokenizer_dir, "--append-eod",
            "--workers", str(workers)]
    return head + tail + ([] if script else ["--no-progress"])


def _run(command: list[str], env: dict, timing: Timing) -> None:
    """Run once; append its wall-clock and CPU seconds (its waited-for descendants included)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    timing.seconds.append(seconds)
    timing.cpu_seconds.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)


def _same_dataset(a: str, b: str) -> bool:
    return all(filecmp.cmp(f"{a}.{ext}", f"{b}.{ext}", shallow=False) for ext in ("bin", "idx"))


def compare_preprocess(corpus_path: str, tokenizer_dir: str, out_dir: str, workers: int = 2,
                       repeats: int = 3, megatron_lm: Optional[str] = None,
                       megatron_lm_pythonpath: Sequence[str] = ()) -> Comparison:
    """Time preprocess_data.py here and (if `megatron_lm`, a checkout) Megatron-LM's, alternately.

    megatron_lm_pythonpath: extra entries for Megatron-LM's PYTHONPATH (modules its imports need).
    """
    os.makedirs(out_dir, exist_ok=True)
    env = dict(os.environ)
    ours = Timing(preprocess_command(corpus_path, tokenizer_dir, os.path.join(out_dir, "ours"),
                                     workers))
    theirs = None
    theirs_env = dict(env)
    if megatron_lm is not None:
        script = os.path.join(megatron_lm, "tools", "preprocess_data.py")
        if not os.path.isfile(script):
            raise ValueError(f"{megatron_lm}: no tools/preprocess_data.py; pass a Megatron-LM checkout")
        theirs = Timing(preprocess_command(corpus_path, tokenizer_dir,
                                           os.path.join(out_dir, "megatron_lm"), workers, script))
        paths = [*megatron_lm_pythonpath, megatron_lm, env.get("PYTHONPATH", "")]
        theirs_env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    identical = None
    for _ in range(repeats):
        _run(ours.command, env, ours)
        if theirs is not None:
            _run(theirs.command, theirs_env, theirs)
            same = _same_dataset(os.path.join(out_dir, "ours_text_document"),
                                 os.path.join(out_dir, "megatron_lm_text_document"))
            identical = same if identical is None else identical and same
    tokens = token_count(os.path.join(out_dir, "ours_text_document"))
    with open(corpus_path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        documents = sum(1 for _ in f)
    return Comparison(Corpus(corpus_path, documents, size), tokenizer_dir, workers, repeats,
                      tokens, ours, theirs, identical)


_ITEMSIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 8, 7: 4, 8: 2}  # megatron-core DType code -> bytes


def token_count(prefix: str) -> int:
    """Tokens in PREFIX.bin, from the dtype code in PREFIX.idx's header (byte 17)."""
    with open(prefix + ".idx", "rb") as f:
        code = f.read(18)[17]
    return os.path.getsize(prefix + ".bin") // _ITEMSIZE[code]
