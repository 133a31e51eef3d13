"""Model chunks, DDP wrapper, optimizer and LR schedule for one stage, all from megatron-core.

- model: one `PatchGPTModel` per virtual pipeline chunk on this rank's device, `Float16Module`
  when bf16 (bf16 weights and activations, fp32 loss out), wrapped in megatron-core's
  `DistributedDataParallel` (grads accumulated and reduced in fp32).
- precision: with bf16 `get_megatron_optimizer` keeps fp32 main weights and Adam state
  (`Float16OptimizerWithFloat16Params`, or the DistributedOptimizer's fp32 shards) and copies
  the updated weights back to bf16. The same on CPU and GPU; only the kernels differ.
- optimizer: `get_megatron_optimizer` (AdamW, decoupled weight decay off norms/biases,
  global-norm clipping, optionally the DistributedOptimizer).
- schedule: `OptimizerParamScheduler`, linear warmup then cosine/linear decay over the stage,
  between the stage's own learning rates (`Stage.lr`, `Stage.min_lr`).
- loss normalisation: `calculate_per_token_loss` — the loss function returns (sum, count)
  and `finalize_model_grads` divides the gradients by the global count of loss tokens, so
  the step follows the exact per-token mean over all microbatches and data-parallel ranks.
"""
import contextlib
from typing import List

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.distributed.finalize_model_grads import finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.transformer.module import Float16Module

from megatron_patch import device
from megatron_patch.compat import fix_torch_adam_distrib_optimizer
from megatron_patch.model import PatchGPTModel, build_model


def build_chunks(cfg, patch_size: int, dtype=torch.float32, target_decay: float = 1.0,
                 mean_dtype: str = "fp32") -> List[PatchGPTModel]:
    """Unwrapped model chunks of this rank (one unless virtual pipeline parallel), in `dtype`,
    on this rank's device. `patch_size`, `target_decay` and `mean_dtype` are the stage's
    (`Stage.model_args()`); they change no parameter or checkpoint key.

    With `use_cpu_initialization` megatron-core creates the weights on the CPU (identical at
    every TP size); they move to the GPU here, before checkpoint loading and the DDP wrapper
    (whose gradient buffers are allocated on the GPU). A no-op on CPU.
    """
    vp = cfg.parallel.virtual_pipeline_model_parallel_size
    stages = [None] if vp is None else list(range(vp))
    dev = device.current()
    return [
        build_model(cfg.model, cfg.parallel, patch_size=patch_size, vp_stage=s, params_dtype=dtype,
                    target_decay=target_decay, mean_dtype=mean_dtype).to(dev)
        for s in stages
    ]


def wrap_ddp(chunks, cfg, dtype) -> list:
    """Float16Module (bf16) + DDP around each chunk; configures the schedule hooks on the config."""
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=not cfg.parallel.grad_reduce_in_bf16,
        overlap_grad_reduce=cfg.parallel.overlap_grad_reduce,
        overlap_param_gather=cfg.parallel.overlap_param_gather,
        use_distributed_optimizer=cfg.optim.use_distributed_optimizer,
    )
    wrapped = []
    for i, chunk in enumerate(chunks):
        chunk.config.calculate_per_token_loss = True  # read by DDP at construction
        module = Float16Module(chunk.config, chunk) if dtype != torch.float32 else chunk
        wrapped.append(
            DistributedDataParallel(
                config=chunk.config, ddp_config=ddp_config, module=module,
                disable_bucketing=i > 0,  # later virtual chunks: one bucket, as Megatron-LM does
            )
        )
    return wrapped


@contextlib.contextmanager
def gathered_params(model: list, cfg):
    """With --overlap-param-gather the DistributedOptimizer's parameter all-gather finishes in the
    next forward pass; evaluation and checkpoint saves need the updated weights now, so the
    gather is completed here (as Megatron-LM does) and deferred again afterwards."""
    if not cfg.parallel.overlap_param_gather:
        yield
        return
    for chunk in model:
        chunk.disable_forward_pre_hook()  # also finishes the pending all-gather
    try:
        yield
    finally:
        for chunk in model:
            chunk.enable_forward_pre_hook()


def unwrap(model_chunk) -> PatchGPTModel:
    m = model_chunk
    while not isinstance(m, PatchGPTModel):
        m = m.module
    return m


def build_optimizer(ddp_chunks, cfg, dtype):
    # torch-Adam DistributedOptimizer checkpoint loading is broken in megatron-core 0.16.1 on any
    # device without TE/Apex (compat/distrib_optimizer.py); enable_cpu() covers only CPU runs.
    fix_torch_adam_distrib_optimizer()
    o = cfg.optim
    opt_cfg = OptimizerConfig(
        optimizer="adam",
        lr=o.lr,
        min_lr=o.min_lr,
        weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1,
        adam_beta2=o.adam_beta2,
        adam_eps=o.adam_eps,
        clip_grad=o.clip_grad,
        bf16=dtype == torch.bfloat16,
        params_dtype=dtype,
        use_distributed_optimizer=o.use_distributed_optimizer,
        decoupled_weight_decay=True,
    )
    return get_megatron_optimizer(opt_cfg, ddp_chunks)


def connect_schedule(ddp_chunks, optimizer, cfg) -> None:
    """Give megatron-core's pipeline schedule the callbacks it reads from the model config: loss
    scaling, the gradient finalisation (DP all-reduce, per-token normalisation, SP norm grads),
    the no-sync context for gradient accumulation and, with --overlap-grad-reduce, the bucket
    all-reduce it starts during the backward pass."""
    many = len(ddp_chunks) > 1
    for chunk in ddp_chunks:
        c = chunk.config
        assert c.calculate_per_token_loss  # set by wrap_ddp before DDP read it
        c.grad_scale_func = optimizer.scale_loss
        c.finalize_model_grads_func = finalize_model_grads
        c.no_sync_func = [m.no_sync for m in ddp_chunks] if many else ddp_chunks[0].no_sync
        if cfg.parallel.overlap_grad_reduce:
            c.grad_sync_func = [m.start_grad_sync for m in ddp_chunks] if many else ddp_chunks[0].start_grad_sync
        if not device.on_gpu():
            # gloo: batched isend/irecv mis-ordered the interleaved schedule's messages.
            c.batch_p2p_comm = False


def build_scheduler(optimizer, cfg, stage) -> OptimizerParamScheduler:
    """The stage's LR schedule: warmup to `stage.lr`, decay to `stage.min_lr` over its steps.

    megatron-core's scheduler takes each parameter group's own `max_lr`/`min_lr` over its
    arguments, and get_megatron_optimizer set those from --lr/--min-lr; the groups get the
    stage's values here, so a patch stage with its own learning rate really uses it."""
    o = cfg.optim
    assert stage.lr is not None and stage.min_lr is not None, f"{stage.name} is not a training stage"
    for group in optimizer.param_groups:
        group["max_lr"], group["min_lr"] = stage.lr, stage.min_lr
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=stage.lr,
        min_lr=stage.min_lr,
        lr_warmup_steps=stage.lr_warmup_iters,
        lr_decay_steps=stage.lr_decay_iters or stage.train_iters,
        lr_decay_style=o.lr_decay_style,
        start_wd=o.weight_decay,
        end_wd=o.weight_decay,
        wd_incr_steps=stage.train_iters,
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=True,
        override_opt_param_scheduler=False,
    )
    if stage.schedule_offset:  # --lr-schedule-scope run: this stage continues the run's schedule
        scheduler.step(increment=stage.schedule_offset)
    return scheduler
