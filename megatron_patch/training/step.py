"""One optimizer step and one evaluation, through megatron-core's pipeline schedules.

The loss function returns (masked loss sum, loss-token count); with
`calculate_per_token_loss` megatron-core divides the gradients by the global token count, so the
update is the exact per-token mean over every micro-batch and data-parallel rank. The reported
loss is reduced the same way (sums over micro-batches, DP and the pipeline) and is therefore
identical at every TP/PP/DP layout. The schedule exchanges [T, mbs, h] between pipeline stages,
T = positions (patches), not T*K tokens.
"""
import contextlib
import math
from dataclasses import dataclass
from functools import partial
from typing import List

import torch
from megatron.core import parallel_state
from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_patch import device
from megatron_patch.training.builders import unwrap


def _loss_func(loss_mask: torch.Tensor, per_target_loss: torch.Tensor):
    mask = loss_mask.reshape(-1).float()
    total = (per_target_loss.reshape(-1).float() * mask).sum()
    count = mask.sum()
    return total, count.to(torch.int), {"loss": torch.stack([total.detach(), count])}


def forward_step(data_iterator, model):
    batch = next(data_iterator)
    # attention_mask=None: causal attention; per-target losses [b, T*K] come back on the last stage.
    out = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    return out, partial(_loss_func, batch["loss_mask"])


def _reduce_loss(outputs: List[dict]):
    """(loss sum, token count) over everything the step saw, on every rank (a host sync)."""
    acc = torch.zeros(2, dtype=torch.float64, device=device.current())
    for out in outputs:  # non-empty only on the last pipeline stage
        acc += out["loss"].to(acc)
    torch.distributed.all_reduce(acc, group=parallel_state.get_data_parallel_group())
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        torch.distributed.all_reduce(acc, group=parallel_state.get_pipeline_model_parallel_group())
    total, count = acc.tolist()
    return total, count


def _run_schedule(model: list, batches: List[dict], stage, forward_only: bool):
    data = [iter(batches) for _ in model] if len(model) > 1 else iter(batches)
    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=data,
        model=model if len(model) > 1 else model[0],
        num_microbatches=len(batches),
        seq_length=stage.positions,
        micro_batch_size=stage.micro_batch_size,
        forward_only=forward_only,
    )


@dataclass
class StepResult:
    loss: float
    """Mean per-token loss of the step (every rank the same)."""
    grad_norm: float
    """Global gradient norm before clipping."""
    lr: float
    """Learning rate the step used."""
    applied: bool
    """False when the update was withheld: the loss or the gradient norm was not finite."""


def _all_ranks_finite(*values: float) -> bool:
    """True only if every value is finite on every rank (one scalar all-reduce)."""
    bad = torch.tensor([0.0 if all(math.isfinite(v) for v in values) else 1.0], device=device.current())
    torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
    return bad.item() == 0.0


@torch.no_grad()
def _clip(optimizer, max_norm: float, total_norm: float) -> None:
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        params = opt.get_parameters()
        if params and not getattr(opt, "is_stub_optimizer", False):
            clip_grad_by_total_norm_fp32(
                params, max_norm=max_norm, total_norm=total_norm,
                use_decoupled_grad=opt.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8,
            )


def train_step(model: list, optimizer, scheduler, batches: List[dict], stage) -> StepResult:
    """Forward/backward over the step's micro-batches, then the update unless it is not finite.

    The update follows megatron-core's optimizer step (prepare grads, global norm, clip, inner
    step), with one check in between: if the loss or the gradient norm is NaN/Inf on any rank,
    no rank applies the update and the LR schedule does not advance (`applied=False`).
    """
    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    lr = optimizer.param_groups[0]["lr"]
    outputs = _run_schedule(model, batches, stage, forward_only=False)
    total, count = _reduce_loss(outputs)
    loss = total / max(count, 1.0)
    overflow = optimizer.prepare_grads()  # only fp16 loss scaling reports an overflow
    grad_norm = float(optimizer.get_grad_norm() or 0.0)
    if overflow or not _all_ranks_finite(loss, grad_norm):
        return StepResult(loss, grad_norm, lr, applied=False)
    clip = optimizer.config.clip_grad
    if clip > 0:
        _clip(optimizer, clip, grad_norm)
    if optimizer.step_with_ready_grads():
        scheduler.step(increment=1)
    return StepResult(loss, grad_norm, lr, applied=True)


@contextlib.contextmanager
def token_level(model: list):
    """Run the (same) weights as a K = 1 model: token-level validation of a patch model."""
    chunks = [unwrap(c) for c in model]
    saved = [c.patch_size for c in chunks]
    for c in chunks:
        c.patch_size = 1
    try:
        yield
    finally:
        for c, k in zip(chunks, saved):
            c.patch_size = k


@torch.no_grad()
def evaluate(model: list, batch_list: List[List[dict]], stage) -> dict:
    """Mean per-token loss and perplexity over `batch_list` (one list of micro-batches per step)."""
    for chunk in model:
        chunk.eval()
    total, count = 0.0, 0
    try:
        for batches in batch_list:
            outputs = _run_schedule(model, batches, stage, forward_only=True)
            t, n = _reduce_loss(outputs)
            total, count = total + t, count + int(n)
    finally:
        for chunk in model:
            chunk.train()
    loss = total / max(count, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": count}

