"""The extra Megatron-LM flags do what they say, in real runs (one process, mock data): activation
recomputation, --use-flash-attn, --train-samples, and a --finetune start from another run's weights
with --no-load-optim / --no-load-rng."""
from tests.distributed.train_common import read_metrics, tool

MOCK = ["--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "500", "--model", "tiny",
        "--num-layers", "2", "--seq-length", "32", "--micro-batch-size", "2", "--global-batch-size", "4",
        "--lr", "3e-3", "--lr-warmup-iters", "1", "--eval-iters", "1", "--log-interval", "1"]


def losses(run):
    return [r["loss"] for r in read_metrics(str(run)) if r["kind"] == "train"]


def test_recompute_flash_and_train_samples(tmp_path):
    plain = tool("pretrain.py", *MOCK, "--train-samples", "16", "--save", tmp_path / "plain")
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert len(losses(tmp_path / "plain")) == 4  # 16 samples / 4 per step
    for name, flags in (("selective", ["--recompute-activations", "--use-flash-attn"]),
                        ("full", ["--recompute-granularity", "full", "--recompute-method", "uniform",
                                  "--recompute-num-layers", "1"])):
        run = tool("pretrain.py", *MOCK, "--train-samples", "16", *flags, "--save", tmp_path / name)
        assert run.returncode == 0, run.stderr[-3000:]
        # Recomputation changes memory, not the numbers.
        assert losses(tmp_path / name) == losses(tmp_path / "plain"), name


def test_finetune_starts_from_the_weights_only(tmp_path):
    first = tool("pretrain.py", *MOCK, "--train-iters", "4", "--save", tmp_path / "a")
    assert first.returncode == 0, first.stderr[-3000:]
    tuned = tool("pretrain.py", *MOCK, "--train-iters", "4", "--load", tmp_path / "a", "--finetune",
                 "--no-load-optim", "--no-load-rng", "--save", tmp_path / "b")
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    assert f"weights from {tmp_path / 'a' / 'token' / 'iter_0000004'}" in tuned.stdout
    steps = [r["step"] for r in read_metrics(str(tmp_path / "b")) if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4]  # step 0, a fresh optimizer and schedule
    # It starts where the first run ended, not from a fresh initialisation.
    assert losses(tmp_path / "b")[0] < losses(tmp_path / "a")[0] - 0.1
