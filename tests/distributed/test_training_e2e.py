"""The whole recipe as one command: 2 CPU processes (gloo, PP=2), patch stage -> weights-only
hand-over -> token stage; plus kill-and-resume equality (plain and DistributedOptimizer) and
resuming at another layout. Two torchrun launches in all."""
import json
import math
import os
import re

import pytest

from tests._torchrun import torchrun
from tests.distributed.train_common import e2e_run, make_corpus, read_metrics

pytestmark = pytest.mark.distributed

LINE = re.compile(
    r"^step +\d+/\d+ \| stage (patch|token) K=\d \| loss \d+\.\d+ \| lr \S+ \| grad \d+\.\d+ \| "
    r"\d+ ms/step \| \S+ tok/s \| \S+ tokens \| \S+ TFLOP/s \| \d+\.\d GiB$"
)


def test_two_stage_run_end_to_end():
    run = e2e_run()
    assert run["rc"] == 0, run["stdout"][-3000:] + run["stderr"][-6000:]
    save = run["save"]
    records = read_metrics(save)
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    patch = [r for r in train if r["stage"] == "patch"]
    token = [r for r in train if r["stage"] == "token"]
    # lambda = 1/2 of 20 steps; same tokens per step in both stages (patch_seq_length = seq_length).
    assert [r["step"] for r in patch] == list(range(1, 11)) and {r["patch_size"] for r in patch} == {4}
    assert [r["step"] for r in token] == list(range(1, 11)) and {r["patch_size"] for r in token} == {1}
    for r in train:
        assert set(r) == {"kind", "stage", "patch_size", "step", "train_iters", "loss", "lr", "grad_norm",
                          "ms_per_step", "tokens_per_s", "tflops", "mfu", "mem_gib", "tokens", "flops", "wall_s"}
        assert r["mfu"] is None and r["tokens_per_s"] > 0 and math.isfinite(r["loss"])
    assert [r["tokens"] for r in train] == [256 * i for i in range(1, 21)]  # cumulative, K per patch
    # Learning, in both stages, and the token stage starts where the patch stage left off
    # (a fresh model would start near ln(vocab) = ln(400) ~ 6).
    assert patch[-1]["loss"] < patch[0]["loss"] - 0.5
    assert token[-1]["loss"] < token[0]["loss"]
    assert token[0]["loss"] < patch[0]["loss"] - 0.5
    assert "weights from " + os.path.join(save, "patch_weights", "release") in run["stdout"]
    # Token-level validation every 5 steps and at the end of each stage.
    assert [(r["stage"], r["step"]) for r in evals] == [
        ("patch", 5), ("patch", 10), ("token", 5), ("token", 10)]
    assert all(abs(r["val_ppl"] - math.exp(r["val_loss"])) < 1e-6 * r["val_ppl"] for r in evals)
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    # One log line per step, on one rank.
    lines = [ln for ln in run["stdout"].splitlines() if ln.startswith("step ")]
    assert len(lines) == 20 and all(LINE.match(ln) for ln in lines), lines[:3]
    # Checkpoints in Megatron's layout, each with its resolved config; the pointer is last.
    for sub, expect in (("patch", "10"), ("patch_weights", "release"), ("token", "10")):
        with open(os.path.join(save, sub, "latest_checkpointed_iteration.txt")) as f:
            assert f.read() == expect
    for sub in ("patch/iter_0000005", "patch/iter_0000010", "patch_weights/release",
                "token/iter_0000005", "token/iter_0000010"):
        assert os.path.isfile(os.path.join(save, sub, "config.yaml")), sub
        assert os.path.isfile(os.path.join(save, sub, "metadata.json")), sub
    # The compute account: patch positions cost ~1/K of token positions.
    with open(os.path.join(save, "compute.json")) as f:
        account = json.load(f)
    assert [s["stage"] for s in account["stages"]] == ["patch", "token"]
    assert [s["steps"] for s in account["stages"]] == [10, 10]
    assert account["ideal_ratio"] == pytest.approx(0.5 / 4 + 0.5)
    assert account["ratio"] == pytest.approx(account["total_flops"] / account["token_only_flops"])
    assert 0.5 < account["ratio"] < 0.7
    assert account["final_val_loss"] == pytest.approx(evals[-1]["val_loss"])
    assert "compute account" in run["stdout"]


def test_kill_and_resume_reproduces_losses(tmp_path):
    prefix, tok = make_corpus(str(tmp_path / "data"))
    result = torchrun("train_resume.py", 2, [tmp_path, prefix, tok], tmp_path=tmp_path)
    for mode in ("plain", "distopt"):
        res = result[mode]
        # Step for step, bit for bit: the resumed run restored step, optimizer (incl. Adam's
        # step counts), scheduler, RNG and the data position.
        assert res["A"] == res["B"], mode
        assert res["A_val"] == res["B_val"], mode
    assert set(result["plain"]["A"]) == {f"token:{i}" for i in range(1, 7)}
    assert set(result["distopt"]["A"]) == {f"{s}:{i}" for s in ("patch", "token") for i in range(1, 7)}
    # Saved at DP=2, resumed at TP=2: the same run up to float reduction order.
    a, c = result["distopt"]["A"], result["distopt"]["C"]
    for step in (4, 5, 6):
        assert c[f"token:{step}"] == pytest.approx(a[f"token:{step}"], abs=1e-5)
    stages = result["distopt"]["C_compute"]["stages"]
    assert [(s["stage"], s["steps"]) for s in stages] == [("patch", 6), ("token", 6)]
