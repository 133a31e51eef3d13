"""Process groups and seeds: torchrun environment in, megatron-core parallel state out.

On a machine without CUDA this enables `megatron_patch.compat.enable_cpu()` and uses gloo;
with CUDA it uses NCCL and one GPU per local rank. A plain `python script.py` (no torchrun)
runs as a world of one.
"""
import os

import torch
from megatron.core import parallel_state, tensor_parallel

from megatron_patch.compat import enable_cpu


def initialize(parallel, seed: int = 1234, timeout_minutes: int = 10) -> None:
    """Init torch.distributed (if needed) and megatron-core model-parallel groups for `parallel`."""
    import datetime

    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        enable_cpu()
    if not torch.distributed.is_initialized():
        backend = "nccl" if on_gpu else "gloo"
        timeout = datetime.timedelta(minutes=timeout_minutes)
        if on_gpu:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        if "RANK" not in os.environ:
            # Not launched by torchrun: a world of one with an in-process store (no TCP port
            # to pick, so concurrent single-process runs cannot collide).
            os.environ.setdefault("LOCAL_RANK", "0")
            torch.distributed.init_process_group(
                backend=backend, store=torch.distributed.HashStore(), rank=0, world_size=1,
                timeout=timeout,
            )
        else:
            torch.distributed.init_process_group(backend=backend, timeout=timeout)
    world = torch.distributed.get_world_size()
    tp, pp = parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size
    if world % (tp * pp):
        raise ValueError(
            f"world size {world} is not divisible by TP x PP = {tp} x {pp}; "
            "launch a multiple of TP*PP processes (the rest is data parallel)"
        )
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
    )
    set_seed(seed)


def set_seed(seed: int) -> None:
    """Seed python-side torch RNG and megatron's model-parallel RNG tracker."""
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def destroy() -> None:
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
