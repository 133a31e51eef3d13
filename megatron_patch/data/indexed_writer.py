"""Streaming writer of megatron-core's IndexedDataset files (PREFIX.bin / PREFIX.idx).

The files are byte-identical to what megatron-core's `IndexedDatasetBuilder` writes for the same
sequences (what Megatron-LM's preprocess_data.py uses), but memory stays flat: the builder keeps
every sequence length in Python lists until `finalize`, this writer streams lengths and document
boundaries to temporary side files and assembles the index in fixed-size chunks.

Both files are written under temporary names (megatron_patch.io.atomic_path) and renamed only
when complete, so a killed or failed run leaves nothing that looks like a finished dataset.

.idx layout (megatron-core 0.16 `_IndexWriter`): b"MMIDIDX\\0\\0", u64 version 1, u8 dtype code,
u64 sequence count, u64 document count, int32 lengths, int64 byte pointers, int64 document
indices (sequence counts at each document end, starting with 0).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import struct
import tempfile
from typing import BinaryIO, Iterator

import numpy as np

from megatron_patch.io import atomic_path

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
        # The .bin streams into atomic_path's temporary from the start; the stack holds it open
        # until finalize() renames it (or abort() deletes it).
        self._outputs = contextlib.ExitStack()
        self._files: dict[str, BinaryIO] = {}
        try:
            bin_tmp = self._outputs.enter_context(atomic_path(f"{prefix}.bin"))
            directory = os.path.dirname(os.path.abspath(prefix))
            self._scratch = self._outputs.enter_context(
                tempfile.TemporaryDirectory(prefix=f".{os.path.basename(prefix)}.", dir=directory))
            self._files["bin"] = open(bin_tmp, "wb")
            for name in ("lengths", "docs"):
                self._files[name] = open(os.path.join(self._scratch, name), "wb")
        except BaseException:
            self.abort()
            raise
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
        itemsize = self.dtype.itemsize
        lengths_path = os.path.join(self._scratch, "lengths")
        bin_path, idx_path = f"{self.prefix}.bin", f"{self.prefix}.idx"
        try:
            with atomic_path(idx_path) as idx_tmp:
                with open(idx_tmp, "wb") as out:
                    out.write(_HEADER)
                    out.write(struct.pack("<Q", 1))
                    out.write(struct.pack("<B", _DTYPE_CODES[self.dtype]))
                    out.write(struct.pack("<Q", self.num_sequences))
                    out.write(struct.pack("<Q", self.num_documents + 1))
                    with open(lengths_path, "rb") as lengths:
                        shutil.copyfileobj(lengths, out)
                    # Byte pointers: exclusive running sum of lengths * itemsize, chunk by chunk.
                    pointer = 0
                    for chunk in _read_chunks(lengths_path, np.int32):
                        ends = pointer + np.cumsum(chunk, dtype=np.int64) * itemsize
                        out.write(np.concatenate(([pointer], ends[:-1])).astype(np.int64).tobytes())
                        pointer = int(ends[-1])
                    with open(os.path.join(self._scratch, "docs"), "rb") as docs:
                        shutil.copyfileobj(docs, out)
                # Remove a previous index before the .bin is renamed: in between only a .bin
                # exists, which megatron-core refuses to open, so a half-done swap never looks
                # finished. The new index is renamed last, when this block ends.
                if os.path.exists(idx_path):
                    os.remove(idx_path)
                self._outputs.close()  # renames the .bin, removes the scratch directory
        except BaseException:
            self.abort()
            raise
        return bin_path, idx_path

    def abort(self) -> None:
        """Close and delete every temporary file; the final names are never touched."""
        for f in self._files.values():
            f.close()
        # Unwinding the stack with an exception deletes atomic_path's temporary, not renames it.
        try:
            self._outputs.__exit__(_Aborted, _Aborted(), None)
        except _Aborted:
            pass


class _Aborted(Exception):
    """Passed into the output stack so that its temporaries are removed, not committed."""


def _read_chunks(path: str, dtype: type) -> Iterator[np.ndarray]:
    """Yield a binary array file in chunks of at most _CHUNK entries."""
    itemsize = np.dtype(dtype).itemsize
    with open(path, "rb") as f:
        while True:
            data = f.read(_CHUNK * itemsize)
            if not data:
                return
            yield np.frombuffer(data, dtype=dtype)

