"""megatron_patch/compat/ directly: the version gate, the CPU device rewrite, and the
DistributedOptimizer checkpoint-load repair (each Adam state keeps its own step counter)."""
import queue

import pytest
import torch

from megatron_patch import compat, distributed
from megatron_patch.training import checkpointing as ckpt
from megatron_patch.training.state import TrainState
from tests.distributed.harness import StageHarness


def test_a_different_megatron_core_is_refused_with_what_to_do(monkeypatch):
    import importlib.metadata

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "0.17.0" if name == "megatron-core" else real(name))
    with pytest.raises(compat.VersionMismatch, match=r"megatron-core 0\.17\.0 .* pip install megatron-core==0\.16\.1"):
        compat.check_versions()


def test_the_installed_versions_pass():
    compat.check_versions()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU shims are never active with CUDA")
def test_cuda_placements_land_on_the_cpu():
    assert compat.enable_cpu() and compat.cpu_compat_active()
    x = torch.zeros(3, device="cuda")
    assert x.device.type == "cpu" and x.cuda().device.type == "cpu"
    assert torch.ones(2).to(torch.cuda.current_device()).device.type == "cpu"
    assert x.type() == "torch.cuda.FloatTensor"  # the asserts megatron-core makes pass
    assert torch.cuda.current_device() == 0


FLAGS = ["--model", "tiny", "--num-layers", "2", "--seq-length", "32", "--micro-batch-size", "2",
         "--global-batch-size", "4", "--train-iters", "6", "--lr", "3e-3", "--lr-warmup-iters", "1",
         "--use-distributed-optimizer"]


def test_distributed_optimizer_resume_keeps_one_step_counter_per_parameter(tmp_path):
    h = StageHarness(FLAGS, str(tmp_path / "run"))
    try:
        h.step(), h.step()
        state = TrainState(h.stage.name, 1, step=2, consumed_samples=8)
        path = ckpt.save_checkpoint(str(tmp_path / "ckpt"), h.cfg, h.chunks, h.optimizer, h.scheduler,
                                    state, h.stage)
        from megatron.core.dist_checkpointing.strategies import filesystem_async

        assert isinstance(filesystem_async._results_queue, queue.Queue)  # no spawned Manager
        expected = h.step().loss

        fresh = StageHarness(FLAGS, str(tmp_path / "fresh"))
        fresh._ready()
        ckpt.load_full(path, fresh.chunks, fresh.optimizer, fresh.scheduler)
        states = list(fresh.optimizer.optimizer.state.values())
        assert states and len({id(s["step"]) for s in states}) == len(states)  # not one shared tensor
        assert {float(s["step"]) for s in states} == {2.0}
        fresh.consumed = 8
        assert fresh.step().loss == expected
        assert {float(s["step"]) for s in fresh.optimizer.optimizer.state.values()} == {3.0}
    finally:
        distributed.destroy()
