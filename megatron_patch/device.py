"""The one place that decides the device, the compute dtype and the collective backend.

    from megatron_patch import device
    device.current()              # torch.device("cuda", LOCAL_RANK's GPU) or cpu
    device.compute_dtype(None)    # bf16 on a GPU, fp32 on a CPU; True/False force bf16/fp32

Everything else asks here instead of calling `torch.cuda.is_available()` itself, so a CPU
run and a GPU run differ only in what this module answers.
"""
from typing import Optional

import torch


def on_gpu() -> bool:
    return torch.cuda.is_available()


def current() -> torch.device:
    """The device this rank computes on."""
    if on_gpu():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def backend() -> str:
    """torch.distributed backend: NCCL between GPUs, gloo on CPU."""
    return "nccl" if on_gpu() else "gloo"


def compute_dtype(bf16: Optional[bool]) -> torch.dtype:
    """bf16 parameters and activations (`True`), fp32 (`False`); None: bf16 on GPU, fp32 on CPU.

    bf16 is megatron-core's mixed precision on either device (Float16Module, fp32 main weights
    in the optimizer, fp32 loss); on a CPU it runs through compat/cpu.py with CPU kernels.
    """
    if bf16 is None:
        bf16 = on_gpu()
    return torch.bfloat16 if bf16 else torch.float32


def synchronize() -> None:
    """Wait for queued kernels (a host-device sync; only for timing)."""
    if on_gpu():
        torch.cuda.synchronize()


def max_memory_gib() -> float:
    """Peak GPU memory allocated by this process, or its resident memory on CPU."""
    if on_gpu():
        return torch.cuda.max_memory_allocated() / 2**30
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def reset_peak_memory() -> None:
    if on_gpu():
        torch.cuda.reset_peak_memory_stats()


def empty_cache() -> None:
    """Return cached GPU memory between stages (no-op on CPU)."""
    if on_gpu():
        import gc

        gc.collect()  # megatron modules hold reference cycles
        torch.cuda.empty_cache()
