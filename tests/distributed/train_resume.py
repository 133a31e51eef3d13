"""Kill-and-resume (2 processes): a run interrupted between checkpoints and resumed with --load
reproduces the uninterrupted run's losses step for step, with the plain optimizer and with the
DistributedOptimizer across the patch -> token hand-over (its torch-Adam checkpoint loading is
repaired by megatron_patch.compat), and a DistributedOptimizer checkpoint saved at DP=2 resumes at
TP=2.

The "kill" is an exception raised in place of the train step after a given stage step, past the
last checkpoint, so the progress since then is lost exactly as with SIGKILL (the hook lives here,
in the test, around the product's own train step). Writes
{"plain"|"distopt": {"A": losses, "B": losses, ...}}; losses map "stage:step" to the logged loss.
"""
import json
import os
import shutil
import sys
import warnings

warnings.filterwarnings("ignore")


class Killed(RuntimeError):
    """Stands for SIGKILL between two checkpoints."""


def losses(run_dir, kind="train"):
    from megatron_patch.training.metrics import read_metrics

    key = "loss" if kind == "train" else "val_loss"
    return {f"{r['stage']}:{r['step']}": r[key] for r in read_metrics(run_dir) if r["kind"] == kind}


def run_until_killed(cfg, stage_name, step):
    """Train `cfg` and die right after `stage_name` step `step` (before anything else happens)."""
    from megatron_patch.training import run, trainer

    real, calls = trainer.train_step, {"n": 0}

    def step_or_die(model, optimizer, scheduler, batches, stage):
        if stage.name == stage_name:
            if calls["n"] == step:
                raise Killed(f"killed after {stage_name} step {step}")
            calls["n"] += 1
        return real(model, optimizer, scheduler, batches, stage)

    trainer.train_step = step_or_die
    try:
        run(cfg)
    except Killed:
        pass
    finally:
        trainer.train_step = real


def main():
    import torch

    from megatron_patch import distributed
    from megatron_patch.training import parse_config, resolve, run
    from tests._torchrun import write_result
    from tests.distributed.train_common import tiny_flags

    tmp, prefix, tok = sys.argv[1:4]  # the corpus is written by the test before the launch
    rank = int(os.environ["RANK"])

    def cfg(save, load=None, tp=1, distopt=False, patch=True):
        return resolve(parse_config(tiny_flags(prefix, tok, save, **{
            "--train-iters": 12 if patch else 6, "--patch-size": 4 if patch else 1,
            "--patch-fraction": 0.5 if patch else 0, "--patch-seq-length": 64 if patch else None,
            "--save-interval": 3, "--eval-iters": 1, "--tensor-model-parallel-size": tp,
            "--load": load, "--use-distributed-optimizer": distopt or None,
        })))

    out = {}
    # Plain optimizer, token-level: killed after step 5 (last checkpoint: step 3), resumed.
    a, b = os.path.join(tmp, "plain_A"), os.path.join(tmp, "plain_B")
    run(cfg(a, patch=False))
    run_until_killed(cfg(b, patch=False), "token", 5)
    run(cfg(b, load=b, patch=False))
    out["plain"] = {"A": losses(a), "B": losses(b), "A_val": losses(a, "eval"), "B_val": losses(b, "eval")}

    # DistributedOptimizer, both stages: killed in the patch stage after step 5, resumed; it must
    # then hand over and train the token stage exactly as the uninterrupted run did.
    a, b = os.path.join(tmp, "dist_A"), os.path.join(tmp, "dist_B")
    run(cfg(a, distopt=True))
    run_until_killed(cfg(b, distopt=True), "patch", 5)
    run(cfg(b, load=b, distopt=True))
    out["distopt"] = {"A": losses(a), "B": losses(b), "A_val": losses(a, "eval"), "B_val": losses(b, "eval")}

    # Another layout: the run directory as a kill during token step 4..6 leaves it (pointer at
    # step 3), saved at DP=2, resumed at TP=2 (DP=1).
    c = os.path.join(tmp, "dist_C")
    if rank == 0:
        shutil.copytree(a, c)
        shutil.rmtree(os.path.join(c, "token", "iter_0000006"))
        with open(os.path.join(c, "token", "latest_checkpointed_iteration.txt"), "w") as f:
            f.write("3")
    torch.distributed.barrier()
    run(cfg(c, load=c, tp=2, distopt=True))
    with open(os.path.join(c, "compute.json")) as f:
        out["distopt"].update(C=losses(c), C_compute=json.load(f))

    if rank == 0:
        write_result(out)
    distributed.destroy()


if __name__ == "__main__":
    main()
