"""Sequence parallel without a GPU: TP=2 + SP (sdpa spec) reproduces TP=1, fp32, through Adam steps.

One torchrun launch (2 gloo processes, ~20 s on 2 cores) trains K=1 and K=4 at both layouts
from the same weights on the same batches (tests/distributed/sp_worker.py). K=4 exercises the
patch embedding's reduce-scattered path (megatron_patch/patch.py) for the first time.
"""
import pytest

from tests._torchrun import torchrun

STEPS = 8


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return torchrun(
        "sp_worker.py", 2, ["--steps", STEPS, "--patch-sizes", "1,4", "--num-query-groups", 2],
        tmp_path=tmp_path_factory.mktemp("sp"),
    )


@pytest.mark.distributed
@pytest.mark.parametrize("K", ["1", "4"])
def test_tp2_sequence_parallel_matches_tp1(result, K):
    r = result[K]
    T = 16
    # The layer norms really ran on half the sequence at TP=2.
    assert r["norm_input_len"] == [T, T // 2]

    assert len(r["tp2sp_losses"]) == STEPS
    for step, (got, want) in enumerate(zip(r["tp2sp_losses"], r["tp1_losses"])):
        assert abs(got - want) < 1e-5, f"step {step}: TP2+SP loss {got} vs TP1 {want}"

    # Every parameter's gradient (TP shards gathered to full tensors), first and last step.
    for when in ("grad_diff_first", "grad_diff_last"):
        assert len(r[when]) == 27  # embedding, output layer, final norm, 4 layers x 6
        for name, (diff, scale) in r[when].items():
            assert diff <= 1e-5 + 1e-4 * scale, f"{when} {name}: max |diff| {diff} (grad max {scale})"

    # Weights after the steps. Adam divides by sqrt(v): a gradient entry near zero turns fp32
    # rounding differences into O(lr) steps, so allow 1e-4 (lr 1e-3 x 8 steps moves up to 8e-3).
    for name, (diff, _) in r["weight_diff"].items():
        assert diff < 1e-4, f"weight {name}: max |diff| {diff}"

    # Before finalize_model_grads a rank's norm gradient covers only its half of the sequence:
    # the `sequence_parallel` tag on the RMSNorm weights is what makes the match above possible.
    assert len(r["partial_norm_grad_diff"]) == 9
    for name, (diff, scale) in r["partial_norm_grad_diff"].items():
        assert diff > 1e-3 * scale, f"{name}: rank-local SP norm grad already equals the full one"
