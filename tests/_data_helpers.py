"""Shared helpers for the data tests: synthetic corpora, a tiny tokenizer, .bin/.idx writers."""
from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import tempfile

import numpy as np

WORDS = ("patch level training averages tokens into patches the model predicts the next "
         "patch every token of it shares one output layer data stream document epoch seed "
         "shuffle sample index alignment padding mask loss gradient").split()


def synthetic_documents(num_documents: int, seed: int = 0, max_words: int = 60) -> list[str]:
    """Deterministic pseudo-English documents with some punctuation, digits and newlines."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(num_documents):
        words = [WORDS[i] for i in rng.integers(0, len(WORDS), int(rng.integers(1, max_words)))]
        if rng.random() < 0.3:
            words.insert(int(rng.integers(0, len(words))), str(int(rng.integers(0, 10**6))))
        text = " ".join(words)
        if rng.random() < 0.3:
            text = text.replace(" the ", "\n", 1) + " é ü 中文."
        docs.append(text)
    return docs


def write_jsonl(path: str, texts: list[str], key: str = "text") -> str:
    with open(path, "w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({key: text}) + "\n")
    return path


@functools.lru_cache(maxsize=None)
def tiny_tokenizer() -> str:
    """Path of a small BPE sentencepiece model (byte fallback) trained once per test session."""
    import sentencepiece

    out = tempfile.mkdtemp(prefix="mp-tok-")
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(synthetic_documents(400, seed=123)),
        model_prefix=os.path.join(out, "tok"), model_type="bpe", vocab_size=400,
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        hard_vocab_limit=False, minloglevel=2, num_threads=1,
    )
    return os.path.join(out, "tok.model")


def write_indexed(prefix: str, documents: list[np.ndarray], dtype=np.uint16) -> str:
    """Write token documents with megatron-core's own builder (the reference writer)."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for doc in documents:
        doc = np.asarray(doc)
        builder.add_document(doc, [len(doc)] if len(doc) else [])
    builder.finalize(prefix + ".idx")
    return prefix


def random_documents(num_documents: int, seed: int, max_length: int = 80,
                     vocab: int = 1000) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, int(rng.integers(1, max_length))) for _ in range(num_documents)]


class StubTokenizer:
    """What megatron-core's GPTDatasetConfig needs from a tokenizer."""

    vocab_size = 1000
    eod = 999
    unique_identifiers = {"class": "StubTokenizer"}

