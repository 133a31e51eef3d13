"""A Megatron-LM user's launch line runs as is (plus --patch-size/--patch-fraction) under torchrun,
and its dashboards work: TensorBoard in --tensorboard-dir, Weights & Biases offline with the same
records as metrics.jsonl. One 2-process launch."""
import glob
import json
import os
import struct

import pytest

from tests.distributed.train_common import make_corpus, read_metrics, run_cmd

pytestmark = pytest.mark.distributed


def megatron_line(prefix, tok, save, tb, wandb_dir):
    return [
        "--num-layers", "2", "--hidden-size", "64", "--ffn-hidden-size", "176",
        "--num-attention-heads", "4", "--group-query-attention", "--num-query-groups", "2",
        "--seq-length", "64", "--max-position-embeddings", "64", "--position-embedding-type", "rope",
        "--rotary-base", "10000", "--normalization", "RMSNorm", "--norm-epsilon", "1e-5", "--swiglu",
        "--disable-bias-linear", "--untie-embeddings-and-output-weights", "--init-method-std", "0.02",
        "--attention-dropout", "0.0", "--hidden-dropout", "0.0",
        "--tokenizer-type", "Llama2Tokenizer", "--tokenizer-model", tok, "--data-path", prefix,
        "--split", "90,10,0", "--micro-batch-size", "1", "--global-batch-size", "8",
        "--train-iters", "8", "--lr", "3e-3", "--min-lr", "3e-4", "--lr-decay-style", "cosine",
        "--lr-warmup-iters", "1", "--weight-decay", "0.1", "--clip-grad", "1.0",
        "--adam-beta1", "0.9", "--adam-beta2", "0.95", "--eval-iters", "1", "--eval-interval", "2",
        "--log-interval", "1", "--save-interval", "2", "--save", save, "--load", save,
        "--tensorboard-dir", tb, "--distributed-timeout-minutes", "5", "--seed", "1",
        "--transformer-impl", "local",
        "--wandb-project", "megatron-patch-test", "--wandb-exp-name", "launch-line",
        "--wandb-save-dir", wandb_dir,
        "--patch-size", "4", "--patch-fraction", "0.5",
    ]


def wandb_history(run_file: str) -> list:
    """The history rows of an offline W&B run file (W&B header, then LevelDB-style log records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(run_file, "rb").read()
    assert data[:4] == b":W&B"
    rows, pos, block, pending = [], 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        if length == 0 and kind == 0:
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


def test_megatron_launch_line_with_dashboards(tmp_path):
    pytest.importorskip("wandb")
    pytest.importorskip("tensorboard")
    prefix, tok = make_corpus(str(tmp_path / "data"))
    save, tb, wb = (str(tmp_path / n) for n in ("run", "tb", "wandb"))
    env_cmd = ["env", "WANDB_MODE=offline", "WANDB_SILENT=true"]
    proc = run_cmd([*env_cmd, "torchrun", "--nproc_per_node=2", "--standalone", "tools/pretrain.py",
                    *megatron_line(prefix, tok, save, tb, wb)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    records = read_metrics(save)
    train = [r for r in records if r["kind"] == "train"]
    # --max-position-embeddings counts transformer positions: 64 patches of 4 tokens fit.
    assert {(r["stage"], r["patch_size"]) for r in train} == {("patch", 4), ("token", 1)}
    assert "ms/step" in proc.stdout and " tokens | " in proc.stdout
    # TensorBoard events where --tensorboard-dir says, none in the run directory.
    assert glob.glob(os.path.join(tb, "events.out.tfevents.*"))
    assert not os.path.exists(os.path.join(save, "tensorboard"))
    # W&B (offline): the same train losses, step for step, as metrics.jsonl.
    (run_file,) = glob.glob(os.path.join(wb, "wandb", "offline-run-*", "run-*.wandb"))
    logged = [row["train/loss"] for row in wandb_history(run_file) if "train/loss" in row]
    assert logged == pytest.approx([r["loss"] for r in train], rel=1e-12)
    evals = [row["eval/val_loss"] for row in wandb_history(run_file) if "eval/val_loss" in row]
    assert evals == pytest.approx([r["val_loss"] for r in records if r["kind"] == "eval"], rel=1e-12)
