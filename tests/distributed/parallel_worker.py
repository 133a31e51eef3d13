"""Train a tiny PatchGPTModel for a few optimizer steps at one TP/PP/DP layout; report losses.

Run by tests/test_parallel.py, e.g.:
    torchrun --nproc_per_node 4 tests/distributed/parallel_worker.py --tp 2 --pp 2 --patch-sizes 1,4
Every layout sees the same global batches and starts from the same weights
(use_cpu_initialization), so in fp32 the losses must agree with TP=1 to ~1e-6.
"""
import argparse
import functools

import torch
import os

from megatron.core import dist_checkpointing, parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_patch import distributed
from megatron_patch.config import ParallelConfig, get_preset, validate_for
from megatron_patch.model import build_model
from tests._torchrun import write_result

GLOBAL_BATCH, MICRO_BATCH, PATCHES = 8, 2, 16


def global_batch(step, K, vocab):
    """The same [GLOBAL_BATCH, (T+1)*K] token block for every layout."""
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randint(0, vocab, (GLOBAL_BATCH, (PATCHES + 1) * K), generator=g)


def forward_step(data_iterator, model, K):
    seq = next(data_iterator)
    tokens, labels = seq[:, : PATCHES * K], seq[:, K:]
    output = model(tokens, None, None, labels=labels)

    def loss_func(out):
        loss = out.float().mean()
        # clone: the schedule divides the returned loss by num_microbatches in place
        return loss, {"loss": loss.detach().clone()}

    return output, loss_func


def train(K, args, par, cfg):
    distributed.set_seed(1234)
    model = build_model(cfg, par, patch_size=K)
    # Pipeline stages build only their layers, so initial weights differ from PP=1; every
    # layout therefore starts from one saved initialisation (which also exercises resharding).
    init_dir = f"{args.init_dir}/K{K}"
    if args.save_init:
        os.makedirs(init_dir, exist_ok=True)
        dist_checkpointing.save(model.sharded_state_dict(), init_dir)
    else:
        model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), init_dir))
    ddp_cfg = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, use_distributed_optimizer=args.dist_opt
    )
    ddp = DistributedDataParallel(model.config, ddp_cfg, model)
    opt = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam", lr=3e-3, weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95,
            clip_grad=1.0, bf16=False, fp16=False, params_dtype=torch.float32,
            use_distributed_optimizer=args.dist_opt,
        ),
        [ddp],
    )
    model.config.finalize_model_grads_func = finalize_model_grads
    model.config.no_sync_func = ddp.no_sync
    dp = parallel_state.get_data_parallel_world_size()
    dp_rank = parallel_state.get_data_parallel_rank()
    per_rank = GLOBAL_BATCH // dp
    num_micro = per_rank // MICRO_BATCH
    losses, grad_norms = [], []
    for step in range(args.steps):
        batch = global_batch(step, K, cfg.vocab_size)[dp_rank * per_rank : (dp_rank + 1) * per_rank]
        micro = iter(batch.split(MICRO_BATCH))
        ddp.zero_grad_buffer()
        opt.zero_grad()
        out = get_forward_backward_func()(
            forward_step_func=functools.partial(forward_step, K=K),
            data_iterator=micro,
            model=[ddp],
            num_microbatches=num_micro,
            seq_length=PATCHES,  # the transformer's length is T patches, not T*K tokens
            micro_batch_size=MICRO_BATCH,
            forward_only=False,
        )
        _, grad_norm, _ = opt.step()
        loss = torch.zeros(1)
        if parallel_state.is_pipeline_last_stage():
            loss += torch.stack([o["loss"] for o in out]).mean()
            torch.distributed.all_reduce(loss, group=parallel_state.get_data_parallel_group())
            loss /= dp
        # Every rank learns the last stage's loss (a sum over the pipeline group: others hold 0).
        torch.distributed.all_reduce(loss, group=parallel_state.get_pipeline_model_parallel_group())
        losses.append(loss.item())
        grad_norms.append(float(grad_norm))
    return {"losses": losses, "grad_norms": grad_norms}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--dist-opt", action="store_true")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--patch-sizes", default="1,4")
    ap.add_argument("--init-dir", required=True, help="initial weights: written with --save-init, else read")
    ap.add_argument("--save-init", action="store_true")
    args = ap.parse_args()
    par = ParallelConfig(tensor_model_parallel_size=args.tp, pipeline_model_parallel_size=args.pp)
    cfg = get_preset("tiny")
    distributed.initialize(par, seed=1234)
    result = {}
    for K in map(int, args.patch_sizes.split(",")):
        validate_for(cfg, par, K, PATCHES * K)
        result[str(K)] = train(K, args, par, cfg)
    if torch.distributed.get_rank() == 0:
        write_result(result)
    distributed.destroy()


if __name__ == "__main__":
    main()
