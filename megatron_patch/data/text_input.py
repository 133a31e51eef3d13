"""Input files for preprocessing and tokenizer training: discovery, format, chunked reading.

Inputs are JSON Lines (one object per line, text under --json-keys) or plain text (one document
per line), either optionally gzip-compressed. They are read in binary chunks that end at a line
boundary, so the reader never iterates lines in Python and workers receive whole documents
together with the line number of the chunk's first line (for error messages).
"""
from __future__ import annotations

import glob
import gzip
import os
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Iterator

FORMATS = ("jsonl", "text")
_EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".txt": "text", ".text": "text"}


class InputError(ValueError):
    """Bad input data or paths; the message names the file (and line) and what to fix."""


@dataclass(frozen=True)
class InputFile:
    """One input file: its path, format ("jsonl" or "text") and size on disk."""

    path: str
    format: str
    size: int


@dataclass(frozen=True)
class Chunk:
    """Whole lines of one file: `data` starts at 1-based line `first_line`."""

    path: str
    format: str
    first_line: int
    data: bytes


def _format_of(path: str, input_format: str) -> str:
    if input_format != "auto":
        return input_format
    name = path[:-3] if path.endswith(".gz") else path
    fmt = _EXTENSIONS.get(os.path.splitext(name)[1].lower())
    if fmt is None:
        raise InputError(
            f"{path}: cannot tell the format from the extension (.jsonl/.json or .txt, "
            "optionally .gz); pass --input-format jsonl or --input-format text"
        )
    return fmt


def expand_inputs(patterns: list[str], input_format: str = "auto") -> list[InputFile]:
    """Resolve files and globs in the order given (each glob sorted); InputError if any is missing."""
    if input_format not in ("auto",) + FORMATS:
        raise InputError(f"--input-format must be auto, jsonl or text, got {input_format!r}")
    files: list[InputFile] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            paths = sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
            if not paths:
                raise InputError(f"--input {pattern!r}: no file matches this pattern")
        elif os.path.isfile(pattern):
            paths = [pattern]
        else:
            raise InputError(f"--input {pattern}: no such file")
        for path in paths:
            files.append(InputFile(path, _format_of(path, input_format), os.path.getsize(path)))
    if not files:
        raise InputError("no input files given (--input)")
    return files


class _Source:
    """A file opened for binary reading (decompressed if .gz) that knows its on-disk position."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._raw: BinaryIO = open(path, "rb")
        self._stream: BinaryIO = (
            gzip.GzipFile(fileobj=self._raw, mode="rb") if path.endswith(".gz") else self._raw
        )

    def read(self, size: int) -> bytes:
        try:
            return self._stream.read(size)
        except (OSError, EOFError, zlib.error) as err:
            raise InputError(f"{self.path}: cannot read ({err})") from err

    def position(self) -> int:
        """Bytes of the file on disk consumed so far (compressed bytes for .gz)."""
        return self._raw.tell()

    def close(self) -> None:
        self._stream.close()
        self._raw.close()


def iter_chunks(files: list[InputFile], chunk_bytes: int = 1 << 20) -> Iterator[tuple[Chunk, int]]:
    """Yield (chunk of whole lines, on-disk bytes consumed since the previous chunk).

    A line longer than chunk_bytes is kept whole (memory is bounded by the longest document).
    """
    for file in files:
        source = _Source(file.path)
        try:
            line, consumed, parts = 1, 0, []
            while True:
                data = source.read(chunk_bytes)
                if not data:
                    break
                cut = data.rfind(b"\n")
                if cut < 0:
                    parts.append(data)
                    continue
                parts.append(data[: cut + 1])
                block = b"".join(parts)
                parts = [data[cut + 1:]]
                position = source.position()
                yield Chunk(file.path, file.format, line, block), position - consumed
                consumed = position
                line += block.count(b"\n")
            rest = b"".join(parts)
            position = source.position()
            if rest:
                yield Chunk(file.path, file.format, line, rest), position - consumed
            elif position > consumed:
                yield Chunk(file.path, file.format, line, b""), position - consumed
        finally:
            source.close()
