"""The train step (training/step.py) in one process: it is megatron-core's optimizer step, and it
withholds a non-finite update on every rank before the optimizer touches the weights."""
import pytest
import torch

from megatron_patch import distributed
from tests.distributed.harness import StageHarness

FLAGS = ["--model", "tiny", "--num-layers", "2", "--seq-length", "32", "--micro-batch-size", "2",
         "--global-batch-size", "4", "--train-iters", "4", "--lr", "3e-3", "--lr-warmup-iters", "1"]


@pytest.fixture
def harness(tmp_path):
    h = StageHarness(FLAGS, str(tmp_path / "run"))
    yield h
    distributed.destroy()


def _weights(h):
    return {n: p.detach().clone() for n, p in h.chunks[0].named_parameters()}


def test_the_step_is_megatron_cores_optimizer_step(harness):
    from megatron_patch.training import builders
    from megatron_patch.training.step import _run_schedule

    h = harness
    # The reference: the same model, stepped by megatron-core's own optimizer.step().
    twin = builders.build_chunks(h.cfg, h.stage.patch_size)
    twin[0].load_state_dict(h.chunks[0].state_dict())
    h._ready()
    twin_model = builders.wrap_ddp(twin, h.cfg, torch.float32)
    twin_opt = builders.build_optimizer(twin_model, h.cfg, torch.float32)
    builders.connect_schedule(twin_model, twin_opt, h.cfg)
    twin_sched = builders.build_scheduler(twin_opt, h.cfg, h.stage)
    batches = h.data.train.get(0)
    for chunk in twin_model:
        chunk.zero_grad_buffer()
    twin_opt.zero_grad()
    _run_schedule(twin_model, batches, h.stage, forward_only=False)
    ok, ref_norm, _ = twin_opt.step()
    twin_sched.step(increment=1)

    result = h.step()
    assert ok and result.applied
    assert result.grad_norm == pytest.approx(float(ref_norm), rel=1e-6)
    ours = _weights(h)
    theirs = {n: p.detach() for n, p in twin[0].named_parameters()}
    for name, value in ours.items():
        assert torch.equal(value, theirs[name]), name
    assert h.optimizer.param_groups[0]["lr"] == twin_opt.param_groups[0]["lr"] > 0


def test_a_nan_loss_leaves_weights_optimizer_and_schedule_untouched(harness):
    h = harness
    h._ready()
    h.step()  # one good step: Adam has state, the schedule moved
    before = _weights(h)
    lr_before = h.optimizer.param_groups[0]["lr"]
    steps_before = h.scheduler.num_steps
    with torch.no_grad():
        h.chunks[0].decoder.layers[0].mlp.linear_fc2.weight[0, 0] = float("nan")
    poisoned = _weights(h)
    result = h.step()
    assert not result.applied and result.loss != result.loss  # NaN
    after = _weights(h)
    for name in before:  # bit for bit, NaN included
        assert torch.equal(torch.nan_to_num(after[name], nan=7.0), torch.nan_to_num(poisoned[name], nan=7.0)), name
    assert h.scheduler.num_steps == steps_before and h.optimizer.param_groups[0]["lr"] == lr_before
