"""The C++ patch sample index against megatron-core's helper (K=1) and a NumPy reference."""
from __future__ import annotations

import numpy as np
import pytest

from megatron_patch.data.sample_index import (
    build_sample_index,
    num_samples_in,
    reference_sample_index,
    stream_lengths,
)


def _random_case(seed: int, num_documents: int = 300, epochs: int = 2, empty: bool = False):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0 if empty else 1, 60, num_documents).astype(np.int32)
    document_index = np.tile(np.arange(num_documents, dtype=np.int32), epochs)
    rng.shuffle(document_index)
    return sizes, document_index


def _max_samples(sizes, document_index, k, t, align):
    return num_samples_in(int(stream_lengths(sizes, k, align)[document_index].sum()), k, t)


@pytest.mark.parametrize("seq_length", [2, 7, 32, 100])
def test_k1_equals_megatron_core_build_sample_idx(seq_length):
    from megatron.core.datasets import helpers

    sizes, document_index = _random_case(seq_length)
    tokens_per_epoch = int(sizes.sum())
    expected = helpers.build_sample_idx(sizes, document_index, seq_length, 2, tokens_per_epoch,
                                        True, True)
    num_samples = _max_samples(sizes, document_index, 1, seq_length, False)
    ours = build_sample_index(sizes, document_index, 1, seq_length, num_samples)
    assert ours.dtype == np.int64
    np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("align", [False, True])
@pytest.mark.parametrize("empty", [False, True])
def test_matches_numpy_reference(k, align, empty):
    for seed in range(3):
        sizes, document_index = _random_case(100 * k + seed, empty=empty)
        t = int(np.random.default_rng(seed).integers(1, 20))
        n = _max_samples(sizes, document_index, k, t, align)
        ours = build_sample_index(sizes, document_index, k, t, n, align)
        np.testing.assert_array_equal(ours, reference_sample_index(sizes, document_index, k, t, n, align))
        # Fewer samples than the stream holds: a prefix of the full index.
        np.testing.assert_array_equal(build_sample_index(sizes, document_index, k, t, n // 2, align),
                                      ours[: n // 2 + 1])


@pytest.mark.parametrize("k,align", [(1, False), (4, False), (4, True), (3, True)])
def test_samples_are_k_aligned_cover_every_token_and_stay_in_range(k, align):
    sizes, document_index = _random_case(7, empty=True)
    t = 5
    n = _max_samples(sizes, document_index, k, t, align)
    index = build_sample_index(sizes, document_index, k, t, n, align)
    lengths = stream_lengths(sizes, k, align)[document_index]
    begins = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    total = int(lengths.sum())
    positions, offsets = index[:, 0], index[:, 1]
    assert ((positions >= 0) & (positions < len(document_index))).all()
    assert ((offsets >= 0) & (offsets < lengths[positions])).all()  # inside a non-empty document
    starts = begins[positions] + offsets
    np.testing.assert_array_equal(starts, np.arange(n + 1) * t * k)  # K-aligned, stride T*K
    # Samples [start, start + (T+1)K) overlap by K and together cover the stream's whole prefix.
    assert starts[-1] - t * k + (t + 1) * k <= total
    assert total - (starts[-1] + k) < t * k  # not one more sample fits
    if align:
        # Every patch lies inside one (padded) document.
        ends = begins + lengths
        patch_starts = np.arange(0, starts[-1] + k, k)
        doc = np.searchsorted(ends, patch_starts, side="right")
        assert (patch_starts + k <= ends[doc]).all()


def test_int64_stream_past_2_pow_31_tokens():
    sizes = np.full(3, 2**31 - 1, dtype=np.int32)  # 6.4e9 tokens, nothing allocated per token
    document_index = np.array([2, 0, 1, 1, 0], dtype=np.int64)  # also exercises int64 indices
    k, t = 4, 2**20
    n = _max_samples(sizes, document_index, k, t, True)
    ours = build_sample_index(sizes, document_index, k, t, n, True)
    assert n > 2**31 // (k * t) and ours[:, 1].max() > 2**30
    np.testing.assert_array_equal(ours, reference_sample_index(sizes, document_index, k, t, n, True))


def test_bad_inputs_raise_value_error():
    sizes, document_index = _random_case(0)
    with pytest.raises(ValueError, match="patch_size"):
        build_sample_index(sizes, document_index, 0, 4, 1)
    with pytest.raises(ValueError, match="num_patches"):
        build_sample_index(sizes, document_index, 2, 0, 1)
    with pytest.raises(ValueError, match="num_samples"):
        build_sample_index(sizes, document_index, 2, 4, -1)
    with pytest.raises(ValueError, match="holds .* tokens"):
        build_sample_index(sizes, document_index, 2, 4, 10**6)
    bad = document_index.copy()
    bad[1] = len(sizes)  # only entries the walk reads are checked
    with pytest.raises(ValueError, match=r"document_index\[1\]"):
        build_sample_index(sizes, bad, 2, 4, 10)
    negative = sizes.copy()
    negative[document_index[0]] = -3
    with pytest.raises(ValueError, match="negative length"):
        build_sample_index(negative, document_index, 2, 4, 10)
    with pytest.raises(ValueError, match="1-D"):
        build_sample_index(sizes.reshape(2, -1), document_index, 2, 4, 10)
