"""TP=2 with sequence parallel against TP=1, sdpa layer spec, fp32, a few Adam steps.

Run by tests/test_sequence_parallel.py (2 processes, gloo, CPU):
    torchrun --nproc_per_node 2 tests/distributed/sp_worker.py --patch-sizes 1,4 --steps 8
In one launch and for each K: train at TP=1 (the two ranks are identical data-parallel
replicas), then at TP=2 with sequence_parallel=True, from the same weights
(use_cpu_initialization) and the same batches. Gradients are compared in the worker (after
gathering the TP shards to full tensors) so only per-parameter differences travel back.
"""
import argparse

import torch
from megatron.core import parallel_state
from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,
)
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

from megatron_patch import distributed
from megatron_patch.config import ParallelConfig, get_preset, validate_for
from megatron_patch.model import build_model
from tests._torchrun import write_result

BATCH, PATCHES = 2, 16


def batch(step, K, vocab):
    g = torch.Generator().manual_seed(100 + step)
    seq = torch.randint(0, vocab, (BATCH, (PATCHES + 1) * K), generator=g)
    return seq[:, : PATCHES * K], seq[:, K:]


def full_tensor(param, value):
    """`value` (this rank's shard of `param`) gathered to the TP=1 layout."""
    if not getattr(param, "tensor_model_parallel", False):
        return value.clone()
    group = parallel_state.get_tensor_model_parallel_group()
    world = group.size()
    dim, stride = param.partition_dim, param.partition_stride
    # Rank r holds master chunks r, r + world, ... (stride chunks; stride 2 = SwiGLU [gate, up]).
    pieces = []
    for chunk in value.chunk(stride, dim=dim):
        gathered = [torch.empty_like(chunk) for _ in range(world)]
        torch.distributed.all_gather(gathered, chunk.contiguous(), group=group)
        pieces.extend(gathered)
    return torch.cat(pieces, dim=dim)


def train(K, tp, cfg, steps):
    par = ParallelConfig(tensor_model_parallel_size=tp, sequence_parallel=tp > 1)
    validate_for(cfg, par, K, PATCHES * K)
    distributed.initialize(par, seed=1234)
    model = build_model(cfg, par, patch_size=K)
    assert model.config.sequence_parallel == (tp > 1)
    seen_len = []
    model.decoder.layers[0].input_layernorm.register_forward_hook(
        lambda mod, inp, out: seen_len.append(inp[0].size(0))
    )
    ddp = DistributedDataParallel(
        model.config, DistributedDataParallelConfig(grad_reduce_in_fp32=True), model
    )
    opt = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam", lr=1e-3, weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95,
            clip_grad=1.0, bf16=False, fp16=False, params_dtype=torch.float32,
        ),
        [ddp],
    )
    named = list(model.named_parameters())
    losses, grads, partial = [], {}, {}
    for step in range(steps):
        tokens, labels = batch(step, K, cfg.vocab_size)
        ddp.zero_grad_buffer()
        opt.zero_grad()
        loss = ddp(tokens, None, None, labels=labels).mean()
        # A plain backward: SP's backward gathers allocate on current_device(), which the
        # CPU compat layer must keep rewriting inside autograd (regression test for that).
        loss.backward()
        if step == 0:  # this rank's own norm grads, before the SP all-reduce
            partial = {n: p.main_grad.clone() for n, p in named if "layernorm" in n}
        finalize_model_grads([ddp])
        if step in (0, steps - 1):
            grads[step] = {n: full_tensor(p, p.main_grad) for n, p in named}
        opt.step()
        losses.append(loss.item())
    weights = {n: full_tensor(p, p.detach()) for n, p in named}
    return {"losses": losses, "grads": grads, "partial": partial, "weights": weights,
            "norm_input_len": seen_len[0]}


def max_diffs(got: dict, want: dict) -> dict:
    """name -> [max |got - want|, max |want|] over the names in `got`."""
    return {n: [float((got[n] - want[n]).abs().max()), float(want[n].abs().max())] for n in got}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--patch-sizes", default="1,4")
    ap.add_argument("--num-query-groups", type=int, default=2)
    args = ap.parse_args()
    cfg = get_preset("tiny", transformer_impl="sdpa", num_query_groups=args.num_query_groups)
    result = {}
    for K in map(int, args.patch_sizes.split(",")):
        ref = train(K, 1, cfg, args.steps)
        sp = train(K, 2, cfg, args.steps)
        last = args.steps - 1
        result[str(K)] = {
            "tp1_losses": ref["losses"],
            "tp2sp_losses": sp["losses"],
            "norm_input_len": [ref["norm_input_len"], sp["norm_input_len"]],
            "grad_diff_first": max_diffs(sp["grads"][0], ref["grads"][0]),
            "grad_diff_last": max_diffs(sp["grads"][last], ref["grads"][last]),
            "weight_diff": max_diffs(sp["weights"], ref["weights"]),
            # Before finalize_model_grads each rank's norm grad covers only its sequence half.
            "partial_norm_grad_diff": max_diffs(sp["partial"], ref["grads"][0]),
        }
    if torch.distributed.get_rank() == 0:
        write_result(result)
    distributed.destroy()


if __name__ == "__main__":
    main()
