"""Typed face of the C++ patch sample index (csrc/sample_index.cpp), and its NumPy reference.

A patch sample of T patches of K tokens reads (T+1)*K consecutive tokens of the shuffled
document stream: T*K inputs, then the next patch's K tokens as labels. Sample j starts at stream
token j*T*K, so every patch is K consecutive tokens and consecutive samples overlap by K. With
K=1 the index equals megatron-core's `helpers_cpp.build_sample_idx` (add_extra_token=1).

The extension is compiled by `pip install -e .` (setup.py), never at run time.
"""
from __future__ import annotations

import numpy as np

try:
    from megatron_patch.data import _sample_index as _ext
except ImportError as err:  # pragma: no cover - depends on the install
    raise ImportError(
        "megatron_patch.data._sample_index is not built: run `pip install -e .` "
        "(or `python setup.py build_ext --inplace`) in the megatron-patch checkout"
    ) from err


def stream_lengths(sizes: np.ndarray, patch_size: int, align_documents: bool) -> np.ndarray:
    """Length each document takes in the stream: padded to a multiple of K when aligned."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if not align_documents:
        return sizes
    return (sizes + patch_size - 1) // patch_size * patch_size


def num_samples_in(num_tokens: int, patch_size: int, num_patches: int) -> int:
    """Whole samples in a stream of `num_tokens`: the last needs K tokens past its inputs."""
    return max(0, (num_tokens - patch_size) // (patch_size * num_patches))


def _check(sizes: np.ndarray, document_index: np.ndarray, patch_size: int, num_patches: int,
           num_samples: int) -> None:
    if not (isinstance(patch_size, (int, np.integer)) and patch_size >= 1):
        raise ValueError(f"patch_size (K) must be an integer >= 1, got {patch_size!r}")
    if not (isinstance(num_patches, (int, np.integer)) and num_patches >= 1):
        raise ValueError(f"num_patches (T) must be an integer >= 1, got {num_patches!r}")
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if sizes.ndim != 1 or document_index.ndim != 1:
        raise ValueError("sizes and document_index must be 1-D")


def build_sample_index(
    sizes: np.ndarray,
    document_index: np.ndarray,
    patch_size: int,
    num_patches: int,
    num_samples: int,
    align_documents: bool = False,
) -> np.ndarray:
    """int64 [num_samples+1, 2]: row j = (position in document_index, token offset) of token j*T*K.

    sizes: int32 length of every document; document_index: the order (with repeats for epochs)
    in which documents form the stream. Raises ValueError if an index is out of range or the
    stream is shorter than num_samples*T*K + K tokens.
    """
    sizes = np.ascontiguousarray(sizes, dtype=np.int32)
    document_index = np.asarray(document_index)
    _check(sizes, document_index, patch_size, num_patches, num_samples)
    if document_index.dtype == np.int32:
        build = _ext.build_sample_index_int32
    else:
        build = _ext.build_sample_index_int64
        document_index = np.ascontiguousarray(document_index, dtype=np.int64)
    return build(sizes, np.ascontiguousarray(document_index), int(patch_size), int(num_patches),
                 int(num_samples), bool(align_documents))


def reference_sample_index(
    sizes: np.ndarray,
    document_index: np.ndarray,
    patch_size: int,
    num_patches: int,
    num_samples: int,
    align_documents: bool = False,
) -> np.ndarray:
    """The same index in plain NumPy (cumulative sums + binary search): the test oracle.

    Costs O(len(document_index)) int64 temporaries; the C++ walk avoids them.
    """
    sizes = np.asarray(sizes)
    document_index = np.asarray(document_index)
    _check(sizes, document_index, patch_size, num_patches, num_samples)
    lengths = stream_lengths(sizes, patch_size, align_documents)[document_index]
    ends = np.cumsum(lengths)
    total = int(ends[-1]) if len(ends) else 0
    if total < num_samples * patch_size * num_patches + patch_size:
        raise ValueError(f"the document stream holds {total} tokens, too few for {num_samples} samples")
    starts = np.arange(num_samples + 1, dtype=np.int64) * (patch_size * num_patches)
    # The document holding token s is the first whose end is past s (empty documents never are).
    position = np.searchsorted(ends, starts, side="right")
    begins = ends[position] - lengths[position]
    return np.stack([position.astype(np.int64), starts - begins], axis=1)
