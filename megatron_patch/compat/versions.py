"""The versions the shims in this package were written against, checked before any is applied.

The shims replace megatron-core internals by name (functions of its RNG tracker, methods of its
DistributedOptimizer, a module-level queue of its checkpoint writer), so they are only correct
for the release they were read from. A different megatron-core may have moved or fixed those
internals: then the shims must be re-checked rather than applied blindly.
"""
import importlib.metadata

MEGATRON_CORE = "0.16.1"
"""The megatron-core release the shims patch."""
MIN_TORCH = (2, 6)
"""torch.load defaults to weights_only=True from 2.6: checkpoint metadata is unpickled safely."""


class VersionMismatch(RuntimeError):
    """An installed version the compatibility shims were not written for."""


def _release(version: str) -> tuple:
    return tuple(int(p) for p in version.split("+")[0].split(".")[:2] if p.isdigit())


def check_versions() -> None:
    """Raise VersionMismatch, with what to do, unless megatron-core and torch are the tested ones."""
    import torch

    found = importlib.metadata.version("megatron-core")
    if found != MEGATRON_CORE:
        raise VersionMismatch(
            f"megatron-core {found} is installed, but megatron_patch/compat/ patches megatron-core "
            f"{MEGATRON_CORE} internals (CPU support, DistributedOptimizer checkpoint loading, "
            f"the checkpoint writer's queue). Install the tested release: pip install "
            f"megatron-core=={MEGATRON_CORE}; or, to move to {found}, re-check each shim in "
            "megatron_patch/compat/ against that release and update MEGATRON_CORE in versions.py"
        )
    if _release(torch.__version__) < MIN_TORCH:
        raise VersionMismatch(
            f"torch {torch.__version__} is too old: checkpoints are read with torch.load, which "
            f"defaults to weights_only=True only from torch {'.'.join(map(str, MIN_TORCH))}; "
            "upgrade torch"
        )
