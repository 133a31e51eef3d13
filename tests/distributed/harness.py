"""The shared test harness: a stage built by the product's own code (config parser, preflight,
stage plan, builders, datasets, checkpointing, train step), for workers that compare layouts.

    h = StageHarness(["--model", "tiny", "--tensor-model-parallel-size", "2", ...], save_dir)
    h.load_weights(init_dir)                 # every layout starts from one saved initialisation
    losses = [h.step().loss for _ in range(5)]

Mock data (`--mock-data`, NullTokenizer) gives every layout the same global batches with no
files: sample i is a function of the seed and i only.
"""
import torch

from megatron_patch import device, distributed
from megatron_patch.training import builders
from megatron_patch.training import checkpointing as ckpt
from megatron_patch.training import rundir
from megatron_patch.training.config import parse_config
from megatron_patch.training.data import StageData
from megatron_patch.training.preflight import resolve
from megatron_patch.training.stages import eval_stage, plan_stages
from megatron_patch.training.step import train_step

MOCK = ["--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "1000", "--eval-iters", "0"]


class StageHarness:
    """The first stage of the plan that `flags` describe, ready to step."""

    def __init__(self, flags, save_dir: str):
        self.cfg = resolve(parse_config([*MOCK, "--save", save_dir, *flags]))
        distributed.initialize(self.cfg.parallel, seed=self.cfg.train.seed)
        from megatron.core import parallel_state

        self.stage = plan_stages(self.cfg, parallel_state.get_data_parallel_world_size())[0]
        dtype = device.compute_dtype(self.cfg.train.bf16)
        self.chunks = builders.build_chunks(self.cfg, self.stage.patch_size, dtype)
        self.dtype = dtype
        self.model = None
        self.consumed = 0

    def save_weights(self, path: str) -> None:
        ckpt.save_checkpoint(path, self.cfg, self.chunks)

    def load_weights(self, path: str) -> None:
        ckpt.load_weights(rundir.require_checkpoint(path), self.chunks, self.cfg.model)

    def _ready(self) -> None:
        if self.model is None:
            self.model = builders.wrap_ddp(self.chunks, self.cfg, self.dtype)
            self.optimizer = builders.build_optimizer(self.model, self.cfg, self.dtype)
            builders.connect_schedule(self.model, self.optimizer, self.cfg)
            self.scheduler = builders.build_scheduler(self.optimizer, self.cfg, self.stage)
            self.data = StageData(self.cfg, self.stage, eval_stage(self.cfg))

    def step(self):
        self._ready()
        result = train_step(self.model, self.optimizer, self.scheduler, self.data.train.get(self.consumed),
                            self.stage)
        self.consumed += self.stage.global_batch_size
        return result


def same_init(harness: StageHarness, init_dir: str, save: bool) -> None:
    """Pipeline stages build only their own layers, so initial weights differ from PP=1: every
    layout starts from one saved initialisation (which also exercises resharding)."""
    if save:
        harness.save_weights(init_dir)
        torch.distributed.barrier()
    else:
        harness.load_weights(init_dir)

