"""The trainer's checkpointer: where a stage resumes from, what it starts from, when it saves,
and the weights-only hand-over to the next stage.

Resuming (`--load SAVE`): a stage whose checkpoint is complete is skipped, an unfinished one
resumes from its latest checkpoint (step, optimizer, scheduler, RNG, data position), a stage
not started yet begins from the previous stage's weights, or, when the stage carries the
optimizer (`Stage.carry_optimizer`, --handover-optimizer carry), from the previous stage's
final full checkpoint: its weights and optimizer state, with a fresh schedule, step and RNG.
Only a completed stage is handed over (its final checkpoint records `completed`), unless
--allow-unfinished-stage says otherwise.
"""
import os
import shutil
from typing import List, Optional

import torch

from megatron_patch.training import checkpointing as ckpt
from megatron_patch.training import rundir
from megatron_patch.training.checkpointing import require_completed
from megatron_patch.training.convert import convert_to_token
from megatron_patch.training.stages import Stage, stages_to_run
from megatron_patch.training.state import TrainState


class Checkpointer:
    """Stage-aware checkpointing of one run directory (cfg.checkpoint.save)."""

    def __init__(self, cfg, plan: List[Stage], logger):
        self.cfg = cfg
        self.plan = plan
        self.logger = logger
        self.run_dir = cfg.checkpoint.save
        self.interval = cfg.checkpoint.save_interval

    # ----------------------------------------------------------------- where a stage starts

    def find_resume(self, stage: Stage) -> Optional[str]:
        """The latest checkpoint of `stage` under --load, if this launch resumes one."""
        load = self.cfg.checkpoint.load
        if not load or self.cfg.checkpoint.finetune or rundir.read_tracker(load) == rundir.RELEASE:
            return None
        if rundir.is_checkpoint_dir(load):
            raise ValueError(
                f"--load {load} is a checkpoint directory; --load takes the run directory (the --save "
                f"of the run, holding {stage.name}/), and --init-from takes weights to start from"
            )
        return rundir.latest_checkpoint(rundir.stage_dir(load, stage.name))

    def initial_state(self, stage: Stage, resume: Optional[str]) -> TrainState:
        """The resumed checkpoint's TrainState, or a fresh one carrying the earlier stages' accounts."""
        if resume is None:
            return TrainState(stage.name, stage.patch_size, history=self._history(stage),
                              settings=stage.to_dict())
        common = ckpt.common_state(resume)
        saved, planned = common["stage"], stage.to_dict()
        # Fields a checkpoint predates (recipe knobs added later) are not compared.
        if any(saved[k] != planned.get(k) for k in saved):
            raise ValueError(
                f"checkpoint {resume} was written by a different {stage.name} stage "
                f"({saved}) than this config plans ({planned}); resume with the same budget, "
                "batch, sequence length, patch settings and recipe knobs"
            )
        state = TrainState.from_checkpoint(common)
        state.settings = planned
        return state

    def find_init(self, stage: Stage) -> Optional[str]:
        """Weights a fresh stage starts from: --init-from (or a weights-only / --finetune --load)
        for the first stage of this launch, else the previous stage's weights (its final full
        checkpoint when the stage carries the optimizer: see load_carried)."""
        c = self.cfg.checkpoint
        if stage.starts_fresh:  # --handover-reinit all: nothing of an earlier stage is kept
            return None
        first = stage is stages_to_run(self.cfg, self.plan)[0]
        if first and c.init_from:
            path = rundir.resolve_checkpoint(c.init_from)
            require_completed(path, c.allow_unfinished_stage, f"--init-from {c.init_from}")
            return path
        if first and c.load and (c.finetune or rundir.read_tracker(c.load) == rundir.RELEASE):
            return rundir.resolve_checkpoint(c.load)
        i = self.plan.index(stage)
        if i == 0:
            return None
        prev = self.plan[i - 1]
        if stage.carry_optimizer:
            return self._final_checkpoint(prev, stage)
        for root in (self.run_dir, c.load):
            if root and rundir.read_tracker(rundir.weights_dir(root, prev.name)) is not None:
                return rundir.require_checkpoint(rundir.weights_dir(root, prev.name))
        # A separate `--stage token` job: convert the previous stage's final checkpoint here.
        done = rundir.latest_checkpoint(rundir.stage_dir(self.run_dir, prev.name))
        if done:
            require_completed(done, c.allow_unfinished_stage, f"the {stage.name} stage's start")
            return self.hand_over(prev)
        raise ValueError(
            f"the {stage.name} stage starts from the {prev.name} stage's weights, but neither "
            f"{rundir.weights_dir(self.run_dir, prev.name)} nor a finished "
            f"{rundir.stage_dir(self.run_dir, prev.name)} exists: run --stage {prev.name} first, "
            "or pass --init-from a weights checkpoint"
        )

    def _final_checkpoint(self, prev: Stage, stage: Stage) -> str:
        """The previous stage's final full checkpoint (this run's, else --load's), completed."""
        c = self.cfg.checkpoint
        for root in (self.run_dir, c.load):
            path = root and rundir.latest_checkpoint(rundir.stage_dir(root, prev.name))
            if path:
                require_completed(path, c.allow_unfinished_stage, f"the {stage.name} stage's start")
                return path
        raise ValueError(
            f"the {stage.name} stage carries the optimizer of the {prev.name} stage "
            f"(--handover-optimizer carry), but no {rundir.stage_dir(self.run_dir, prev.name)} "
            f"checkpoint exists: run --stage {prev.kind} first, or use --handover-optimizer reset"
        )

    def _history(self, stage: Stage) -> List[dict]:
        """Accounts of the stages before `stage`, read from their final checkpoints when reachable."""
        i = self.plan.index(stage)
        if i == 0:
            return []
        for root in (self.run_dir, self.cfg.checkpoint.load):
            path = root and rundir.latest_checkpoint(rundir.stage_dir(root, self.plan[i - 1].name))
            if path:
                prev = TrainState.from_checkpoint(ckpt.common_state(path))
                return prev.history + [prev.account()]
        return []

    # ----------------------------------------------------------------- load and save

    def load_init(self, path: str, chunks) -> None:
        ckpt.load_weights(path, chunks, self.cfg.model)  # before the optimizer copies main params
        self.logger.print(f"weights from {path}")

    def load_carried(self, path: str, chunks, optimizer) -> None:
        """The previous stage's optimizer state (and weights) into a fresh stage's optimizer;
        its schedule, step and RNG stay fresh."""
        ckpt.load_optimizer_state(path, chunks, optimizer)
        self.logger.print(f"optimizer state carried from {path}")

    def load_resume(self, path: str, chunks, optimizer, scheduler, state: TrainState) -> None:
        c = self.cfg.checkpoint
        ckpt.load_full(path, chunks, optimizer, scheduler, load_optim=c.load_optim, load_rng=c.load_rng)
        self.logger.print(f"{state.stage} stage: resumed from {path} at step {state.step}")

    def due(self, step: int) -> bool:
        return bool(self.interval) and step % self.interval == 0

    def save(self, stage: Stage, state: TrainState, chunks, optimizer, scheduler) -> str:
        state.completed = state.step >= stage.train_iters
        return ckpt.save_checkpoint(rundir.stage_dir(self.run_dir, stage.name), self.cfg, chunks,
                                    optimizer, scheduler, state, stage)

    def last_checkpoint(self, stage: Stage) -> Optional[str]:
        """The stage's newest complete checkpoint in this run (None if it has none)."""
        try:
            return rundir.latest_checkpoint(rundir.stage_dir(self.run_dir, stage.name))
        except rundir.CheckpointError:
            return None

    # ----------------------------------------------------------------- hand-over

    def hand_over(self, stage: Stage, redo: bool = False) -> str:
        """Turn a finished stage's checkpoint into the weights-only start of the next stage.

        Skipped when an earlier launch (or tools/convert_checkpoint.py) already did it, unless
        `redo` (the stage trained in this launch, so older weights would be stale)."""
        dst = rundir.weights_dir(self.run_dir, stage.name)
        if rundir.read_tracker(dst) is not None and not redo:
            return rundir.require_checkpoint(dst)
        if torch.distributed.get_rank() == 0 and os.path.isdir(dst):
            shutil.rmtree(dst)  # stale, or an interrupted conversion (its pointer was never written)
        torch.distributed.barrier()
        return convert_to_token(rundir.stage_dir(self.run_dir, stage.name), dst, self.cfg.parallel)
