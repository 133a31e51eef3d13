"""tools/pretrain.py on bad input: a clear message on stderr and exit status 1, fast (before
process groups or megatron-core are even imported), plus a corrupted checkpoint on resume."""
import shutil

import pytest

from tests.distributed.train_common import e2e_run, make_corpus, tiny_flags, tool


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(str(tmp_path_factory.mktemp("data")))


def _fails(args, *messages):
    proc = tool("pretrain.py", *args)
    assert proc.returncode == 1, (proc.stdout[-2000:], proc.stderr[-4000:])
    for m in messages:
        assert m in proc.stderr, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    return proc


def test_missing_data_prefix(corpus, tmp_path):
    _, tok = corpus
    _fails(tiny_flags(str(tmp_path / "nope"), tok, str(tmp_path / "run"), **{"--train-iters": 4}),
           "nope.bin and", "nope.idx not found", "without .bin/.idx")


def test_sequence_length_not_a_multiple_of_k(corpus, tmp_path):
    prefix, tok = corpus
    _fails(tiny_flags(prefix, tok, str(tmp_path / "run"), **{
        "--train-iters": 4, "--patch-size": 4, "--patch-fraction": 0.5, "--patch-seq-length": 30}),
        "--patch-seq-length 30 is not a multiple of --patch-size 4", "use e.g. 28")


def test_batch_that_does_not_split(corpus, tmp_path):
    prefix, tok = corpus
    # K=4 with the same tokens per step: 4 samples of 64 tokens -> 1 patch sample of 256, which
    # cannot be split over the micro-batches of 2 asked for. (Left to itself the trainer lowers
    # the patch stage's micro-batch to 1: tests/unit/training/test_patch_batch.py.)
    _fails(tiny_flags(prefix, tok, str(tmp_path / "run"), **{
        "--train-iters": 4, "--patch-size": 4, "--patch-fraction": 0.5, "--lr-warmup-iters": 1,
        "--patch-micro-batch-size": 2}),
        "patch stage: global batch of 1 sequences is not a multiple of micro_batch_size")


@pytest.mark.distributed
def test_corrupted_checkpoint_on_resume(tmp_path):
    run = e2e_run()
    assert run["rc"] == 0
    save = tmp_path / "run"
    shutil.copytree(run["save"], save)
    # The token stage's pointer says step 5, whose tensor shards are damaged.
    (save / "token" / "latest_checkpointed_iteration.txt").write_text("5")
    for shard in (save / "token" / "iter_0000005").glob("*.distcp"):
        shard.write_bytes(shard.read_bytes()[:64])
    flags = [f for f in run["flags"]]
    flags[flags.index("--save") + 1] = str(save)
    i = flags.index("--pipeline-model-parallel-size")
    del flags[i:i + 2]  # resume in one process: another layout too
    _fails([*flags, "--load", str(save)], "failed to read checkpoint", "iter_0000005", "corrupted")
