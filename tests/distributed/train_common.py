"""Shared pieces of the trainer tests: a small learnable corpus (.bin/.idx written with
megatron-core's IndexedDatasetBuilder), a tokenizer, and tiny-model run flags."""
import functools
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from megatron_patch.flags import to_argv
from tests._data_helpers import synthetic_documents, tiny_tokenizer

from tests import ROOT


def make_corpus(directory: str, num_documents: int = 600, seed: int = 0) -> tuple:
    """(data prefix, tokenizer model) of a pseudo-English corpus, ~40k tokens."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from megatron_patch.data import load_tokenizer

    tok_path = tiny_tokenizer()
    tok = load_tokenizer(tok_path)
    prefix = os.path.join(directory, "corpus_text_document")
    if not os.path.isfile(prefix + ".idx"):
        os.makedirs(directory, exist_ok=True)
        builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
        for text in synthetic_documents(num_documents, seed=seed):
            ids = np.asarray(tok.encode(text) + [tok.eod], dtype=np.int64)
            builder.add_document(ids, [len(ids)])
        builder.finalize(prefix + ".idx")
    return prefix, tok_path


def tiny_flags(prefix: str, tok: str, save: str, **over) -> list:
    """Flags of a tiny run: 2-layer model, 64-token samples, 4 sequences per step."""
    flags = {
        "--model": "tiny", "--num-layers": 2, "--data-path": prefix, "--tokenizer-model": tok,
        "--save": save, "--seq-length": 64, "--micro-batch-size": 2, "--global-batch-size": 4,
        "--lr": 3e-3, "--min-lr": 3e-4, "--lr-warmup-iters": 2, "--split": "90,10,0",
        "--eval-iters": 2, "--log-interval": 1, "--seed": 7,
    }
    flags.update(over)
    return to_argv(flags)


def run_cmd(cmd: list, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def tool(name: str, *args, nproc: int = 0, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run tools/<name> with python (nproc=0) or under torchrun with nproc processes."""
    if nproc:
        launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                    "--standalone"]
    else:
        launcher = [sys.executable]
    return run_cmd([*launcher, ROOT / "tools" / name, *args], timeout=timeout)


@functools.lru_cache(maxsize=None)
def e2e_run() -> dict:
    """One 2-process CPU run of the whole recipe, shared by the tests that inspect its outputs:
    tiny model at PP=2, K=4 on the first half of 20 steps' data, then tokens; checkpoints every
    5 steps, validation every 5 steps."""
    tmp = tempfile.mkdtemp(prefix="mp-e2e-")
    prefix, tok = make_corpus(os.path.join(tmp, "data"))
    save = os.path.join(tmp, "run")
    flags = tiny_flags(prefix, tok, save, **{
        "--train-iters": 20, "--patch-size": 4, "--patch-fraction": 0.5, "--patch-seq-length": 64,
        "--pipeline-model-parallel-size": 2, "--save-interval": 5, "--eval-interval": 5,
    })
    start = time.time()
    proc = tool("pretrain.py", *flags, nproc=2)
    return {"tmp": tmp, "save": save, "prefix": prefix, "tok": tok, "flags": flags,
            "rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr,
            "seconds": time.time() - start}


def read_metrics(run_dir: str) -> list:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def tree_digest(path: str) -> dict:
    """{relative path: (size, sha1)} of every file under path: proves a tool left it untouched."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = (os.path.getsize(full), hashlib.sha1(f.read()).hexdigest())
    return out


def load_tool(name: str):
    """tools/<name> as a module (tools/ is not a package); its main(argv) returns the exit status."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_tool_{name[:-3]}", ROOT / "tools" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_tokenizer(prefix, vocab_size: int) -> str:
    import sentencepiece

    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(synthetic_documents(300, seed=5)), model_prefix=str(prefix),
        model_type="bpe", vocab_size=vocab_size, byte_fallback=True, minloglevel=2, num_threads=1,
    )
    return f"{prefix}.model"
