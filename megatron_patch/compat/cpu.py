"""Run megatron-core 0.16.1 on a machine without CUDA.

megatron-core hard-codes CUDA in many places: `torch.cuda.current_device()` used as a device,
`device="cuda"` in factory calls, `.cuda()` / `.to("cuda")`, `torch.cuda.synchronize()`, the
CUDA RNG tracker, and type-string asserts such as `param.grad.type() == 'torch.cuda.FloatTensor'`.
bf16 mixed precision adds more of the same and nothing else: `Float16OptimizerWithFloat16Params`
and the DistributedOptimizer sort parameters by `param.type()` into 'torch.cuda.BFloat16Tensor'
(fp32 main copy made) and 'torch.cuda.FloatTensor', and allocate their found-inf / scale
tensors with `device='cuda'`; `Float16Module` casts with `.bfloat16()` and checks
`isinstance(x, torch.FloatTensor)`, which holds on CPU. So `--bf16` on CPU runs megatron-core's
own mixed-precision code (bf16 weights and activations, fp32 main weights, fp32 loss) through
the same rewrites; only the kernels are CPU ones (tests/unit/training/test_bf16.py).
Rather than patching each call site, `enable_cpu()`:

1. pushes one `TorchFunctionMode` that rewrites every CUDA device argument to CPU, turns
   `Tensor.cuda()` into a no-op and makes `Tensor.type()` report the CUDA type name, so the
   asserts that expect GPU tensors pass for the equivalent CPU tensors;
2. points the few `torch.cuda` functions megatron-core calls directly (current_device,
   synchronize, RNG state) at their CPU equivalents;
3. applies the DistributedOptimizer checkpoint-load fix (see `distrib_optimizer.py`).

Cost: every torch call goes through the mode (~15% on a tiny model's step). It is never active
when `torch.cuda.is_available()`; call it before building models or process groups.
"""
import threading

import torch
from torch.overrides import TorchFunctionMode

_ACTIVE = False
_LOCK = threading.Lock()


def _is_cuda_device(dev) -> bool:
    if isinstance(dev, torch.device):
        return dev.type == "cuda"
    if isinstance(dev, str):
        return dev.startswith("cuda")
    # A bare int device index means a CUDA ordinal in torch's factory functions.
    return isinstance(dev, int) and not isinstance(dev, bool)


def _cpu_if_cuda(dev):
    return torch.device("cpu") if _is_cuda_device(dev) else dev


def _as_tuple(x):
    if x is None:
        return ()
    return (x,) if isinstance(x, torch.Tensor) else tuple(x)


def _backward_under_mode(mode, tensors, grad_tensors=None, retain_graph=None, create_graph=False,
                         inputs=None):
    """Run autograd with `mode` pushed. torch pops a mode while its own handler runs, so a plain
    `loss.backward()` would run every backward node (megatron's sequence-parallel collectives
    allocate with device=current_device() there) without the CUDA->CPU rewrite."""
    from torch.autograd import _make_grads, _tensor_or_tensors_to_tuple
    from torch.autograd.graph import _engine_run_backward

    tensors = _as_tuple(tensors)
    grads = _make_grads(tensors, _tensor_or_tensors_to_tuple(grad_tensors, len(tensors)),
                        is_grads_batched=False)
    with mode:
        _engine_run_backward(
            tensors, grads, create_graph if retain_graph is None else retain_graph, create_graph,
            _as_tuple(inputs), allow_unreachable=True, accumulate_grad=True,
        )


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA placements to CPU for every torch call made while it is active."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.backward:
            names = ("gradient", "retain_graph", "create_graph", "inputs")
            bound = dict(zip(names, args[1:]), **kwargs)
            return _backward_under_mode(
                self, args[0], bound.get("gradient"), bound.get("retain_graph"),
                bound.get("create_graph", False), bound.get("inputs"),
            )
        if func is torch.autograd.backward:
            return _backward_under_mode(self, *args, **{k: v for k, v in kwargs.items() if k != "grad_variables"})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            # 'torch.FloatTensor' -> 'torch.cuda.FloatTensor' (megatron-core asserts on these).
            return name.replace("torch.", "torch.cuda.", 1) if ".cuda." not in name else name
        if "device" in kwargs:
            kwargs["device"] = _cpu_if_cuda(kwargs["device"])
        if func is torch.Tensor.to and len(args) > 1:
            args = (args[0], _cpu_if_cuda(args[1])) + tuple(args[2:])
        return func(*args, **kwargs)


def _cpu_rng_get(device="cuda", clone=False, graph_safe=False):
    state = torch.get_rng_state()
    return state.clone() if clone else state


def _cpu_rng_set(new_state, device=-1, graph_safe=False):
    torch.set_rng_state(new_state)


def cpu_compat_active() -> bool:
    return _ACTIVE


def enable_cpu() -> bool:
    """Make megatron-core usable without CUDA. Returns True if the shims were (or are) active.

    Idempotent. Does nothing and returns False when CUDA is available.
    """
    global _ACTIVE
    if torch.cuda.is_available():
        return False
    with _LOCK:
        if _ACTIVE:
            return True
        from megatron_patch.compat.versions import check_versions

        check_versions()
        _CudaToCpuMode().__enter__()  # stays pushed for the life of the process

        torch.cuda.current_device = lambda: 0
        torch.cuda.synchronize = lambda device=None: None
        torch.cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
        torch.cuda.set_rng_state = lambda new_state, device="cuda": torch.set_rng_state(new_state)
        torch.cuda.manual_seed = lambda seed: torch.manual_seed(seed)
        torch.cuda.empty_cache = lambda: None

        from megatron.core.tensor_parallel import random as mcore_random

        mcore_random._get_cuda_rng_state = _cpu_rng_get
        mcore_random._set_cuda_rng_state = _cpu_rng_set

        from megatron_patch.compat.distrib_optimizer import fix_torch_adam_distrib_optimizer

        fix_torch_adam_distrib_optimizer()
        _ACTIVE = True
    return True
