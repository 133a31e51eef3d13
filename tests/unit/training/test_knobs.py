"""The recipe knobs as stage data: the plan each knob makes, the learning rates the schedule
really uses, and whole runs of the trainer in one process (mock data, a 2-layer tiny model):
the optimizer carried over the hand-over, and a K schedule's stages, directories and account."""
import json
import os

import pytest
import torch

from megatron_patch import distributed
from megatron_patch.training import rundir
from megatron_patch.training.checkpointer import Checkpointer
from megatron_patch.training.config import parse_config
from megatron_patch.training.metrics import read_metrics
from megatron_patch.training.preflight import resolve
from megatron_patch.training.stages import ideal_ratio, plan_stages, stages_to_run
from megatron_patch.training.trainer import Trainer

BASE = ["--model", "tiny", "--num-layers", "2", "--mock-data", "--tokenizer-type", "NullTokenizer",
        "--vocab-size", "300", "--seq-length", "32", "--global-batch-size", "4", "--micro-batch-size", "2",
        "--lr", "3e-3", "--min-lr", "3e-4", "--lr-warmup-iters", "1", "--eval-iters", "0",
        "--no-tensorboard", "--log-interval", "1"]
PATCH = ["--patch-size", "4", "--patch-fraction", "1/2", "--patch-seq-length", "32"]


def plan(*flags):
    return plan_stages(parse_config([*BASE, "--train-iters", "12", *flags]), 1)


# ----------------------------------------------------------------------------- the plan


def test_without_knobs_the_plan_is_the_papers():
    patch, token = plan(*PATCH)
    assert (patch.name, token.name) == ("patch", "token")
    assert (patch.lr, patch.min_lr, token.lr, token.min_lr) == (3e-3, 3e-4, 3e-3, 3e-4)
    assert (patch.lr_warmup_iters, token.lr_warmup_iters) == (1, 1)
    assert not patch.carry_optimizer and not token.carry_optimizer
    assert (patch.target_decay, patch.mean_dtype) == (1.0, "fp32")
    assert patch.model_args() == {"patch_size": 4, "target_decay": 1.0, "mean_dtype": "fp32"}


def test_each_knob_lands_in_its_stage():
    patch, token = plan(*PATCH, "--patch-lr", "1e-2", "--patch-min-lr", "1e-3", "--handover-optimizer", "carry",
                        "--token-lr-warmup-iters", "3", "--patch-target-decay", "0.5", "--patch-mean-dtype", "param")
    assert (patch.lr, patch.min_lr, patch.lr_warmup_iters) == (1e-2, 1e-3, 1)
    assert (token.lr, token.min_lr, token.lr_warmup_iters) == (3e-3, 3e-4, 3)
    assert (patch.carry_optimizer, token.carry_optimizer) == (False, True)  # nothing before the first
    assert (patch.target_decay, patch.mean_dtype) == (0.5, "param")
    assert (token.target_decay, token.mean_dtype) == (1.0, "fp32")  # K = 1: one target, no mean
    assert token.to_dict()["carry_optimizer"] is True
    # --patch-lr alone: the patch stage decays to --min-lr
    patch, _ = plan(*PATCH, "--patch-lr", "1e-2")
    assert (patch.lr, patch.min_lr) == (1e-2, 3e-4)


def test_a_k_schedule_is_several_patch_stages():
    cfg = parse_config([*BASE, "--train-iters", "24", "--patch-schedule", "4:1/2,2:1/4", "--patch-size", "8",
                        "--patch-fraction", "0.1", "--handover-optimizer", "carry",
                        "--patch-seq-length", "32"])
    stages = plan_stages(cfg, 1)
    assert [(s.name, s.patch_size, s.train_iters, s.seq_length) for s in stages] == [
        ("patch_k4", 4, 12, 32), ("patch_k2", 2, 6, 32), ("token", 1, 6, 32)]
    assert [s.train_range for s in stages] == [(0.0, 0.5), (0.5, 0.75), (0.75, 1.0)]
    assert [s.carry_optimizer for s in stages] == [False, True, True]
    assert ideal_ratio(cfg) == pytest.approx(0.5 / 4 + 0.25 / 2 + 0.25)
    # --stage patch runs every patch stage; --stage token the token stage
    cfg.train.stage = "patch"
    assert [s.name for s in stages_to_run(cfg, stages)] == ["patch_k4", "patch_k2"]
    # one pair is the paper's single stage, named "patch"
    (patch, _) = plan("--patch-schedule", "4:0.5", "--patch-seq-length", "32")
    assert (patch.name, patch.patch_size, patch.train_range) == ("patch", 4, (0.0, 0.5))
    assert plan("--patch-schedule", "4:0.5", "--patch-seq-length", "32") == plan(*PATCH)


def test_stage_names_in_the_run_directory(tmp_path):
    for name in ("token", "patch_k2", "patch_k8", "patch_k8_weights"):
        (tmp_path / name).mkdir()
        (tmp_path / name / rundir.TRACKER).write_text("release")
    assert rundir.stage_names(str(tmp_path)) == ["patch_k8", "patch_k2", "token"]
    assert rundir.stage_kind("patch_k8") == rundir.stage_kind("patch") == "patch"
    assert not rundir.is_stage_name("patch_k8_weights") and rundir.is_stage_name("patch_k8")


# ----------------------------------------------------------------------------- learning rates


def test_the_schedule_uses_the_stages_learning_rates(tmp_path):
    from tests.distributed.harness import StageHarness

    h = StageHarness([*BASE, "--train-iters", "12", *PATCH, "--patch-lr", "1e-2", "--patch-min-lr", "1e-3"],
                     str(tmp_path / "run"))
    try:
        h.step()  # warmup of 1 step: the peak
        groups = h.optimizer.param_groups
        assert {g["lr"] for g in groups} == {1e-2} and {g["max_lr"] for g in groups} == {1e-2}
        for _ in range(h.stage.train_iters - 1):
            h.step()
        assert [g["lr"] for g in groups] == pytest.approx([1e-3] * len(groups))  # decayed to --patch-min-lr
    finally:
        distributed.destroy()


# ----------------------------------------------------------------------------- whole runs


def _train(save, *flags):
    cfg = resolve(parse_config([*BASE, "--save", str(save), *flags]))
    try:
        return Trainer(cfg).train()
    finally:
        distributed.destroy()


def _adam(optimizer):
    """{(param index, key): tensor} of the (plain torch) Adam state, step counts included."""
    out = {}
    params = [p for group in optimizer.optimizer.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        for k, v in optimizer.optimizer.state.get(p, {}).items():
            out[(i, k)] = v.detach().clone() if torch.is_tensor(v) else v
    return out


def _losses(save, stage):
    return [r["loss"] for r in read_metrics(str(save)) if r["kind"] == "train" and r["stage"] == stage]


def test_carry_hands_the_optimizer_state_to_the_token_stage(tmp_path, monkeypatch):
    """reset (the paper) and carry train the same patch stage and start the token stage from the
    same weights (equal first loss); carry starts it with the patch stage's final Adam state, so
    its first update that moves the weights, and every loss after it, differ."""
    seen = {}
    save_orig, carry_orig = Checkpointer.save, Checkpointer.load_carried

    def save(self, stage, state, chunks, optimizer, scheduler):
        if stage.kind == "patch" and state.step == stage.train_iters:
            seen["patch_final"] = _adam(optimizer)
        return save_orig(self, stage, state, chunks, optimizer, scheduler)

    def load_carried(self, path, chunks, optimizer):
        carry_orig(self, path, chunks, optimizer)
        seen["token_start"] = _adam(optimizer)
        seen["token_start_groups"] = [(g["lr"], g["max_lr"], g["min_lr"]) for g in optimizer.param_groups]
        seen["carried_from"] = path

    monkeypatch.setattr(Checkpointer, "save", save)
    monkeypatch.setattr(Checkpointer, "load_carried", load_carried)
    flags = ["--train-iters", "8", *PATCH, "--patch-lr", "1e-2"]
    reset = _train(tmp_path / "reset", *flags)
    assert "token_start" not in seen  # reset: nothing carried, today's behaviour
    carry = _train(tmp_path / "carry", *flags, "--handover-optimizer", "carry")

    assert seen["carried_from"] == os.path.join(str(tmp_path / "carry"), "patch", "iter_0000004")
    final, start = seen["patch_final"], seen["token_start"]
    assert final.keys() == start.keys() and any(k == "exp_avg" for _, k in final)
    for key in final:  # Adam moments and step counts at token step 0 = the patch stage's last
        assert torch.equal(torch.as_tensor(final[key]), torch.as_tensor(start[key])), key
    # a fresh schedule for the token stage: its own peak (--lr, not --patch-lr), at step 0
    assert {g for g in seen["token_start_groups"]} == {(0.0, 3e-3, 3e-4)}

    assert _losses(tmp_path / "reset", "patch") == _losses(tmp_path / "carry", "patch")
    r, c = _losses(tmp_path / "reset", "token"), _losses(tmp_path / "carry", "token")
    # Step 1 of a stage runs at the warmup's lr of 0 (megatron-core's schedule starts at
    # init_lr = 0), so weights first move at step 2: from there carry and reset part.
    assert r[:2] == c[:2] and r[2] != c[2]
    assert [s["settings"]["carry_optimizer"] for s in carry["stages"]] == [False, True]
    assert [s["settings"]["carry_optimizer"] for s in reset["stages"]] == [False, False]
    assert carry["recipe"]["handover_optimizer"] == "carry" and reset["recipe"]["handover_optimizer"] == "reset"
    assert [s["settings"]["lr"] for s in carry["stages"]] == [1e-2, 3e-3]
    # The DistributedOptimizer carries the same state (a world of one: the same numbers).
    _train(tmp_path / "distopt", *flags, "--handover-optimizer", "carry", "--use-distributed-optimizer")
    # (Its flat buffers sum in another order: equal to float32 rounding, not bit for bit.)
    assert _losses(tmp_path / "distopt", "token") == pytest.approx(c, rel=1e-6)
    # A separate token launch must name the stage's full checkpoint, not its weights-only copy.
    with pytest.raises(rundir.CheckpointError, match="weights only"):
        _train(tmp_path / "token-only", *flags, "--handover-optimizer", "carry", "--stage", "token",
               "--init-from", str(tmp_path / "reset" / "patch_weights"))


def test_a_k_schedule_trains_stage_to_stage(tmp_path):
    """4:1/4,2:1/4 then token: three stages, each with its own directory and weights, the hand-over
    from stage to stage; --stage patch runs both patch stages, a --stage token launch continues."""
    save = tmp_path / "run"
    flags = ["--train-iters", "8", "--patch-schedule", "4:1/4,2:1/4", "--patch-seq-length", "32"]
    _train(save, *flags, "--stage", "patch")
    assert rundir.stage_names(str(save)) == ["patch_k4", "patch_k2"]
    assert rundir.is_checkpoint_dir(str(save / "patch_k4_weights"))  # handed over within the launch
    assert not os.path.exists(save / "patch_k2_weights")  # the token stage is another launch's
    account = _train(save, *flags, "--stage", "token", "--load", str(save))
    assert rundir.stage_names(str(save)) == ["patch_k4", "patch_k2", "token"]
    assert rundir.is_checkpoint_dir(str(save / "patch_k2_weights"))
    assert rundir.resolve_checkpoint(str(save)) == str(save / "token" / "iter_0000004")
    assert [(s["stage"], s["patch_size"], s["steps"]) for s in account["stages"]] == [
        ("patch_k4", 4, 2), ("patch_k2", 2, 2), ("token", 1, 4)]
    assert [tuple(s["settings"]["train_range"]) for s in account["stages"]] == [(0.0, 0.25), (0.25, 0.5), (0.5, 1.0)]
    assert account["ideal_ratio"] == pytest.approx(0.25 / 4 + 0.25 / 2 + 0.5)
    assert account["recipe"]["patch_schedule"] == [[4, 0.25], [2, 0.25]]
    with open(rundir.compute_path(str(save))) as f:
        assert json.load(f)["stages"][1]["settings"]["name"] == "patch_k2"
    stages = [(r["stage"], r["patch_size"]) for r in read_metrics(str(save)) if r["kind"] == "train"]
    assert stages == [("patch_k4", 4)] * 2 + [("patch_k2", 2)] * 2 + [("token", 1)] * 4
