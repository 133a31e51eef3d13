"""The training run: each planned stage, the weights-only hand-over between them, the compute account.

    from megatron_patch.training import parse_config, run
    run(parse_config(["--config", "examples/configs/cpu_demo.yaml"]))

`run` walks the stages of `plan_stages` (a stage is data: K, steps, batch, data range, warmup);
`train_stage` is the same code for every stage. Layout of SAVE:
    patch/  patch_weights/  token/  metrics.jsonl  compute.json  tensorboard/
Resuming (`--load`): a stage whose checkpoint is complete is skipped, an unfinished one resumes
from its latest checkpoint (step, optimizer, scheduler, RNG, data position), a stage not started
yet begins from the previous stage's weights.
"""
import gc
import json
import math
import os
import shutil
import time
from typing import List, Optional, Tuple

import torch
from megatron.core import parallel_state

from megatron_patch import distributed
from megatron_patch.training import checkpointing as ckpt
from megatron_patch.training.builders import build_chunks, build_optimizer, build_scheduler, wrap_ddp
from megatron_patch.training.config import RunConfig
from megatron_patch.training.convert import convert_to_token
from megatron_patch.training.data import StepBatches, build_stage_datasets, num_valid_samples
from megatron_patch.training.flops import device_peak_tflops, flops_per_step, token_only_flops
from megatron_patch.training.metrics import MetricsLogger, memory_gib
from megatron_patch.training.preflight import compute_dtype, resolve
from megatron_patch.training.stages import (
    Stage, eval_stage, plan_stages, stage_dir, stages_to_run, weights_dir,
)
from megatron_patch.training.state import TrainState
from megatron_patch.training.step import evaluate, token_level, train_step


class SimulatedCrash(RuntimeError):
    """Raised by `run(..., crash_after=(stage, step))`: tests kill a run between checkpoints."""


def run(cfg: RunConfig, crash_after: Optional[tuple] = None) -> Optional[dict]:
    """Train the stages this launch owns. Returns the compute account (every rank)."""
    cfg = resolve(cfg)  # idempotent; tools/pretrain.py already ran it before importing this module
    distributed.initialize(cfg.parallel, seed=cfg.train.seed)
    dp = parallel_state.get_data_parallel_world_size()
    plan = plan_stages(cfg, dp)
    logger = MetricsLogger(cfg.checkpoint.save, cfg.checkpoint.tensorboard)
    try:
        logger.print(
            "plan: " + "; ".join(
                f"{s.name} K={s.patch_size} {s.train_iters} steps x {s.global_batch_size} seq x "
                f"{s.seq_length} tok, data {s.train_range[0]:.3g}-{s.train_range[1]:.3g}"
                for s in plan
            )
        )
        state = None
        for stage in stages_to_run(cfg, plan):
            state, trained = train_stage(cfg, plan, stage, logger, crash_after)
            if torch.cuda.is_available():
                gc.collect()  # free the finished stage's GPU memory (megatron modules hold cycles)
                torch.cuda.empty_cache()
            if cfg.train.stage == "all" and stage is not plan[-1]:
                hand_over(cfg, stage, redo=trained)
        account = compute_account(cfg, state)
        if logger.active:
            write_account(cfg.checkpoint.save, account, logger)
        return account
    finally:
        logger.close()


def hand_over(cfg, stage: Stage, redo: bool = False) -> str:
    """Turn a finished stage's checkpoint into the weights-only start of the next stage.

    Skipped when an earlier launch (or tools/convert_checkpoint.py) already did it, unless
    `redo` (the stage trained in this launch, so older weights would be stale).
    """
    dst = weights_dir(cfg.checkpoint.save, stage)
    if ckpt.read_tracker(dst) is not None and not redo:
        return ckpt.require_checkpoint(dst)
    if torch.distributed.get_rank() == 0 and os.path.isdir(dst):
        shutil.rmtree(dst)  # stale, or an interrupted conversion (its pointer was never written)
    torch.distributed.barrier()
    return convert_to_token(stage_dir(cfg.checkpoint.save, stage), dst, cfg.parallel)


def _find_resume(cfg, stage: Stage) -> Optional[str]:
    load = cfg.checkpoint.load
    if not load or ckpt.read_tracker(load) == ckpt.RELEASE:
        return None
    if os.path.isfile(os.path.join(load, ckpt.TRACKER)):
        raise ValueError(
            f"--load {load} is a checkpoint directory; --load takes the run directory (the --save "
            f"of the run, holding {stage.name}/), and --init-from takes weights to start from"
        )
    return ckpt.latest_checkpoint(os.path.join(load, stage.name))


def _find_init(cfg, plan: List[Stage], stage: Stage) -> Optional[str]:
    """Weights a fresh stage starts from: --init-from / a release --load for the first stage
    of this launch, else the previous stage's converted weights."""
    first = stage is stages_to_run(cfg, plan)[0]
    load = cfg.checkpoint.load
    if first and cfg.checkpoint.init_from:
        return ckpt.require_checkpoint(cfg.checkpoint.init_from)
    if first and load and ckpt.read_tracker(load) == ckpt.RELEASE:
        return ckpt.require_checkpoint(load)
    i = plan.index(stage)
    if i == 0:
        return None
    prev = plan[i - 1]
    for root in (cfg.checkpoint.save, load):
        if root and ckpt.read_tracker(weights_dir(root, prev)) is not None:
            return ckpt.require_checkpoint(weights_dir(root, prev))
    # A separate `--stage token` job: convert the previous stage's final checkpoint here.
    done = ckpt.latest_checkpoint(stage_dir(cfg.checkpoint.save, prev))
    if done and TrainState.from_dict(ckpt.common_state(done)["train_state"]).step >= prev.train_iters:
        return hand_over(cfg, prev)
    raise ValueError(
        f"the {stage.name} stage starts from the {prev.name} stage's weights, but neither "
        f"{weights_dir(cfg.checkpoint.save, prev)} nor a finished {stage_dir(cfg.checkpoint.save, prev)} "
        f"exists: run --stage {prev.name} first, or pass --init-from a weights checkpoint"
    )


def _history(cfg, plan: List[Stage], stage: Stage) -> List[dict]:
    """Accounts of the stages before `stage`, read from their final checkpoints when reachable."""
    i = plan.index(stage)
    if i == 0:
        return []
    for root in (cfg.checkpoint.save, cfg.checkpoint.load):
        path = root and ckpt.latest_checkpoint(stage_dir(root, plan[i - 1]))
        if path:
            prev = TrainState.from_dict(ckpt.common_state(path)["train_state"])
            return prev.history + [prev.account()]
    return []


def _initial_state(cfg, plan: List[Stage], stage: Stage, resume: Optional[str], logger) -> TrainState:
    """The resumed checkpoint's TrainState, or a fresh one carrying the earlier stages' accounts."""
    if resume is None:
        if cfg.checkpoint.load and ckpt.read_tracker(cfg.checkpoint.load) is None:
            logger.print(f"{stage.name} stage: no checkpoint under {cfg.checkpoint.load}; starting it fresh")
        return TrainState(stage.name, stage.patch_size, history=_history(cfg, plan, stage))
    common = ckpt.common_state(resume)
    if common["stage"] != stage.to_dict():
        raise ValueError(
            f"checkpoint {resume} was written by a different {stage.name} stage "
            f"({common['stage']}) than this config plans ({stage.to_dict()}); resume with "
            "the same budget, batch, sequence length and patch settings"
        )
    return TrainState.from_dict(common["train_state"])


def train_stage(cfg, plan: List[Stage], stage: Stage, logger: MetricsLogger,
                crash_after: Optional[tuple] = None) -> Tuple[TrainState, bool]:
    """Train (or resume, or skip if complete) one stage; returns (final state, trained now)."""
    save_dir = stage_dir(cfg.checkpoint.save, stage)
    dtype = compute_dtype(cfg)
    resume = _find_resume(cfg, stage)
    state = _initial_state(cfg, plan, stage, resume, logger)
    if state.step >= stage.train_iters:
        logger.print(f"{stage.name} stage: complete in {resume}, skipping")
        return state, False

    chunks = build_chunks(cfg, stage.patch_size, dtype)
    if resume is None:
        init = _find_init(cfg, plan, stage)
        if init:
            ckpt.load_weights(init, chunks, cfg.model)  # before the optimizer copies main params
            logger.print(f"{stage.name} stage: weights from {init}")
    model = wrap_ddp(chunks, cfg, dtype)
    optimizer = build_optimizer(model, cfg, dtype)
    scheduler = build_scheduler(optimizer, cfg, stage)
    if resume is not None:
        ckpt.load_full(resume, chunks, optimizer, scheduler)
        logger.print(f"{stage.name} stage: resumed from {resume} at step {state.step}")
    later = [s.name for s in plan[plan.index(stage) + 1:]]
    logger.rewind(stage.name, state.step, later)

    ev_stage = eval_stage(cfg)
    train_ds, valid_ds = build_stage_datasets(
        cfg, stage, ev_stage, stage.train_iters * stage.global_batch_size, num_valid_samples(ev_stage)
    )
    dp_rank, dp = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    batches = StepBatches(train_ds, stage, dp_rank, dp)
    valid = StepBatches(valid_ds, ev_stage, dp_rank, dp) if valid_ds is not None else None

    tp = cfg.parallel.tensor_model_parallel_size
    step_flops = flops_per_step(cfg.model, stage, tp)
    peak = device_peak_tflops(dtype == torch.bfloat16)
    world = torch.distributed.get_world_size()
    t = cfg.train
    window = {"loss": 0.0, "steps": 0, "time": 0.0}

    def do_eval():
        if valid is None:
            return None
        with token_level(model):
            result = evaluate(model, (valid.get(i * ev_stage.global_batch_size)
                                      for i in range(ev_stage.train_iters)), ev_stage)
        rec = {"kind": "eval", "stage": stage.name, "patch_size": stage.patch_size,
               "step": state.step, "val_loss": result["loss"], "val_ppl": result["ppl"],
               **state.cumulative()}
        logger.write(rec)
        return rec

    def do_save():
        ckpt.save_checkpoint(save_dir, cfg, chunks, optimizer, scheduler, state, stage)

    while state.step < stage.train_iters:
        step_batches = batches.get(state.consumed_samples)
        start = time.perf_counter()
        loss, grad_norm, lr = train_step(model, optimizer, scheduler, step_batches, stage)
        elapsed = _slowest(time.perf_counter() - start)  # train_step ends in a host sync
        state.step += 1
        state.consumed_samples += stage.global_batch_size
        state.tokens += stage.tokens_per_step
        state.flops += step_flops
        state.wall_s += elapsed
        window["loss"] += loss
        window["steps"] += 1
        window["time"] += elapsed
        if not math.isfinite(loss):
            raise FloatingPointError(f"{stage.name} stage step {state.step}: loss is {loss}")
        last = state.step == stage.train_iters
        if state.step % t.log_interval == 0 or last:
            n, secs = window["steps"], max(window["time"], 1e-9)
            tflops = n * step_flops / secs / world / 1e12
            logger.write({
                "kind": "train", "stage": stage.name, "patch_size": stage.patch_size,
                "step": state.step, "train_iters": stage.train_iters, "loss": window["loss"] / n,
                "lr": lr, "grad_norm": grad_norm,
                "tokens_per_s": n * stage.tokens_per_step / secs, "tflops": tflops,
                "mfu": tflops / peak if peak else None, "mem_gib": memory_gib(),
                **state.cumulative(),
            })
            window = {"loss": 0.0, "steps": 0, "time": 0.0}
        if crash_after is not None and crash_after == (stage.name, state.step):
            raise SimulatedCrash(f"simulated crash after {stage.name} step {state.step}")
        if not last and t.eval_interval and state.step % t.eval_interval == 0:
            do_eval()
        if not last and cfg.checkpoint.save_interval and state.step % cfg.checkpoint.save_interval == 0:
            do_save()

    final = do_eval()
    state.val_loss = final["val_loss"] if final else None
    state.val_ppl = final["val_ppl"] if final else None
    do_save()
    return state, True


def _slowest(seconds: float) -> float:
    """The step time of the slowest rank, so every rank keeps (and checkpoints) the same clock."""
    t = torch.tensor([seconds], dtype=torch.float64,
                     device="cuda" if torch.cuda.is_available() else "cpu")
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t.item())


def compute_account(cfg, state: Optional[TrainState]) -> dict:
    """FLOPs and wall time per stage against a token-only run over the same tokens."""
    stages = (state.history + [state.account()]) if state is not None else []
    total = sum(s["flops"] for s in stages)
    tp = cfg.parallel.tensor_model_parallel_size
    token_only = sum(token_only_flops(cfg.model, s["tokens"], cfg.train.seq_length, tp) for s in stages)
    K, lam = cfg.train.patch_size, cfg.train.patch_fraction if cfg.train.patch_size > 1 else 0.0
    return {
        "stages": stages,
        "total_flops": total,
        "token_only_flops": token_only,
        "ratio": total / token_only if token_only else None,
        "ideal_ratio": lam / K + 1 - lam,
        "final_val_loss": stages[-1].get("val_loss") if stages else None,
        "final_val_ppl": stages[-1].get("val_ppl") if stages else None,
    }


def write_account(run_dir: str, account: dict, logger: MetricsLogger) -> None:
    path = os.path.join(run_dir, "compute.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(account, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    logger.print("compute account (model FLOPs; wall time of training steps):")
    for s in account["stages"]:
        logger.print(f"  {s['stage']:>5} K={s['patch_size']}: {s['steps']} steps, {s['tokens']:.4g} tokens, "
                     f"{s['flops']:.4g} FLOPs, {s['wall_s']:.1f} s")
    if account["ratio"] is not None:
        logger.print(f"  total {account['total_flops']:.4g} FLOPs = {account['ratio']:.3f} x a token-only "
                     f"run over the same data ({account['token_only_flops']:.4g}); "
                     f"ideal lambda/K + 1 - lambda = {account['ideal_ratio']:.3f}")
    if account["final_val_loss"] is not None:
        logger.print(f"  final token-level val loss {account['final_val_loss']:.4f}, "
                     f"ppl {account['final_val_ppl']:.2f}")
