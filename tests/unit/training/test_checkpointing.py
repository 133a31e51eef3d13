"""checkpointing.py and the run-directory layout in one process: a full checkpoint restores
model, optimizer, scheduler and RNG exactly; the pointer file is written last, so a save that
dies midway leaves the previous checkpoint in force; --no-load-optim keeps a fresh optimizer."""
import os

import pytest
import torch

from megatron_patch import distributed
from megatron_patch.training import checkpointing as ckpt
from megatron_patch.training import rundir
from megatron_patch.training.state import TrainState
from tests.distributed.harness import StageHarness

FLAGS = ["--model", "tiny", "--num-layers", "2", "--seq-length", "32", "--micro-batch-size", "2",
         "--global-batch-size", "4", "--train-iters", "6", "--lr", "3e-3", "--lr-warmup-iters", "1"]


@pytest.fixture
def trained(tmp_path):
    """A harness after two steps, saved as step 2 in CKPT_DIR."""
    h = StageHarness(FLAGS, str(tmp_path / "run"))
    h.step(), h.step()
    state = TrainState(h.stage.name, 1, step=2, consumed_samples=8)
    ckpt_dir = str(tmp_path / "ckpt")
    path = ckpt.save_checkpoint(ckpt_dir, h.cfg, h.chunks, h.optimizer, h.scheduler, state, h.stage)
    yield h, ckpt_dir, path
    distributed.destroy()


def _adam_state(optimizer):
    return [v.clone() for s in optimizer.optimizer.state.values() for k, v in sorted(s.items()) if k != "step"]


def test_full_checkpoint_restores_everything(trained):
    h, ckpt_dir, path = trained
    assert rundir.latest_checkpoint(ckpt_dir) == path and path.endswith("iter_0000002")
    weights = {n: p.detach().clone() for n, p in h.chunks[0].named_parameters()}
    adam = _adam_state(h.optimizer)
    rng = torch.get_rng_state()
    next_loss = h.step().loss  # the step a resumed run must reproduce
    torch.manual_seed(999)  # the restore must bring the saved RNG back

    fresh = StageHarness(FLAGS, h.cfg.checkpoint.save + "-fresh")
    fresh._ready()
    common = ckpt.load_full(path, fresh.chunks, fresh.optimizer, fresh.scheduler)
    assert TrainState.from_checkpoint(common).step == 2 and common["stage"] == h.stage.to_dict()
    for name, p in fresh.chunks[0].named_parameters():
        assert torch.equal(p, weights[name]), name
    assert all(torch.equal(a, b) for a, b in zip(_adam_state(fresh.optimizer), adam))
    assert fresh.scheduler.num_steps == 2 and torch.equal(torch.get_rng_state(), rng)
    fresh.consumed = 8
    assert fresh.step().loss == next_loss


def test_no_load_optim_keeps_a_fresh_optimizer(trained):
    h, _, path = trained
    fresh = StageHarness(FLAGS, h.cfg.checkpoint.save + "-fresh")
    fresh._ready()
    ckpt.load_full(path, fresh.chunks, fresh.optimizer, fresh.scheduler, load_optim=False)
    assert not fresh.optimizer.optimizer.state  # Adam has no moments yet
    assert fresh.scheduler.num_steps == 2  # the schedule position is the run's, as in Megatron-LM


def test_a_save_that_dies_midway_leaves_the_previous_checkpoint(trained, monkeypatch):
    h, ckpt_dir, path = trained
    from megatron.core import dist_checkpointing

    def dies(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(dist_checkpointing, "save", dies)
    state = TrainState(h.stage.name, 1, step=4, consumed_samples=16)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(ckpt_dir, h.cfg, h.chunks, h.optimizer, h.scheduler, state, h.stage)
    assert rundir.read_tracker(ckpt_dir) == "iter_0000002"
    assert rundir.latest_checkpoint(ckpt_dir) == path  # the half-written iter_0000004 is ignored
    os.remove(os.path.join(path, "common.pt"))
    with pytest.raises(rundir.CheckpointError, match="incomplete or corrupted"):
        rundir.latest_checkpoint(ckpt_dir)
