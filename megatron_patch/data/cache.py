"""On-disk cache of index arrays: built once by rank 0, memory-mapped by every rank.

The file name is an MD5 of a JSON description holding everything that changes the arrays
(data files, split, stage range, K, sequence length, samples, seed, alignment), so a different
configuration never reads a stale index. Memory-mapping means ranks on a node share one copy
of the pages. With several nodes the cache directory must be on a filesystem all ranks see.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable

import numpy as np
import torch

from megatron_patch import io

CACHE_FORMAT = "megatron-patch-index-v1"


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def cached_arrays(cache_dir: str, description: dict, names: tuple[str, ...],
                  build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Arrays `names` for `description`: rank 0 builds and saves on a miss, all ranks mmap.

    When torch.distributed is initialised every rank must call this in the same order
    (it holds a barrier).
    """
    text = json.dumps({"format": CACHE_FORMAT, **description}, sort_keys=True, indent=1)
    key = hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()
    kind = description.get("kind", "index")
    paths = {name: os.path.join(cache_dir, f"{key}-{kind}-{name}.npy") for name in names}
    building = not _distributed() or torch.distributed.get_rank() == 0
    failure = None
    if building and not all(os.path.isfile(p) for p in paths.values()):
        try:
            _build_and_save(cache_dir, key, kind, text, paths, build)
        except BaseException as err:  # tell the other ranks before raising, or they wait forever
            failure = err
    if _distributed():
        # Also the barrier: the others wait here until rank 0 has saved (or failed).
        message = [f"{type(failure).__name__}: {failure}" if failure is not None else None]
        torch.distributed.broadcast_object_list(message, src=0)
        if failure is None and message[0] is not None:
            raise RuntimeError(f"rank 0 failed to build the index cache in {cache_dir}: {message[0]}")
    if failure is not None:
        raise failure
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing:
        raise RuntimeError(
            f"index cache file {missing[0]} is missing after rank 0 built it: the cache directory "
            "must be on a filesystem that every rank sees (set cache_dir)"
        )
    return {name: np.load(path, mmap_mode="r", allow_pickle=False) for name, path in paths.items()}


def _build_and_save(cache_dir: str, key: str, kind: str, text: str, paths: dict[str, str],
                    build: Callable[[], dict[str, np.ndarray]]) -> None:
    arrays = build()
    for name, path in paths.items():  # atomic (megatron_patch/io.py): a reader never sees half a file
        io.save_array(path, arrays[name])
    io.write_text(os.path.join(cache_dir, f"{key}-{kind}-description.json"), text + "\n")
