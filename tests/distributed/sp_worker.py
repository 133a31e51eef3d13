"""TP=2 with sequence parallel against TP=1 (sdpa layer spec, fp32, a few Adam steps), built and
stepped by the product's own builders and train step.

Run by tests/distributed/test_sequence_parallel.py (2 processes, gloo, CPU):
    torchrun --nproc_per_node 2 tests/distributed/sp_worker.py --patch-sizes 1,4 --steps 8
In one launch and for each K: train at TP=1 (DP=2), then at TP=2 with sequence_parallel, from
the same weights (--use-cpu-initialization) and the same global batches. Gradients are compared in
the worker (after gathering the TP shards to full tensors), so only differences travel back.
"""
import argparse
import os
import tempfile

import torch
from megatron.core import parallel_state

from megatron_patch import distributed
from tests._torchrun import write_result
from tests.distributed.harness import StageHarness

PATCHES = 16


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


def flags(K, tp, steps, groups):
    out = ["--model", "tiny", "--transformer-impl", "sdpa", "--group-query-attention",
           "--num-query-groups", groups, "--seq-length", PATCHES, "--micro-batch-size", 1,
           "--global-batch-size", 2, "--lr", 1e-3, "--min-lr", 1e-3, "--lr-decay-style", "constant",
           "--lr-warmup-iters", 0, "--tensor-model-parallel-size", tp,
           "--use-cpu-initialization"]  # the same full weights at TP=1 and TP=2, also on a GPU
    if tp > 1:
        out.append("--sequence-parallel")
    if K == 1:
        out += ["--train-iters", steps]
    else:
        out += ["--train-iters", steps * K, "--patch-size", K, "--patch-fraction", 1,
                "--patch-batch-policy", "same_sequences"]
    return [str(x) for x in out]


def train(K, tp, steps, groups, save):
    h = StageHarness(flags(K, tp, steps, groups), os.path.join(save, f"K{K}tp{tp}"))
    model = h.chunks[0]
    assert model.config.sequence_parallel == (tp > 1) and h.stage.train_iters == steps
    seen_len = []
    model.decoder.layers[0].input_layernorm.register_forward_hook(
        lambda mod, inp, out: seen_len.append(inp[0].size(0)))
    named = list(model.named_parameters())
    partial = {}
    h._ready()
    finalize = model.config.finalize_model_grads_func

    def capture_then_finalize(*args, **kwargs):
        if not partial:  # this rank's own norm grads of step 0, before the SP/DP all-reduce
            partial.update({n: p.main_grad.clone() for n, p in named if "layernorm" in n})
        return finalize(*args, **kwargs)

    model.config.finalize_model_grads_func = capture_then_finalize
    losses, grads = [], {}
    for step in range(steps):
        losses.append(h.step().loss)
        if step in (0, steps - 1):  # main grads stay in the DDP buffers until the next step
            grads[step] = {n: full_tensor(p, p.main_grad) for n, p in named}
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
    save = tempfile.mkdtemp(prefix="sp-")
    result = {}
    for K in map(int, args.patch_sizes.split(",")):
        ref = train(K, 1, args.steps, args.num_query_groups, save)
        sp = train(K, 2, args.steps, args.num_query_groups, save)
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
