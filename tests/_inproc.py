"""A world-of-one megatron-core process group for single-process tests."""
import contextlib

from megatron_patch import distributed
from megatron_patch.config import ParallelConfig


@contextlib.contextmanager
def world_of_one(seed: int = 1234):
    distributed.initialize(ParallelConfig(), seed=seed)
    try:
        yield
    finally:
        distributed.destroy()
