"""megatron_patch.bench.tokenizers: corpus, tokenizer training, one timed preprocessing run."""
from __future__ import annotations

import json

import numpy as np

from megatron_patch.bench import tokenizers as bench
from tests._data_helpers import write_indexed


def test_corpus_splits_files_into_documents(tmp_path):
    sources = bench.stdlib_sources()[:5]
    whole = bench.make_corpus(str(tmp_path / "whole.jsonl"), 10**7, sources)
    split = bench.make_corpus(str(tmp_path / "split.jsonl"), 10**7, sources, doc_bytes=500)
    assert whole.documents == 5 and split.documents > 5
    texts = [json.loads(line)["text"] for line in open(split.path, encoding="utf-8")]
    assert "\n\n".join(texts) == "\n\n".join(open(s, encoding="utf-8").read() for s in sources)
    capped = bench.make_corpus(str(tmp_path / "capped.jsonl"), 2000, sources, doc_bytes=500)
    assert capped.bytes <= 2000 and capped.documents < split.documents


def test_token_count_reads_the_dtype(tmp_path):
    for dtype in (np.uint16, np.int32):
        prefix = write_indexed(str(tmp_path / np.dtype(dtype).name), [np.arange(7), np.arange(5)], dtype)
        assert bench.token_count(prefix) == 12


def test_compare_preprocess_without_megatron_lm(tmp_path):
    corpus = bench.make_corpus(str(tmp_path / "c.jsonl"), 30_000, bench.stdlib_sources()[:20],
                               doc_bytes=1000)
    tokenizer_dir = bench.train_bpe_tokenizer(str(tmp_path / "tok"), corpus.path, vocab_size=300)
    result = bench.compare_preprocess(corpus.path, tokenizer_dir, str(tmp_path / "out"), workers=1,
                                      repeats=1)
    assert result.megatron_lm is None and result.speedup is None and result.identical is None
    assert len(result.ours.seconds) == 1 and result.tokens > corpus.documents
    summary = json.loads(json.dumps(result.to_dict()))
    assert summary["ours"]["median_s"] == result.ours.seconds[0] and result.ours.cpu_seconds[0] > 0
    assert summary["corpus"]["documents"] == corpus.documents
