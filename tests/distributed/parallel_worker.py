"""Train a tiny model for a few optimizer steps at one TP/PP/DP layout through the product's own
builders and train step; report losses and gradient norms.

Run by tests/distributed/test_parallel.py, e.g.:
    torchrun --nproc_per_node 4 tests/distributed/parallel_worker.py --tp 2 --pp 2 --patch-sizes 1,4
Every layout sees the same global batches (mock data) and starts from the same saved weights,
so in fp32 the losses must agree with TP=1 to ~1e-6.
"""
import argparse
import os
import tempfile

import torch

from megatron_patch import distributed
from tests._torchrun import write_result
from tests.distributed.harness import StageHarness, same_init

STEPS, GLOBAL_BATCH, MICRO_BATCH, PATCHES = 5, 8, 2, 16


def stage_flags(K: int) -> list:
    """K=1: a token stage of STEPS steps. K>1: a patch stage of STEPS steps of the same positions
    and sequences (the whole budget at patch level, same_sequences: N/K steps)."""
    common = ["--model", "tiny", "--seq-length", PATCHES, "--micro-batch-size", MICRO_BATCH,
              "--global-batch-size", GLOBAL_BATCH, "--lr", 3e-3, "--min-lr", 3e-3,
              "--lr-decay-style", "constant", "--lr-warmup-iters", 0, "--clip-grad", 1.0, "--seed", 1234]
    if K == 1:
        return [*common, "--train-iters", STEPS]
    return [*common, "--train-iters", STEPS * K, "--patch-size", K, "--patch-fraction", 1,
            "--patch-batch-policy", "same_sequences"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--dist-opt", action="store_true")
    ap.add_argument("--overlap", action="store_true",
                    help="--overlap-grad-reduce (+ --overlap-param-gather with --dist-opt)")
    ap.add_argument("--patch-sizes", default="1,4")
    ap.add_argument("--init-dir", required=True, help="initial weights: written with --save-init, else read")
    ap.add_argument("--save-init", action="store_true")
    args = ap.parse_args()
    layout = ["--tensor-model-parallel-size", args.tp, "--pipeline-model-parallel-size", args.pp]
    if args.dist_opt:
        layout.append("--use-distributed-optimizer")
    if args.overlap:
        layout += ["--overlap-grad-reduce"] + (["--overlap-param-gather"] if args.dist_opt else [])
    save = tempfile.mkdtemp(prefix="parallel-")
    result = {}
    for K in map(int, args.patch_sizes.split(",")):
        h = StageHarness([str(x) for x in stage_flags(K) + layout], os.path.join(save, f"K{K}"))
        assert h.stage.patch_size == K and h.stage.train_iters == STEPS and h.stage.positions == PATCHES
        same_init(h, os.path.join(args.init_dir, f"K{K}"), args.save_init)
        steps = [h.step() for _ in range(STEPS)]
        result[str(K)] = {"losses": [s.loss for s in steps], "grad_norms": [s.grad_norm for s in steps]}
    if torch.distributed.get_rank() == 0:
        write_result(result)
    distributed.destroy()


if __name__ == "__main__":
    main()
