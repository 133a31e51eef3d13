"""Worker side of preprocessing: a chunk of input lines -> token ids for the .bin/.idx writer.

Each worker process loads the tokenizer once and turns whole chunks (a few hundred KB) into
one token array per JSON key, so the writer receives a few large NumPy arrays instead of one
Python list per document. Encoding uses the tokenizer's native batch path (sentencepiece's C++
batch call, the `tokenizers` library's Rust batch call) returning int32 arrays.

Semantics are Megatron-LM's preprocess_data.py (its Encoder.encode, any --tokenizer-type):
- a key's value is a string (one sequence) or a list of strings (one sequence each);
- sequences that encode to no ids are dropped; a document may end up with none (empty text);
- with --append-eod the EOD id is appended to the document's last sequence, if it has one;
- with --split-sentences a string value is split into sentences by NLTK's punkt (Megatron-LM's
  split step: the text in pieces of 1,000,000 characters, each piece's sentences in order), one
  sequence each; --keep-newlines keeps the newlines after sentences (its CustomLanguageVars).
Differences, all on inputs Megatron-LM cannot process: blank JSONL lines are skipped, and bad
input raises InputError naming file and line instead of a traceback.
"""
from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from typing import Optional

import numpy as np

from megatron_patch.data.text_input import Chunk, InputError


@dataclass
class EncodedKey:
    """Token ids of one JSON key over a chunk, in the writer's layout."""

    tokens: np.ndarray  # all ids, output dtype
    sequence_lengths: np.ndarray  # int32, one per non-empty sequence
    sequences_per_document: np.ndarray  # int64, one per document (0 for an empty one)


@dataclass
class EncodedChunk:
    """What a worker returns for one chunk."""

    keys: dict[str, EncodedKey]
    num_documents: int
    num_bytes: int  # uncompressed input bytes


SPLIT_PIECE_CHARS = 1_000_000  # Megatron-LM's split(): max_len


def load_sentence_splitter(lang: str = "english", keep_newlines: bool = False):
    """NLTK's punkt sentence splitter for `lang`, as Megatron-LM's --split-sentences builds it.

    InputError naming what to install when NLTK or its punkt data is missing (nothing is
    downloaded: Megatron-LM calls nltk.download, which needs the network).
    """
    try:
        import nltk  # noqa: F401
        from nltk.tokenize import punkt
    except ImportError:
        raise InputError("--split-sentences needs NLTK's punkt sentence splitter: pip install nltk, "
                         "then python -m nltk.downloader punkt_tab (NLTK >= 3.9; punkt before)"
                         ) from None
    try:
        if hasattr(punkt, "PunktTokenizer"):  # NLTK >= 3.9: punkt_tab, no pickles
            splitter = punkt.PunktTokenizer(lang)
        else:
            splitter = nltk.data.load(f"tokenizers/punkt/{lang}.pickle")
    except (LookupError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"--split-sentences: NLTK's punkt data for --lang {lang} is not installed "
                         f"({first}); run python -m nltk.downloader punkt_tab (NLTK >= 3.9) or "
                         "punkt (older NLTK), or set NLTK_DATA to where it is") from None
    if keep_newlines:
        splitter = punkt.PunktSentenceTokenizer(train_text=splitter._params,
                                                lang_vars=_keep_newlines_vars(punkt)())
    return splitter


def _keep_newlines_vars(punkt):
    """Megatron-LM's CustomLanguageVars: punkt keeps the whitespace after a sentence's end."""

    class CustomLanguageVars(punkt.PunktLanguageVars):
        _period_context_fmt = r"""
        \S*                          # some word material
        %(SentEndChars)s             # a potential sentence ending
        \s*                       #  <-- THIS is what I changed
        (?=(?P<after_tok>
            %(NonWord)s              # either other punctuation
            |
            (?P<next_tok>\S+)     #  <-- Normally you would have \s+ here
        ))"""

    return CustomLanguageVars


def split_sentences(splitter, text: str) -> list[str]:
    """Megatron-LM's Encoder.split of one string: punkt over 1,000,000-character pieces."""
    return [sentence for i in range(0, len(text), SPLIT_PIECE_CHARS)
            for sentence in splitter.tokenize(text[i:i + SPLIT_PIECE_CHARS])]


class ChunkEncoder:
    """Parses and encodes chunks; one instance per worker process."""

    def __init__(self, batch_encoder, json_keys: list[str], eod: Optional[int],
                 dtype: np.dtype, sentence_splitter: Optional[tuple[str, bool]] = None) -> None:
        """batch_encoder: a tokenizer's `batch_encoder()`; eod: the id --append-eod adds, or None;
        sentence_splitter: (lang, keep_newlines) for --split-sentences, None for whole texts."""
        self.batch_encoder = batch_encoder
        self.json_keys = list(json_keys)
        self.dtype = np.dtype(dtype)
        self.eod = None if eod is None else np.array([eod], dtype=np.int32)
        self.sentence_splitter = sentence_splitter
        self._splitter = None

    def __call__(self, chunk: Chunk) -> EncodedChunk:
        texts, counts, line_numbers = parse_chunk(chunk, self.json_keys)
        if self.sentence_splitter is not None:
            texts, counts = self._split(chunk.path, texts, counts, line_numbers)
        keys = {
            key: self._encode(chunk.path, texts[key], counts[key], line_numbers)
            for key in texts
        }
        return EncodedChunk(keys, len(line_numbers), len(chunk.data))

    def _split(self, path: str, texts: dict[str, list[str]],
               counts: dict[str, Optional[list[int]]], line_numbers: list[int]):
        """Every document's text -> its sentences (one sequence each)."""
        if self._splitter is None:
            self._splitter = load_sentence_splitter(*self.sentence_splitter)
        split_texts: dict[str, list[str]] = {}
        split_counts: dict[str, Optional[list[int]]] = {}
        for key, values in texts.items():
            if counts[key] is not None and any(c != 1 for c in counts[key]):
                line = next(n for n, c in zip(line_numbers, counts[key]) if c != 1)
                raise InputError(f"{path}:{line}: key {key!r} holds a list of strings (already "
                                 "split); --split-sentences splits string values: drop it")
            split_texts[key], split_counts[key] = [], []
            for text in values:
                sentences = split_sentences(self._splitter, text)
                split_texts[key].extend(sentences)
                split_counts[key].append(len(sentences))
        return split_texts, split_counts

    def _encode(self, path: str, texts: list[str], counts: Optional[list[int]],
                line_numbers: list[int]) -> EncodedKey:
        """counts[d]: sequences of document d (None: one each)."""
        try:
            ids = self.batch_encoder.encode_batch(texts)
        except (RuntimeError, UnicodeError, TypeError, ValueError):
            ids = self._encode_one_by_one(path, texts, counts, line_numbers)
        if counts is None:
            counts = [1] * len(texts)
        pieces: list[np.ndarray] = []
        lengths: list[int] = []
        per_document = np.zeros(len(counts), dtype=np.int64)
        sequence = 0
        for document, count in enumerate(counts):
            kept = 0
            for array in ids[sequence: sequence + count]:
                if array.size:
                    pieces.append(array)
                    lengths.append(array.size)
                    kept += 1
            sequence += count
            if kept and self.eod is not None:
                pieces.append(self.eod)
                lengths[-1] += 1
            per_document[document] = kept
        tokens = (np.concatenate(pieces, dtype=self.dtype, casting="unsafe") if pieces
                  else np.zeros(0, dtype=self.dtype))
        return EncodedKey(tokens, np.asarray(lengths, dtype=np.int32), per_document)

    def _encode_one_by_one(self, path: str, texts: list[str], counts: Optional[list[int]],
                           line_numbers: list[int]) -> list[np.ndarray]:
        """Slow path after a batch failed: find the document the tokenizer rejects."""
        owners = (line_numbers if counts is None
                  else [n for n, c in zip(line_numbers, counts) for _ in range(c)])
        result = []
        for text, line in zip(texts, owners):
            try:
                result.extend(self.batch_encoder.encode_batch([text]))
            except (RuntimeError, UnicodeError, TypeError) as err:
                raise InputError(f"{path}:{line}: cannot encode this text ({err}); "
                                 "it may hold unpaired surrogate escapes such as \\ud800") from None
            except ValueError as err:  # NullTokenizer: not an id, or outside the vocabulary
                raise InputError(f"{path}:{line}: cannot encode this text: {err}") from None
        return result


def parse_chunk(chunk: Chunk, json_keys: list[str]
                ) -> tuple[dict[str, list[str]], dict[str, Optional[list[int]]], list[int]]:
    """Texts of a chunk per key, sequences per document (None: one each), and each document's line.

    Plain text: every line is one document under the first key. JSONL: blank lines are skipped.
    """
    lines = _decode_lines(chunk)
    if chunk.format == "text":
        texts = [line[:-1] if line.endswith("\r") else line for line in lines]
        return ({json_keys[0]: texts}, {json_keys[0]: None},
                list(range(chunk.first_line, chunk.first_line + len(lines))))
    texts: dict[str, list[str]] = {key: [] for key in json_keys}
    counts: dict[str, Optional[list[int]]] = {key: [] for key in json_keys}
    line_numbers: list[int] = []
    for offset, line in enumerate(lines):
        if not line or line.isspace():
            continue
        where = f"{chunk.path}:{chunk.first_line + offset}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(record, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
        for key in json_keys:
            if key not in record:
                present = ", ".join(repr(k) for k in list(record)[:8])
                raise InputError(f"{where}: missing key {key!r} (the object has {present}); "
                                 "choose the key with --json-keys")
            value = record[key]
            if isinstance(value, str):
                texts[key].append(value)
                counts[key].append(1)
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                texts[key].extend(value)
                counts[key].append(len(value))
            else:
                raise InputError(f"{where}: key {key!r} holds {type(value).__name__}, "
                                 "expected a string or a list of strings")
        line_numbers.append(chunk.first_line + offset)
    return texts, counts, line_numbers


def _decode_lines(chunk: Chunk) -> list[str]:
    """The chunk's lines as str; invalid UTF-8 is an error naming the line (no replacement)."""
    try:
        text = chunk.data.decode("utf-8")
    except UnicodeDecodeError as err:
        line_start = chunk.data.rfind(b"\n", 0, err.start) + 1
        line = chunk.first_line + chunk.data.count(b"\n", 0, err.start)
        raise InputError(
            f"{chunk.path}:{line}: invalid UTF-8 (byte 0x{chunk.data[err.start]:02x} at byte "
            f"{err.start - line_start + 1} of the line); re-encode the file as UTF-8"
        ) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


_ENCODER: Optional[ChunkEncoder] = None


def init_worker(batch_encoder, json_keys: list[str], eod: Optional[int], dtype: str,
                threads: int = 1, sentence_splitter: Optional[tuple[str, bool]] = None) -> None:
    """Pool initializer: one encoder per process; the tokenizer loads on its first chunk.

    `threads`: threads a multi-threaded tokenizer (the `tokenizers` library) may use in this
    process, unless RAYON_NUM_THREADS is set. Ctrl-C is left to the main process, which cancels
    the work and removes partial outputs; workers would otherwise each print a traceback.
    """
    global _ENCODER
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("RAYON_NUM_THREADS", str(max(1, threads)))
    _ENCODER = ChunkEncoder(batch_encoder, json_keys, eod, np.dtype(dtype), sentence_splitter)


def encode_chunk(chunk: Chunk) -> EncodedChunk:
    """Pool task: encode one chunk with this process's encoder."""
    assert _ENCODER is not None, "init_worker was not called"
    return _ENCODER(chunk)
