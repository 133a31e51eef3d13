"""The training run: the planned stages, each trained by one loop of calls to collaborators.

    from megatron_patch.training import parse_config, resolve, Trainer
    Trainer(resolve(parse_config(argv))).train()

A stage is data (`stages.Stage`: K, steps, batch, data range, learning rates, warmup, whether
it carries the previous stage's optimizer, the patch loss and mean settings); the loop is the
same for every stage and knows nothing else about patches. Collaborators, one concern each:
    builders.py      model chunks, DDP, optimizer, LR schedule (megatron-core)
    data.py          the stage's datasets and the resumable micro-batch order
    step.py          one step through megatron-core's pipeline schedules, withholding
                     non-finite updates
    checkpointer.py  resume / start weights / periodic saves / the hand-over between stages
    evaluation.py    token-level validation
    metrics.py       log lines, metrics.jsonl, TensorBoard, W&B
    preemption.py    signal, wall-clock and step-count exits
    divergence.py    what a non-finite step does to the run
    ownership.py     one live run per run directory
    account.py       compute.json
"""
import time
from typing import Optional

import torch
from megatron.core import parallel_state

from megatron_patch import device, distributed
from megatron_patch.training import builders, handover, megatron_flags
from megatron_patch.training.account import compute_account, summary_lines, write_account
from megatron_patch.training.checkpointer import Checkpointer
from megatron_patch.training.config import RunConfig, to_dict
from megatron_patch.training.data import StageData
from megatron_patch.training.divergence import DivergenceGuard
from megatron_patch.training.evaluation import Evaluator
from megatron_patch.training.flops import device_peak_tflops, flops_per_step
from megatron_patch.training.metrics import MetricsLogger
from megatron_patch.training.ownership import RunLock
from megatron_patch.training.preemption import ExitPolicy, ExitRequested
from megatron_patch.training.stages import Stage, eval_stage, micro_batch_notes, plan_stages, stages_to_run
from megatron_patch.training.step import train_step


class Trainer:
    """Trains the stages of one launch. `cfg` must come from `preflight.resolve`."""

    def __init__(self, cfg: RunConfig):
        if not getattr(cfg, "resolved", False):
            raise ValueError("Trainer needs a resolved config: Trainer(resolve(cfg))")
        self.cfg = cfg
        distributed.initialize(cfg.parallel, seed=cfg.train.seed)
        self.plan = plan_stages(cfg, parallel_state.get_data_parallel_world_size())
        self.dtype = device.compute_dtype(cfg.train.bf16)
        self.logger = MetricsLogger(cfg.checkpoint.save, cfg.logging, to_dict(cfg))
        self.checkpointer = Checkpointer(cfg, self.plan, self.logger)
        self.exit = ExitPolicy(cfg.train)
        self.guard = DivergenceGuard(cfg.train.skip_bad_steps, self.logger)

    def train(self) -> dict:
        """Train the stages this launch owns; returns the compute account (every rank)."""
        lock = RunLock(self.cfg.checkpoint.save)
        try:
            self._claim(lock)
            megatron_flags.print_notes(self.cfg)  # rank 0: defaults that differ from Megatron-LM's
            self.logger.print("plan: " + "; ".join(s.describe() for s in self.plan))
            for note in micro_batch_notes(self.cfg, self.plan):
                self.logger.print(note)
            state = None
            to_run = stages_to_run(self.cfg, self.plan)
            for stage in to_run:
                state, trained = self.train_stage(stage)
                device.empty_cache()
                if stage is not self.plan[-1]:
                    reason = self.exit.reason(None)  # a signal during the stage's last step
                    if reason:
                        raise ExitRequested(f"after the {stage.name} stage: {reason}",
                                            self.checkpointer.last_checkpoint(stage))
                    if self.plan[self.plan.index(stage) + 1] in to_run:  # the next stage runs now
                        self.checkpointer.hand_over(stage, redo=trained)
            account = compute_account(self.cfg, state)
            if self.logger.active:
                for line in summary_lines(account):
                    self.logger.print(line)
                write_account(self.cfg.checkpoint.save, account)
            return account
        finally:
            self.exit.close()
            self.logger.close()
            lock.release()

    def _claim(self, lock: RunLock) -> None:
        """Rank 0 locks the run directory; every rank learns whether that worked."""
        error = None
        if torch.distributed.get_rank() == 0:
            try:
                lock.acquire()
            except ValueError as err:
                error = err
        failed = torch.tensor([1.0 if error else 0.0], device=device.current())
        torch.distributed.all_reduce(failed, op=torch.distributed.ReduceOp.MAX)
        if error is not None:
            raise error
        if failed.item():
            raise ValueError(f"{self.cfg.checkpoint.save} is in use by a live run")

    def train_stage(self, stage: Stage):
        """Train (or resume, or skip if complete) one stage; returns (final state, trained now)."""
        cfg, ckpt = self.cfg, self.checkpointer
        resume = ckpt.find_resume(stage)
        state = ckpt.initial_state(stage, resume)
        if state.step >= stage.train_iters:
            self.logger.print(f"{stage.name} stage: complete in {resume}, skipping")
            return state, False

        chunks = builders.build_chunks(cfg, dtype=self.dtype, **stage.model_args())
        init = ckpt.find_init(stage) if resume is None else None
        if init:
            ckpt.load_init(init, chunks)
        if resume is None and (init or stage.starts_fresh) and handover.changes_weights(stage):
            self.logger.print(handover.apply_at_start(cfg, stage, self.plan.index(stage), chunks, self.dtype))
        model = builders.wrap_ddp(chunks, cfg, self.dtype)
        optimizer = builders.build_optimizer(model, cfg, self.dtype)
        builders.connect_schedule(model, optimizer, cfg)
        scheduler = builders.build_scheduler(optimizer, cfg, stage)
        if resume is not None:
            ckpt.load_resume(resume, chunks, optimizer, scheduler, state)
        elif init and stage.carry_optimizer:
            ckpt.load_carried(init, chunks, optimizer)
        later = [s.name for s in self.plan[self.plan.index(stage) + 1:]]
        self.logger.rewind(stage.name, state.step, later)

        data = StageData(cfg, stage, eval_stage(cfg))
        if state.step == 0:
            self.logger.write({"kind": "data", "stage": stage.name, "patch_size": stage.patch_size,
                               "step": 0, "samples": stage.train_iters * stage.global_batch_size,
                               "epochs": data.epochs, "sources": data.sources,
                               **state.cumulative()})
        evaluator = Evaluator(model, data.valid, cfg.train.eval_interval, self.logger)
        step_flops = flops_per_step(cfg.model, stage, cfg.parallel.tensor_model_parallel_size)
        peak = device_peak_tflops(self.dtype == torch.bfloat16)
        world = torch.distributed.get_world_size()

        def save():
            with builders.gathered_params(model, cfg):
                return ckpt.save(stage, state, chunks, optimizer, scheduler)

        def validate():
            with builders.gathered_params(model, cfg):
                return evaluator.run(stage, state)

        while state.step < stage.train_iters:
            start = time.perf_counter()
            result = train_step(model, optimizer, scheduler, data.train.get(state.consumed_samples), stage)
            elapsed = _slowest(time.perf_counter() - start)  # train_step ends in a host sync
            state.advance(stage, step_flops, elapsed)
            self.logger.step(stage, state, result, elapsed, step_flops, peak, world,
                             cfg.logging.log_interval)
            if not result.applied:  # stop the run, or count a skipped step: nothing is saved now
                self.guard.check(result, stage, state, ckpt.last_checkpoint(stage))
                continue
            if state.step == stage.train_iters:
                break
            if evaluator.due(state.step):
                validate()
            saved = save() if ckpt.due(state.step) else None
            reason = self.exit.reason(state.step)
            if reason:
                saved = saved or save()
                self.logger.write({"kind": "exit", "stage": stage.name, "patch_size": stage.patch_size,
                                   "step": state.step, "reason": reason, "checkpoint": saved,
                                   **state.cumulative()})
                raise ExitRequested(f"{stage.name} stage step {state.step}: {reason}", saved)

        final = validate()
        state.val_loss = final["val_loss"] if final else None
        state.val_ppl = final["val_ppl"] if final else None
        save()
        return state, True


def _slowest(seconds: float) -> float:
    """The step time of the slowest rank, so every rank keeps (and checkpoints) the same clock."""
    t = torch.tensor([seconds], dtype=torch.float64, device=device.current())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t.item())


def run(cfg: RunConfig) -> Optional[dict]:
    """Train a resolved config (see preflight.resolve); returns the compute account."""
    return Trainer(cfg).train()
