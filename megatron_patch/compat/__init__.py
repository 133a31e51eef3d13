"""Compatibility shims for running real megatron-core where it assumes a GPU or TE/Apex.

- `enable_cpu()`: lets megatron-core 0.16.1 run on a machine without CUDA (gloo; fp32, or bf16
  through megatron-core's own mixed-precision path), so the tensor/pipeline/data-parallel tests
  and the bf16 checks run in CI. A no-op when CUDA is available.
- `fix_torch_adam_distrib_optimizer()`: repairs DistributedOptimizer checkpoint loading with
  plain `torch.optim.AdamW` (always the case without TE/Apex, on CPU or GPU).
- `use_in_process_results_queue()`: synchronous dist_checkpointing saves without the spawned
  multiprocessing Manager megatron-core starts for them (about 1 s per save).

Everything that patches megatron-core or torch lives in this package and nowhere else. Each shim
first checks that the installed megatron-core is the release it was written for (versions.py) and
stops with what to do otherwise.
"""
from megatron_patch.compat.cpu import cpu_compat_active, enable_cpu
from megatron_patch.compat.checkpoint_queue import use_in_process_results_queue
from megatron_patch.compat.distrib_optimizer import fix_torch_adam_distrib_optimizer
from megatron_patch.compat.versions import MEGATRON_CORE, VersionMismatch, check_versions

__all__ = ["enable_cpu", "cpu_compat_active", "fix_torch_adam_distrib_optimizer",
           "use_in_process_results_queue", "check_versions", "VersionMismatch", "MEGATRON_CORE"]
