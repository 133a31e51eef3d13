"""Patch datasets: K=1 equals megatron-core's GPTDataset; K>1 against a plain stream reference;
stage ranges are disjoint; blends, caches, determinism and errors."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

from megatron_patch.data import build_train_valid_test_datasets, split_token_counts
from megatron_patch.data.stream import select_segments
from tests._data_helpers import StubTokenizer, random_documents, write_indexed

warnings.filterwarnings("ignore", category=UserWarning)
SPLIT = "90,8,2"


@pytest.fixture()
def corpus(tmp_path):
    documents = random_documents(300, seed=1)
    return write_indexed(str(tmp_path / "corpus"), documents), documents


def _gpt_datasets(prefix, seq_length, num_samples, seed, cache):
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    config = GPTDatasetConfig(
        random_seed=seed, sequence_length=seq_length, blend=([prefix], None), split=SPLIT,
        tokenizer=StubTokenizer(), reset_position_ids=False, reset_attention_mask=False,
        eod_mask_loss=False, path_to_cache=cache)
    return BlendedMegatronDatasetBuilder(GPTDataset, list(num_samples), lambda: True, config).build()


# (samples, seed): one epoch; 3 and 2 epochs with the final one shuffled apart; 2 epochs shuffled together.
@pytest.mark.parametrize("train_samples,seed", [(400, 3), (1400, 5), (1150, 9), (1300, 4)])
def test_k1_equals_megatron_core_gpt_dataset(corpus, tmp_path, train_samples, seed):
    prefix, _ = corpus
    num_samples = (train_samples, 60, 20)
    reference = _gpt_datasets(prefix, 16, num_samples, seed, str(tmp_path / "mcore"))
    ours = build_train_valid_test_datasets([prefix], SPLIT, 1, 16, num_samples, seed,
                                           cache_dir=str(tmp_path / "ours"))
    for ref, got, wanted in zip(reference, ours, num_samples):
        assert len(got) == wanted <= len(ref)
        for i in range(wanted):
            a, b = ref[i], got[i]
            for key in ("tokens", "labels", "loss_mask", "position_ids"):
                assert b[key].dtype == a[key].dtype and torch.equal(a[key], b[key]), (i, key)


def _stream_reference(dataset, documents, align):
    """Concatenate the raw documents in document_index order, padding with -1 when aligned."""
    k = dataset.patch_size
    parts = []
    for segment in np.asarray(dataset.indices.document_index):
        document, start = dataset.segments.document_and_offset(int(segment))
        tokens = np.asarray(documents[document][start: start + dataset.segments.lengths[segment]])
        if align:
            tokens = np.concatenate((tokens, np.full(-len(tokens) % k, -1)))
        parts.append(tokens)
    return np.concatenate(parts)


@pytest.mark.parametrize("k,align", [(2, False), (4, False), (4, True), (3, True)])
def test_patch_samples_read_the_k_aligned_stream(corpus, tmp_path, k, align):
    prefix, documents = corpus
    t = 6
    train, valid, _ = build_train_valid_test_datasets(
        [prefix], SPLIT, k, t * k, (900, 30, 0), seed=2, align_documents=align,
        cache_dir=str(tmp_path / "cache"))
    for dataset in (train, valid):
        stream = _stream_reference(dataset, documents, align)
        for i in range(len(dataset)):
            item = dataset[i]
            start = int(dataset.indices.shuffle_index[i]) * t * k
            window = stream[start: start + (t + 1) * k]
            assert item["tokens"].shape == (t * k,) and item["labels"].shape == (t * k,)
            np.testing.assert_array_equal(item["tokens"].numpy(), np.where(window[:-k] < 0, 0, window[:-k]))
            np.testing.assert_array_equal(item["labels"].numpy(), np.where(window[k:] < 0, 0, window[k:]))
            np.testing.assert_array_equal(item["loss_mask"].numpy(), (window[k:] >= 0).astype(np.float32))
            assert item["tokens"].dtype == torch.int64 and item["loss_mask"].dtype == torch.float32
            assert torch.equal(item["position_ids"], torch.arange(t))
        if align:
            assert (stream < 0).any()  # padding exists, so the mask check above means something


def test_stages_read_disjoint_token_ranges(tmp_path):
    # Every token is its own global position, so sample contents reveal exactly what was read.
    rng = np.random.default_rng(4)
    lengths = rng.integers(1, 50, 200)
    bounds = np.concatenate(([0], np.cumsum(lengths)))
    documents = [np.arange(bounds[i], bounds[i + 1]) for i in range(len(lengths))]
    prefix = write_indexed(str(tmp_path / "positions"), documents, dtype=np.int32)
    train_docs = int(round(0.9 * len(documents)))
    train_tokens = int(bounds[train_docs])
    cut = int(np.floor(2 / 3 * train_tokens))

    def seen(train_range, samples, k):
        train, _, _ = build_train_valid_test_datasets(
            [prefix], "90,10,0", k, 8 * k, (samples, 0, 0), seed=1, train_range=train_range,
            cache_dir=str(tmp_path / "cache"))
        return np.unique(np.concatenate([train[i]["tokens"].numpy() for i in range(len(train))]))

    # Patch stage K=4 over (0, 2/3), token stage K=1 over (2/3, 1); ask for several epochs.
    patch, token = seen((0.0, 2 / 3), 400, 4), seen((2 / 3, 1.0), 1500, 1)
    assert not np.intersect1d(patch, token).size and max(patch.max(), token.max()) < train_tokens
    # One epoch of each stage reads (nearly) its whole range: at most a sample's worth is left.
    assert cut - len(patch) <= 9 * 4 and train_tokens - cut - len(token) <= 9
    # The ranges are cut from a permutation of the documents, not from file order.
    assert patch.max() > cut and token.min() < cut


def test_select_segments_splits_a_document_between_stages():
    lengths = np.array([5, 7, 0, 4], dtype=np.int32)
    whole = select_segments(lengths, (1, 4))  # the full range: file order, empty documents kept
    assert (whole.documents.tolist(), whole.head_offset, whole.lengths.tolist()) == ([1, 2, 3], 0, [7, 0, 4])
    first = select_segments(lengths, (0, 4), (0.0, 0.5), seed=3)  # 16 tokens: cut at 8
    second = select_segments(lengths, (0, 4), (0.5, 1.0), seed=3)
    order = np.arange(4)
    np.random.RandomState(3).shuffle(order)
    walked = np.concatenate([np.full(lengths[d], d) for d in order])  # the permuted stream's owners
    got = []
    for part in (first, second):
        for k, (document, length) in enumerate(zip(part.documents, part.lengths)):
            start = part.head_offset if k == 0 else 0
            got += [(int(document), start + i) for i in range(length)]
    expected, seen_in = [], {}
    for document in walked:
        expected.append((int(document), seen_in.get(document, 0)))
        seen_in[document] = seen_in.get(document, 0) + 1
    assert got == expected and first.num_tokens == 8 and second.num_tokens == 8
    # The cut splits one document between the stages: its head in the first, its tail in the second.
    assert first.documents[-1] == second.documents[0] and second.head_offset == first.lengths[-1]


def test_stages_read_every_domain_of_a_sorted_corpus(tmp_path):
    """A .bin written domain by domain (prose, then code): each stage holds both domains in
    about their overall shares, because the stage ranges are cut from a document permutation."""
    rng = np.random.default_rng(7)
    prose = [rng.integers(0, 500, rng.integers(10, 50)) for _ in range(1500)]
    code = [rng.integers(500, 1000, rng.integers(10, 50)) for _ in range(1000)]
    prefix = write_indexed(str(tmp_path / "sorted"), prose + code, dtype=np.int32)
    train_docs = (prose + code)[:int(round(0.95 * 2500))]  # split "95,5,0": the first 95% of documents
    overall = sum(len(d) for d in train_docs[1500:]) / sum(len(d) for d in train_docs)
    train_tokens = sum(len(d) for d in train_docs)

    def code_share(train_range, k):
        samples = int((train_range[1] - train_range[0]) * train_tokens) // (16 * k) - 2  # ~1 epoch
        train, _, _ = build_train_valid_test_datasets(
            [prefix], "95,5,0", k, 16 * k, (samples, 0, 0), seed=11, train_range=train_range,
            cache_dir=str(tmp_path / "cache"))
        tokens = np.concatenate([train[i]["tokens"].numpy() for i in range(len(train))])
        return float((tokens >= 500).mean())

    for train_range, k in (((0.0, 2 / 3), 4), ((2 / 3, 1.0), 1)):
        assert abs(code_share(train_range, k) - overall) < 0.03, (train_range, overall)


def test_blend_follows_weights(tmp_path):
    low = write_indexed(str(tmp_path / "low"), random_documents(200, seed=2, vocab=500))
    high = write_indexed(str(tmp_path / "high"),
                         [d + 500 for d in random_documents(200, seed=3, vocab=500)])
    train, valid, test = build_train_valid_test_datasets(
        ["0.7", low, "0.3", high], SPLIT, 2, 16, (500, 50, 0), seed=0,
        cache_dir=str(tmp_path / "cache"))
    assert (len(train), len(valid), test) == (500, 50, None)
    from_low = sum(int(train[i]["tokens"].max() < 500) for i in range(len(train)))
    assert abs(from_low - 350) <= 1
    counts = split_token_counts(["0.7", low, "0.3", high], SPLIT)
    assert counts == tuple(a + b for a, b in zip(split_token_counts([low], SPLIT),
                                                  split_token_counts([high], SPLIT)))


def test_split_token_counts_sum_the_documents(corpus):
    prefix, documents = corpus
    lengths = [len(d) for d in documents]
    assert split_token_counts([prefix], SPLIT) == (sum(lengths[:270]), sum(lengths[270:294]),
                                                   sum(lengths[294:]))


def test_cache_is_reused_and_keyed_by_k(corpus, tmp_path, monkeypatch):
    prefix, _ = corpus
    cache = str(tmp_path / "cache")
    first, _, _ = build_train_valid_test_datasets([prefix], SPLIT, 2, 8, (100, 0, 0), 0, cache_dir=cache)
    files = sorted(os.listdir(cache))
    assert isinstance(first.indices.sample_index, np.memmap)

    import megatron_patch.data.builder as builder

    def fail(*args, **kwargs):
        raise AssertionError("index rebuilt although it is cached")

    monkeypatch.setattr(builder, "build_stream_indices", fail)
    again, _, _ = build_train_valid_test_datasets([prefix], SPLIT, 2, 8, (100, 0, 0), 0, cache_dir=cache)
    assert sorted(os.listdir(cache)) == files
    assert all(torch.equal(first[i]["tokens"], again[i]["tokens"]) for i in range(len(first)))
    with pytest.raises(AssertionError, match="rebuilt"):  # K=4 (same seq_length) is a new key
        build_train_valid_test_datasets([prefix], SPLIT, 4, 8, (100, 0, 0), 0, cache_dir=cache)


def test_deterministic_by_seed(corpus, tmp_path):
    prefix, _ = corpus

    def tokens(seed, cache):
        train, _, _ = build_train_valid_test_datasets([prefix], SPLIT, 4, 16, (50, 0, 0), seed,
                                                      cache_dir=str(tmp_path / cache))
        return torch.stack([train[i]["tokens"] for i in range(len(train))])

    assert torch.equal(tokens(1, "a"), tokens(1, "b"))
    assert not torch.equal(tokens(1, "a"), tokens(2, "a"))


def test_errors_name_the_problem(corpus, tmp_path):
    prefix, _ = corpus
    build = build_train_valid_test_datasets
    with pytest.raises(ValueError, match="nowhere/x.*not found"):
        build(["nowhere/x"], SPLIT, 1, 8, (1, 0, 0), 0)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        build([prefix], SPLIT, 4, 10, (1, 0, 0), 0)
    with pytest.raises(ValueError, match="train_range"):
        build([prefix], SPLIT, 1, 8, (1, 0, 0), 0, train_range=(0.5, 0.5))
    with pytest.raises(ValueError, match="fewer than one sample"):
        build([prefix], SPLIT, 4, 40000, (1, 0, 0), 0, cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="no documents"):
        build([prefix], "100,0,0", 1, 8, (1, 1, 0), 0, cache_dir=str(tmp_path / "c"))
    train, _, _ = build([prefix], SPLIT, 1, 8, (3, 0, 0), 0, cache_dir=str(tmp_path / "c"))
    with pytest.raises(IndexError):
        train[3]



def test_rank0_builds_cache_other_ranks_only_memory_map(corpus, tmp_path, monkeypatch):
    """The rank logic of cache.cached_arrays, with torch.distributed faked in-process (a real
    2-process launch costs two megatron-core imports, ~10 s on 2 cores, for a barrier)."""
    import megatron_patch.data.builder as builder
    import megatron_patch.data.cache as cache

    prefix, _ = corpus
    rank, barriers, sent = [1], [], [None]
    monkeypatch.setattr(cache, "_distributed", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: rank[0])

    def broadcast_object_list(objects, src):  # rank 0 sends its build outcome, the others receive it
        assert src == 0
        barriers.append(rank[0])
        if rank[0] == 0:
            sent[0] = objects[0]
        else:
            objects[0] = sent[0]

    monkeypatch.setattr(torch.distributed, "broadcast_object_list", broadcast_object_list)
    args = ([prefix], SPLIT, 4, 32, (64, 8, 0), 3)
    kwargs = dict(cache_dir=str(tmp_path / "cache"))
    real_build = builder.build_stream_indices

    def must_not_build(*a, **k):
        raise AssertionError("a rank other than 0 built an index")

    monkeypatch.setattr(builder, "build_stream_indices", must_not_build)
    with pytest.raises(RuntimeError, match="filesystem that every rank sees"):
        builder.build_train_valid_test_datasets(*args, **kwargs)  # rank 1 first: nothing to map
    rank[0] = 0
    monkeypatch.setattr(builder, "build_stream_indices", real_build)
    train0, valid0, _ = builder.build_train_valid_test_datasets(*args, **kwargs)
    rank[0] = 1
    monkeypatch.setattr(builder, "build_stream_indices", must_not_build)
    train1, valid1, _ = builder.build_train_valid_test_datasets(*args, **kwargs)
    assert barriers == [1, 0, 0, 1, 1]  # one barrier per cached index, on every rank
    assert isinstance(train1.indices.shuffle_index, np.memmap)
    for a, b in ((train0, train1), (valid0, valid1)):
        assert all(torch.equal(a[i]["tokens"], b[i]["tokens"]) for i in range(len(a)))

    # Rank 0 failing to build tells the others (who would otherwise wait at the barrier until
    # the process-group timeout) and raises its own error.
    def broken_build(*a, **k):
        raise MemoryError("out of memory building the index")

    kwargs["cache_dir"] = str(tmp_path / "cache2")
    rank[0] = 0
    monkeypatch.setattr(builder, "build_stream_indices", broken_build)
    with pytest.raises(MemoryError, match="out of memory"):
        builder.build_train_valid_test_datasets(*args, **kwargs)
    assert sent[0] == "MemoryError: out of memory building the index"
    rank[0] = 1
    monkeypatch.setattr(builder, "build_stream_indices", must_not_build)
    with pytest.raises(RuntimeError, match="rank 0 failed to build the index cache.*out of memory"):
        builder.build_train_valid_test_datasets(*args, **kwargs)
    assert not list((tmp_path / "cache2").glob("*.tmp-*"))


def test_k1_weighted_blend_equals_megatron_core(tmp_path):
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    a = write_indexed(str(tmp_path / "a"), random_documents(200, seed=2))
    b = write_indexed(str(tmp_path / "b"), random_documents(150, seed=3))
    blend = ["0.6", a, "0.4", b]
    num_samples = (300, 30, 0)
    config = GPTDatasetConfig(
        random_seed=11, sequence_length=16, blend=([a, b], [0.6, 0.4]), split=SPLIT,
        tokenizer=StubTokenizer(), reset_position_ids=False, reset_attention_mask=False,
        eod_mask_loss=False)  # no path_to_cache: megatron-core's blend cache needs a process group
    reference = BlendedMegatronDatasetBuilder(GPTDataset, list(num_samples), lambda: True,
                                              config).build()
    ours = build_train_valid_test_datasets(blend, SPLIT, 1, 16, num_samples, 11,
                                           cache_dir=str(tmp_path / "ours"))
    for ref, got, wanted in zip(reference[:2], ours[:2], num_samples):
        assert len(ref) == len(got) == wanted
        for i in range(wanted):
            assert torch.equal(ref[i]["tokens"], got[i]["tokens"]), i
            assert torch.equal(ref[i]["labels"], got[i]["labels"]), i
