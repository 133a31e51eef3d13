"""Streaming writer of megatron-core's IndexedDataset files (PREFIX.bin / PREFIX.idx).

The files are byte-identical to what megatron-core's `IndexedDatasetBuilder` writes for the same
sequences (what Megatron-LM's preprocess_data.py uses), but memory stays flat: the builder keeps
every sequence length in Python lists until `finalize`, this writer streams lengths and document
boundaries to temporary side files and assembles the index in fixed-size chunks.

Everything is written under temporary names and renamed only when complete, so a killed or
failed run leaves nothing that looks like a finished dataset.

.idx layout (megatron-core 0.16 `_IndexWriter`): b"MMIDIDX\\0\\0", u64 version 1, u8 dtype code,
u64 sequence count, u64 document count, int32 lengths, int64 byte pointers, int64 document
indices (sequence counts at each document end, starting with 0).
"""
from __future__ import annotations

import os
import shutil
import struct
from typing import BinaryIO, Iterator

import numpy as np

_HEADER = b"MMIDIDX\x00\x00"
# megatron-core's DType codes.
_DTYPE_CODES = {np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.int16): 3,
                np.dtype(np.int32): 4, np.dtype(np.int64): 5, np.dtype(np.float64): 6,
                np.dtype(np.float32): 7, np.dtype(np.uint16): 8}
_CHUNK = 1 << 20  # entries per chunk when assembling the index


def optimal_dtype(vocab_size: int) -> np.dtype:
    """The token dtype megatron-core picks (DType.optimal_dtype): uint16 below 65500, else int32."""
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


class IndexedDatasetWriter:
    """Append documents, then `finalize()` (or `abort()` on failure)."""

    def __init__(self, prefix: str, dtype: np.dtype) -> None:
        self.prefix = prefix
        self.dtype = np.dtype(dtype)
        if self.dtype not in _DTYPE_CODES:
            raise ValueError(f"unsupported token dtype {self.dtype}")
        self._tmp = f"{prefix}.tmp-{os.getpid()}"
        self._files: dict[str, BinaryIO] = {
            name: open(f"{self._tmp}.{name}", "wb") for name in ("bin", "lengths", "docs")
        }
        self.num_sequences = 0
        self.num_documents = 0
        self.num_tokens = 0
        self._files["docs"].write(np.zeros(1, dtype=np.int64).tobytes())  # leading 0

    def add_documents(self, tokens: np.ndarray, sequence_lengths: np.ndarray,
                      sequences_per_document: np.ndarray) -> None:
        """Append documents given as one token array, their sequence lengths and per-document counts.

        A document with 0 sequences (empty text) still gets a document-index entry, as in
        Megatron-LM, where `add_document` of an empty document repeats the previous boundary.
        """
        tokens = np.asarray(tokens)
        assert tokens.dtype == self.dtype, (tokens.dtype, self.dtype)
        sequence_lengths = np.asarray(sequence_lengths, dtype=np.int32)
        assert int(sequence_lengths.sum(dtype=np.int64)) == tokens.size
        self._files["bin"].write(tokens.tobytes())
        self._files["lengths"].write(sequence_lengths.tobytes())
        ends = self.num_sequences + np.cumsum(sequences_per_document, dtype=np.int64)
        self._files["docs"].write(ends.tobytes())
        self.num_sequences += len(sequence_lengths)
        self.num_documents += len(sequences_per_document)
        self.num_tokens += tokens.size

    def finalize(self) -> tuple[str, str]:
        """Write the index and move both files to their final names; returns (bin, idx) paths."""
        for f in self._files.values():
            f.close()
        idx_tmp = f"{self._tmp}.idx"
        itemsize = self.dtype.itemsize
        with open(idx_tmp, "wb") as out:
            out.write(_HEADER)
            out.write(struct.pack("<Q", 1))
            out.write(struct.pack("<B", _DTYPE_CODES[self.dtype]))
            out.write(struct.pack("<Q", self.num_sequences))
            out.write(struct.pack("<Q", self.num_documents + 1))
            with open(f"{self._tmp}.lengths", "rb") as lengths:
                shutil.copyfileobj(lengths, out)
            # Byte pointers: exclusive running sum of lengths * itemsize, computed chunk by chunk.
            pointer = 0
            for chunk in _read_chunks(f"{self._tmp}.lengths", np.int32):
                ends = pointer + np.cumsum(chunk, dtype=np.int64) * itemsize
                out.write(np.concatenate(([pointer], ends[:-1])).astype(np.int64).tobytes())
                pointer = int(ends[-1])
            with open(f"{self._tmp}.docs", "rb") as docs:
                shutil.copyfileobj(docs, out)
        bin_path, idx_path = f"{self.prefix}.bin", f"{self.prefix}.idx"
        # Remove a previous index first: between the two renames only a .bin exists, which
        # megatron-core refuses to open, so an interrupted rename never looks finished.
        if os.path.exists(idx_path):
            os.remove(idx_path)
        os.replace(f"{self._tmp}.bin", bin_path)
        os.replace(idx_tmp, idx_path)
        self._remove_temporaries()
        return bin_path, idx_path

    def abort(self) -> None:
        """Close and delete every temporary file; the final names are never touched."""
        for f in self._files.values():
            f.close()
        self._remove_temporaries()

    def _remove_temporaries(self) -> None:
        for name in ("bin", "lengths", "docs", "idx"):
            try:
                os.remove(f"{self._tmp}.{name}")
            except FileNotFoundError:
                pass


def _read_chunks(path: str, dtype: type) -> Iterator[np.ndarray]:
    """Yield a binary array file in chunks of at most _CHUNK entries."""
    itemsize = np.dtype(dtype).itemsize
    with open(path, "rb") as f:
        while True:
            data = f.read(_CHUNK * itemsize)
            if not data:
                return
            yield np.frombuffer(data, dtype=dtype)

