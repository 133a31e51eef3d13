"""Synchronous dist_checkpointing saves without megatron-core's multiprocessing Manager.

megatron-core 0.16.1's torch_dist writer (`dist_checkpointing.strategies.filesystem_async`)
hands its write results through a queue made by a *spawned* `multiprocessing.Manager`: a second
Python interpreter that imports the running program, even for synchronous saves, where producer
and consumer are this very process. That costs about 1 s per save on a small machine (measured:
1.4 s -> 0.4 s per save of the CPU demo's model). The trainer only saves synchronously, so a
plain in-process queue carries the results; async saves would need the original.
"""
import queue


def use_in_process_results_queue() -> None:
    """Install an in-process results queue unless one exists (idempotent; call before a save)."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if getattr(filesystem_async, "_results_queue", None) is None:
        from megatron_patch.compat.versions import check_versions

        check_versions()
        filesystem_async._results_queue = queue.Queue()
