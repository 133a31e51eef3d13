"""The token stream a dataset reads: which tokens, in what order, cut into which samples.

A split's documents (contiguous in file order, as Megatron splits them) form a token stream.
A stage reads a fraction (a, b) of it: the patch stage (0, f), the token stage (f, 1), so the
two see disjoint data. The fraction is taken over the split's documents in a seeded
permutation, not in file order: a .bin written domain by domain (or in date order) would
otherwise give the patch stage one distribution and the token stage another. Every stage
of a run permutes with the same seed, so the ranges stay disjoint and together cover the
split (the document at a cut is split between the two stages). The full range (0, 1) reads
the documents in file order, as GPTDataset does: its epochs are shuffled anyway.
The documents of the range are *segments*; every epoch shuffles them (seeded), samples are
cut from the concatenation, then the samples are shuffled.

Document and shuffle indices follow megatron-core's GPTDataset exactly (same RandomState
calls, same "separate final epoch" rule), generalised from 1 to K tokens: with K=1 and the
full range the three arrays equal GPTDataset's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from megatron_patch.data.sample_index import build_sample_index, num_samples_in, stream_lengths

# megatron-core: shuffle the final epoch separately when it contributes < 80% of an epoch,
# so the samples actually used are spread over whole epochs.
_SEPARATE_FINAL_EPOCH_THRESHOLD = 0.80


@dataclass(frozen=True)
class Segments:
    """A token range over a sequence of documents: segment k is document documents[k].

    Only the edges can be partial: segment 0 starts `head_offset` tokens into its document, and
    the last segment may stop early; `lengths` are the tokens each segment contributes.
    """

    documents: np.ndarray  # int64 document id of every segment
    head_offset: int
    lengths: np.ndarray  # int32

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum(dtype=np.int64))

    def document_and_offset(self, segment: int) -> tuple[int, int]:
        """The document holding `segment`, and the offset in it where the segment starts."""
        return int(self.documents[segment]), (self.head_offset if segment == 0 else 0)

    def tokens_by_document(self, num_documents: int) -> np.ndarray:
        """int64 [num_documents]: tokens this range reads from each document of the file."""
        return np.bincount(self.documents, weights=self.lengths, minlength=num_documents).astype(np.int64)


def cut_point(fraction: float, num_tokens: int) -> int:
    """Token where fraction `fraction` of the stream ends; stages sharing a boundary agree on it."""
    return num_tokens if fraction >= 1.0 else int(math.floor(fraction * num_tokens))


def document_order(document_range: tuple[int, int], token_range: tuple[float, float],
                   seed: int) -> np.ndarray:
    """The order in which a stage range walks the split's documents (int64 ids).

    A partial range walks a permutation seeded by `seed` alone (every stage of a run passes the
    same one), so consecutive ranges cut one shuffled stream; the full range keeps file order.
    """
    begin, end = document_range
    order = np.arange(begin, end, dtype=np.int64)
    if tuple(token_range) != (0.0, 1.0):
        np.random.RandomState(seed).shuffle(order)
    return order


def select_segments(sequence_lengths: np.ndarray, document_range: tuple[int, int],
                    token_range: tuple[float, float] = (0.0, 1.0), seed: int = 0) -> Segments:
    """Segments covering fraction token_range of the tokens of documents [begin, end), walked
    in `document_order` (file order for the full range, a seeded permutation otherwise)."""
    documents = document_order(document_range, token_range, seed)
    lengths = np.asarray(sequence_lengths, dtype=np.int32)[documents]
    ends = np.cumsum(lengths, dtype=np.int64)
    total = int(ends[-1]) if len(ends) else 0
    first, last = cut_point(token_range[0], total), cut_point(token_range[1], total)
    if last <= first:
        return Segments(documents[:0], 0, np.zeros(0, dtype=np.int32))
    # The full range keeps every document, empty ones included, so indices match GPTDataset's.
    d0 = 0 if first == 0 else int(np.searchsorted(ends, first, side="right"))
    d1 = len(lengths) - 1 if last == total else int(np.searchsorted(ends, last, side="left"))
    head = first - int(ends[d0] - lengths[d0])
    selected = lengths[d0: d1 + 1].copy()
    selected[-1] = last - int(ends[d1] - lengths[d1])
    selected[0] -= head
    return Segments(documents[d0: d1 + 1].copy(), head, selected)


@dataclass(frozen=True)
class StreamIndices:
    """The three arrays a dataset reads through (possibly memory-mapped from the cache)."""

    document_index: np.ndarray  # segment ids, epochs concatenated and shuffled
    sample_index: np.ndarray  # int64 [samples+1, 2]: (position in document_index, offset)
    shuffle_index: np.ndarray  # sample order


def build_stream_indices(segment_lengths: np.ndarray, patch_size: int, num_patches: int,
                         num_samples: int, seed: int, align_documents: bool) -> StreamIndices:
    """Document, sample and shuffle index for at least `num_samples` samples (whole epochs)."""
    tokens_per_epoch = int(stream_lengths(segment_lengths, patch_size, align_documents).sum())
    stride = patch_size * num_patches
    samples_per_epoch = num_samples_in(tokens_per_epoch, patch_size, num_patches)
    if samples_per_epoch < 1:
        raise ValueError(f"{tokens_per_epoch} tokens hold no sample of {stride + patch_size} tokens")
    needed = num_samples * stride + patch_size
    num_epochs = max(1, -(-needed // tokens_per_epoch))

    separate_final_epoch = False
    if num_epochs > 1:
        before_final = num_samples_in((num_epochs - 1) * tokens_per_epoch, patch_size, num_patches)
        from_final = num_samples - before_final
        assert 0 <= from_final <= samples_per_epoch + 1
        separate_final_epoch = from_final < int(_SEPARATE_FINAL_EPOCH_THRESHOLD * samples_per_epoch)

    random_state = np.random.RandomState(seed)
    document_index = _document_index(len(segment_lengths), num_epochs, random_state,
                                     separate_final_epoch)
    total_samples = num_samples_in(num_epochs * tokens_per_epoch, patch_size, num_patches)
    sample_index = build_sample_index(segment_lengths, document_index, patch_size, num_patches,
                                      total_samples, align_documents)
    if separate_final_epoch:
        shuffled = _shuffle_index(before_final, total_samples, random_state)
    else:
        shuffled = _shuffle_index(total_samples, total_samples, random_state)
    return StreamIndices(document_index, sample_index, shuffled)


def _document_index(num_segments: int, num_epochs: int, random_state: np.random.RandomState,
                    separate_final_epoch: bool) -> np.ndarray:
    """Segment ids repeated num_epochs times and shuffled (the final epoch apart if asked)."""
    if separate_final_epoch and num_epochs > 1:
        head = _document_index(num_segments, num_epochs - 1, random_state, False)
        tail = _document_index(num_segments, 1, random_state, False)
        return np.concatenate((head, tail))
    dtype = np.int32 if num_segments <= np.iinfo(np.int32).max else np.int64
    index = np.tile(np.arange(num_segments, dtype=dtype), num_epochs)
    random_state.shuffle(index)
    return index


def _shuffle_index(num_samples: int, total: int, random_state: np.random.RandomState) -> np.ndarray:
    """Shuffled [0, num_samples) followed by shuffled [num_samples, total)."""
    dtype = np.uint32 if total < np.iinfo(np.uint32).max - 1 else np.int64
    first = np.arange(num_samples, dtype=dtype)
    random_state.shuffle(first)
    if num_samples == total:
        return first
    last = np.arange(num_samples, total, dtype=dtype)
    random_state.shuffle(last)
    return np.concatenate((first, last))
