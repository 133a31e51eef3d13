"""The patch stage's micro-batch: lowered automatically to fit its sequences per data-parallel
rank, set with --patch-micro-batch-size, refused (naming a global batch that works) only when
no micro-batch can fit."""
import pytest

from megatron_patch.training.config import parse_config
from megatron_patch.training.stages import micro_batch_notes, plan_stages

DATA = ["--data-path", "corpus_text_document", "--tokenizer-model", "tok.model", "--model", "tiny",
        "--lr-warmup-iters", "1", "--train-iters", "30", "--seq-length", "64", "--patch-size", "4", "--patch-fraction", "2/3"]


def plan(*flags, dp):
    cfg = parse_config([*DATA, *flags])
    return cfg, plan_stages(cfg, dp)


def test_the_patch_micro_batch_is_lowered_to_fit_at_data_parallel_scale():
    # DP=64, --micro-batch-size 4 --global-batch-size 512: 128 patch sequences, 2 per rank.
    cfg, (patch, token) = plan("--micro-batch-size", "4", "--global-batch-size", "512", dp=64)
    assert (patch.global_batch_size, patch.micro_batch_size, token.micro_batch_size) == (128, 2, 4)
    (note,) = micro_batch_notes(cfg, [patch, token])
    assert note.startswith("patch stage: micro-batch 2 (--micro-batch-size 4")
    # One process, --micro-batch-size 16 --global-batch-size 16, K=4: 4 patch sequences per step.
    _, (patch, _) = plan("--micro-batch-size", "16", "--global-batch-size", "16", dp=1)
    assert (patch.global_batch_size, patch.micro_batch_size) == (4, 4)
    # The largest divisor, not just any: 12 patch sequences on 1 rank with a micro-batch of 8 -> 6.
    _, (patch, _) = plan("--micro-batch-size", "8", "--global-batch-size", "48", dp=1)
    assert (patch.global_batch_size, patch.micro_batch_size) == (12, 6)
    # Nothing to lower: no note.
    cfg, stages = plan("--micro-batch-size", "1", "--global-batch-size", "16", dp=2)
    assert [s.micro_batch_size for s in stages] == [1, 1] and micro_batch_notes(cfg, stages) == []


def test_an_explicit_patch_micro_batch_is_used_or_refused():
    cfg, (patch, token) = plan("--micro-batch-size", "4", "--global-batch-size", "64",
                               "--patch-micro-batch-size", "2", dp=2)
    assert (patch.micro_batch_size, token.micro_batch_size) == (2, 4) and micro_batch_notes(cfg, [patch]) == []
    with pytest.raises(ValueError, match="change --global-batch-size or --patch-micro-batch-size"):
        plan("--micro-batch-size", "4", "--global-batch-size", "64", "--patch-micro-batch-size", "3", dp=2)
    with pytest.raises(ValueError, match="--patch-micro-batch-size must be >= 1"):
        plan("--patch-micro-batch-size", "0", dp=1)


def test_no_micro_batch_fits_names_a_global_batch_that_would():
    # 4 token sequences -> 1 patch sequence per step cannot be split over 2 ranks.
    with pytest.raises(ValueError, match="multiple of 8 "):
        plan("--micro-batch-size", "1", "--global-batch-size", "4", dp=2)
    cfg, (patch, _) = plan("--micro-batch-size", "1", "--global-batch-size", "8", dp=2)
    assert patch.global_batch_size == 2
