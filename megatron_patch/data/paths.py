"""`--data-path`: Megatron's blend syntax and the check that every prefix has its .bin/.idx.

    prefixes, weights = parse_blend(["0.7", "A", "0.3", "B"])   # ["A", "B"], [0.7, 0.3]
    check_data_paths(["0.7", "A", "0.3", "B"])                  # ValueError naming what is missing

The only module that reads the syntax or knows the two file extensions of a dataset.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

EXTENSIONS = (".bin", ".idx")


def parse_blend(data_path: Sequence[str]) -> tuple[list[str], Optional[list[float]]]:
    """["A"] / ["A", "B"] -> prefixes, None; ["0.7", "A", "0.3", "B"] -> prefixes, normalised weights."""
    items = [str(p).strip() for p in data_path]
    if not items:
        raise ValueError("--data-path is empty: give a prefix, or weight prefix pairs")
    weights = None
    if len(items) % 2 == 0:
        try:
            weights = [float(w) for w in items[0::2]]
        except ValueError:
            weights = None
    if weights is None:
        return items, None
    prefixes = items[1::2]
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"--data-path weights must be >= 0 with a positive sum, got {weights}")
    total = sum(weights)
    return prefixes, [w / total for w in weights]


def missing_files(prefix: str) -> list[str]:
    return [prefix + ext for ext in EXTENSIONS if not os.path.isfile(prefix + ext)]


INDEX_HEADER = b"MMIDIDX\x00\x00"  # the first bytes of every Megatron .idx file


def check_prefix(prefix: str, flag: str = "--data-path") -> None:
    missing = missing_files(prefix)
    if missing:
        raise ValueError(
            f"{flag} {prefix}: {' and '.join(missing)} not found. It takes the prefix without "
            ".bin/.idx (e.g. data/corpus_text_document, as written by tools/preprocess_data.py); "
            "check the path and that preprocessing finished"
        )
    with open(prefix + ".idx", "rb") as f:
        header = f.read(len(INDEX_HEADER))
    if header != INDEX_HEADER:
        raise ValueError(f"{flag} {prefix}: {prefix}.idx is not a Megatron index file (it does not start "
                         f"with {INDEX_HEADER!r}); write it again with tools/preprocess_data.py")


def check_data_paths(data_path: Sequence[str], flag: str = "--data-path") -> list[str]:
    """Every prefix of a blend must have PREFIX.bin and PREFIX.idx; returns the prefixes."""
    prefixes, _ = parse_blend(data_path)
    for prefix in prefixes:
        check_prefix(prefix, flag)
    return prefixes
