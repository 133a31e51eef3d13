"""DistributedOptimizer checkpoint loading with plain torch Adam (no TE/Apex), megatron-core 0.16.1.

Filled in with the trainer's resume tests; see DESIGN.md for the four known failures.
"""


def fix_torch_adam_distrib_optimizer() -> None:
    """Idempotent; safe to call on CPU and GPU."""
    return None
