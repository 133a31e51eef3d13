"""`--bf16` on CPU trains like `--fp32`: the same two-stage run, step for step.

bf16 takes the GPU's mixed-precision path here too (megatron-core's Float16Module: bf16 weights
and activations; Float16OptimizerWithFloat16Params: fp32 main weights and Adam state; the loss in
fp32); only the kernels differ. Over 12 steps (6 at K=4, then 6 at K=1 from the converted
weights) the losses must stay within 3% of the fp32 run's.
"""
import os

import pytest
import yaml

from tests.distributed.train_common import make_corpus, read_metrics, tiny_flags, tool


def _train_losses(run_dir):
    return {(r["stage"], r["step"]): r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bf16")
    prefix, tok = make_corpus(str(tmp / "data"))
    out = {}
    for dtype in ("bf16", "fp32"):
        save = str(tmp / dtype)
        flags = tiny_flags(prefix, tok, save, **{
            "--train-iters": 12, "--patch-size": 4, "--patch-fraction": 0.5,
            "--patch-seq-length": 64, f"--{dtype}": True,
        })
        proc = tool("pretrain.py", *flags, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[dtype] = save
    return out


def test_bf16_run_tracks_fp32_step_for_step(runs):
    bf16, fp32 = _train_losses(runs["bf16"]), _train_losses(runs["fp32"])
    expected = [("patch", s) for s in range(1, 7)] + [("token", s) for s in range(1, 7)]
    assert sorted(bf16) == sorted(fp32) == sorted(expected)
    for key in expected:
        rel = abs(bf16[key] - fp32[key]) / fp32[key]
        assert rel <= 0.03, f"{key}: bf16 loss {bf16[key]:.4f} vs fp32 {fp32[key]:.4f} ({rel:.2%})"
    # Both runs learn (the token stage ends well below its start), and they are different runs:
    # identical losses would mean --bf16 silently trained in fp32.
    assert bf16[("token", 6)] < bf16[("patch", 1)] - 0.5
    assert any(bf16[k] != fp32[k] for k in expected)


def test_bf16_run_records_its_dtype(runs):
    for dtype, want in (("bf16", True), ("fp32", False)):
        ckpt = os.path.join(runs[dtype], "token", "iter_0000006", "config.yaml")
        with open(ckpt) as f:
            assert yaml.safe_load(f)["train"]["bf16"] is want
