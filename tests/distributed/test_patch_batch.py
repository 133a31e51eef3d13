"""A DP=2 run whose --micro-batch-size is larger than the patch stage's sequences per rank
(gbs/K/DP): the patch stage trains with the lowered micro-batch and says so once. One launch."""
import pytest

from tests.distributed.train_common import make_corpus, read_metrics, tiny_flags, tool

pytestmark = pytest.mark.distributed


def test_dp2_patch_stage_trains_with_the_lowered_micro_batch(tmp_path):
    prefix, tok = make_corpus(str(tmp_path / "data"))
    save = tmp_path / "run"
    # 8 token sequences per step -> 2 patch sequences (K=4): 1 per rank, below --micro-batch-size 4.
    proc = tool("pretrain.py", *tiny_flags(prefix, tok, str(save), **{
        "--train-iters": 6, "--patch-size": 4, "--patch-fraction": 0.5, "--micro-batch-size": 4,
        "--global-batch-size": 8, "--eval-iters": 1}), nproc=2)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("patch stage: micro-batch 1 (--micro-batch-size 4") == 1, proc.stdout[-3000:]
    records = read_metrics(str(save))
    steps = [(r["stage"], r["step"]) for r in records if r["kind"] == "train"]
    assert steps == [("patch", s) for s in (1, 2, 3)] + [("token", s) for s in (1, 2, 3)]
    data = [r for r in records if r["kind"] == "data"]
    assert [(r["sources"][0]["samples"], r["sources"][0]["share"]) for r in data] == [(6, 1.0), (24, 1.0)]
