"""SentencePiece tokenizer with the ids Megatron-LM's Llama2Tokenizer writes.

Megatron-LM (megatron.core.tokenizers, `--tokenizer-type Llama2Tokenizer`) encodes a document
as the plain sentencepiece ids: no BOS, and the model's EOS id as the end-of-document (EOD)
token. The vocabulary size is the model's piece count. This wrapper keeps exactly those
conventions so files written here and by Megatron-LM agree byte for byte.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import sentencepiece


class SentencePieceTokenizer:
    """A loaded sentencepiece model: `.vocab_size`, `.eod`, `.bos`, `.encode`, `.decode`."""

    def __init__(self, model_path: str) -> None:
        if not model_path or not os.path.isfile(model_path):
            raise ValueError(
                f"tokenizer model {model_path!r} not found: pass a SentencePiece .model file "
                "(e.g. LLaMA-2's tokenizer.model, or one made by tools/train_tokenizer.py)"
            )
        self.model_path = os.path.abspath(model_path)
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.Load(self.model_path)
        except (OSError, RuntimeError) as err:
            raise ValueError(f"{model_path}: not a SentencePiece model ({err})") from err
        # sentencepiece >= 0.2.3 (pybind11 wrapper) returns int32 buffers; older releases only
        # Python lists, converted below at some cost (about a third slower preprocessing).
        try:
            self._sp.encode(["a"], out_type="numpy")
            self._numpy_out = True
        except (ValueError, TypeError):
            self._numpy_out = False

    @property
    def vocab_size(self) -> int:
        """Number of pieces; ids are in [0, vocab_size)."""
        return int(self._sp.get_piece_size())

    @property
    def eod(self) -> int:
        """End-of-document id appended by --append-eod: the model's EOS (-1 if it has none)."""
        return int(self._sp.eos_id())

    @property
    def bos(self) -> int:
        """Beginning-of-sentence id (-1 if the model has none); never inserted by preprocessing."""
        return int(self._sp.bos_id())

    @property
    def processor(self) -> sentencepiece.SentencePieceProcessor:
        """The underlying processor, for batch encoding in preprocessing workers."""
        return self._sp

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS or EOS."""
        return list(self._sp.encode(text, out_type=int))

    def encode_batch(self, texts: list[str], num_threads: int = 1) -> list[np.ndarray]:
        """Token ids of each text as int32 arrays (sentencepiece's C++ batch path, no Python ints)."""
        if self._numpy_out:
            return self._sp.encode(texts, out_type="numpy", num_threads=num_threads)
        ids = self._sp.encode(texts, out_type=int, num_threads=num_threads)
        return [np.asarray(one, dtype=np.int32) for one in ids]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of `ids` (a list, NumPy array or 1-D tensor of ints)."""
        return self._sp.decode([int(i) for i in ids])

    @property
    def unique_identifiers(self) -> dict[str, str]:
        """What megatron-core's dataset config hashes to identify the tokenizer."""
        return {"class": type(self).__name__, "tokenizer_path": self.model_path}


def load_tokenizer(path: str) -> SentencePieceTokenizer:
    """Load a SentencePiece model (ValueError naming the path if it is missing or invalid)."""
    return SentencePieceTokenizer(path)
