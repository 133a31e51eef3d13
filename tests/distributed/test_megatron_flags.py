"""Megatron-LM's own example launch lines (tests/megatron_lm_examples.py: the GPT-3 175B and LLaMA-3
8B scripts of core_v0.16.1), scaled down, run as they are under torchrun with --patch-size and
--patch-fraction added and the flags this trainer refuses (each with its reason; the unit tests
check which) left out. The LLaMA-3 line also checks the dashboards: TensorBoard in
--tensorboard-dir, Weights & Biases offline with the same records as metrics.jsonl. Two 2-process
launches."""
import glob
import json
import os
import struct
import sys

import pytest

from tests.distributed.train_common import make_corpus, read_metrics, run_cmd
from tests.megatron_lm_examples import argv

pytestmark = pytest.mark.distributed
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]


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


def by_stage(records, kind="train"):
    out = {}
    for r in records:
        if r["kind"] == kind:
            out.setdefault(r["stage"], []).append(r)
    return out


def test_llama3_launch_line_with_dashboards(tmp_path):
    """examples/llama/train_llama3_8b_h100_fp8.sh (mock-data branch): GQA, --kv-channels, bf16,
    --grad-reduce-in-bf16, the DistributedOptimizer with overlapped reduce and gather, and the
    sample-based schedule (--train-samples, --lr-decay-samples, --lr-warmup-samples)."""
    pytest.importorskip("wandb")
    pytest.importorskip("tensorboard")
    save, tb, wb = (str(tmp_path / n) for n in ("run", "tb", "wandb"))
    line = argv("llama3_8b_mock", {"SAVE": save, "TB": tb, "CACHE": str(tmp_path / "cache")},
                scale=True, drop_refused=True)
    env_cmd = ["env", "WANDB_MODE=offline", "WANDB_SILENT=true"]
    proc = run_cmd([*env_cmd, *TORCHRUN, "tools/pretrain.py", *line,
                    "--patch-size", "4", "--patch-fraction", "0.5", "--wandb-project", "megatron-patch-test",
                    "--wandb-exp-name", "launch-line", "--wandb-save-dir", wb])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    records = read_metrics(save)
    train = [r for r in records if r["kind"] == "train"]
    stages = by_stage(records)
    # 64 samples of 8 per step = 8 token-stage steps: 4 patch steps (K=4, 2 sequences of 256
    # tokens) and 4 token steps. Warmup 8 samples = 1 step in each stage; decay over 48 of 64
    # samples = 3 of each stage's 4 steps, so the last step is at --min-lr (the lr logged at step
    # s is the schedule after s - 1 steps, as in Megatron-LM).
    assert {s: len(rs) for s, rs in stages.items()} == {"patch": 4, "token": 4}
    for rs in stages.values():
        assert [r["lr"] for r in rs] == pytest.approx([0.0, 1.5e-4, 8e-5, 1e-5])
    assert "ms/step" in proc.stdout and " tokens | " in proc.stdout
    assert proc.stdout.count("accepted, no effect: --use-mcore-models") == 1
    assert proc.stdout.count("defaults that differ from Megatron-LM's") == 1
    assert "--normalization RMSNorm (Megatron-LM: LayerNorm)" in proc.stdout  # the script sets none
    # TensorBoard events where --tensorboard-dir says, none in the run directory.
    assert glob.glob(os.path.join(tb, "events.out.tfevents.*"))
    assert not os.path.exists(os.path.join(save, "tensorboard"))
    # W&B (offline): the same train losses, step for step, as metrics.jsonl.
    (run_file,) = glob.glob(os.path.join(wb, "wandb", "offline-run-*", "run-*.wandb"))
    logged = [row["train/loss"] for row in wandb_history(run_file) if "train/loss" in row]
    assert logged == pytest.approx([r["loss"] for r in train], rel=1e-12)
    evals = [row["eval/val_loss"] for row in wandb_history(run_file) if "eval/val_loss" in row]
    assert evals == pytest.approx([r["val_loss"] for r in records if r["kind"] == "eval"], rel=1e-12)


def test_gpt3_launch_line(tmp_path):
    """examples/gpt3/train_gpt3_175b_distributed.sh at TP=2 on real .bin/.idx data (its GPT-2 BPE
    files replaced by the test corpus's tokenizer), with the iteration-based schedule:
    --lr-decay-iters and --lr-warmup-fraction, split between the stages by their share."""
    prefix, tok = make_corpus(str(tmp_path / "data"))
    save = str(tmp_path / "run")
    line = argv("gpt3_175b", {"SAVE": save, "TB": str(tmp_path / "tb"), "DATA": prefix}, scale=True,
                drop_refused=True, scale_over={"--tensor-model-parallel-size": "2"})
    i = line.index("--vocab-file")
    line[i:i + 4] = ["--tokenizer-type", "Llama2Tokenizer", "--tokenizer-model", tok]
    proc = run_cmd([*TORCHRUN, "tools/pretrain.py", *line,
                    "--patch-size", "4", "--patch-fraction", "0.5"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    stages = by_stage(read_metrics(save))
    # 16 steps: 8 per stage; decay over 12 of 16 = 6 of each stage's 8 steps, warmup a quarter of
    # that (2 steps); then the learning rate stays at --min-lr.
    assert {s: len(rs) for s, rs in stages.items()} == {"patch": 8, "token": 8}
    for rs in stages.values():
        lrs = [r["lr"] for r in rs]
        assert lrs[:3] == pytest.approx([0.0, 3e-5, 6e-5]), lrs
        assert lrs[-2:] == pytest.approx([6e-6] * 2) and lrs[-3] > 6e-6, lrs
