"""tools/convert_checkpoint.py and tools/evaluate.py on the checkpoints of the end-to-end run
(saved at PP=2 by 2 processes): weights-only conversion loads at TP1/PP1 with identical numbers,
the source is never modified, HF export, and clear errors for bad inputs."""
import json
import os
import shutil

import pytest

from tests.distributed.train_common import (
    e2e_run, load_tool, make_tokenizer, read_metrics, tool, tree_digest,
)

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def run():
    r = e2e_run()
    if r["rc"] != 0:
        pytest.fail("the end-to-end run failed:\n" + r["stderr"][-4000:])
    return r


def _final_val(run, stage):
    return [r["val_loss"] for r in read_metrics(run["save"]) if r["kind"] == "eval" and r["stage"] == stage][-1]


def test_token_conversion_round_trip(run, tmp_path):
    src = os.path.join(run["save"], "patch")
    before = tree_digest(src)
    dst = tmp_path / "weights"
    proc = tool("convert_checkpoint.py", "--load", src, "--save", dst, "--to", "token")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert tree_digest(src) == before  # the source is only read
    assert (dst / "latest_checkpointed_iteration.txt").read_text() == "release"
    assert sorted(os.listdir(dst)) == ["latest_checkpointed_iteration.txt", "release"]

    # Weights only: no optimizer tensors, no train state / scheduler / RNG.
    import torch
    from megatron.core import dist_checkpointing

    meta = json.loads((dst / "release" / "metadata.json").read_text())
    assert meta["sharded_backend"] == "torch_dist"
    common = torch.load(dst / "release" / "common.pt", weights_only=False)
    assert common["kind"] == "weights"
    assert not {"train_state", "scheduler", "optimizer", "rng_state"} & set(common)
    keys = set(dist_checkpointing.load_tensors_metadata(str(dst / "release")))
    assert keys and not any(k.startswith("optimizer") for k in keys)

    # Saved at PP=2, converted and evaluated at TP1/PP1 in one process: the token-level
    # validation loss is exactly the patch stage's final val_loss of the training run.
    out = tmp_path / "eval.json"
    proc = tool("evaluate.py", "--load", dst, "--data-path", run["prefix"],
                "--tokenizer-model", run["tok"], "--patch-size", "4", "--output", out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == json.loads(out.read_text())
    assert result["loss"] == pytest.approx(_final_val(run, "patch"), abs=1e-5)
    assert result["tokens"] > 0 and result["patch_loss"] > 0
    assert result["ppl"] == pytest.approx(2.718281828459045 ** result["loss"], rel=1e-6)


def test_hf_export(run, tmp_path):
    # From a run directory (its last stage), as examples/demo.sh does.
    dst = tmp_path / "hf"
    proc = tool("convert_checkpoint.py", "--load", run["save"], "--save", dst, "--to", "hf",
                "--tokenizer-model", run["tok"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    config = json.loads((dst / "config.json").read_text())
    assert config["vocab_size"] == 400 and config["num_hidden_layers"] == 2
    assert (dst / "model.safetensors").is_file() and (dst / "tokenizer.model").is_file()


def test_bad_inputs_are_clear_errors(run, tmp_path, capsys):
    convert, evaluate = load_tool("convert_checkpoint.py").main, load_tool("evaluate.py").main

    # Missing source (as a process: exit status 1 and the message on stderr).
    proc = tool("convert_checkpoint.py", "--load", tmp_path / "nope", "--save", tmp_path / "x", "--to", "token")
    assert proc.returncode == 1 and "does not exist" in proc.stderr, proc.stderr[-2000:]
    # The rest in this process (main() returns the exit status).
    (tmp_path / "empty").mkdir()
    assert convert(["--load", str(tmp_path / "empty"), "--save", str(tmp_path / "y"), "--to", "token"]) == 1
    assert "no latest_checkpointed_iteration.txt" in capsys.readouterr().err
    # A model config that does not match the checkpoint (cpu_demo is the cpu-small preset).
    cfg = os.path.join(os.path.dirname(__file__), "..", "..", "..", "examples", "configs", "cpu_demo.yaml")
    assert convert(["--load", os.path.join(run["save"], "token"), "--save", str(tmp_path / "z"),
                    "--to", "token", "--config", cfg, "--tokenizer-model", run["tok"]]) == 1
    assert "different model" in capsys.readouterr().err and not (tmp_path / "z").exists()
    # Corrupted: a truncated tensor shard; incomplete: a missing metadata file.
    bad = tmp_path / "bad"
    shutil.copytree(os.path.join(run["save"], "token"), bad)
    shard = sorted((bad / "iter_0000010").glob("*.distcp"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    data = ["--data-path", run["prefix"], "--tokenizer-model", run["tok"]]
    assert evaluate(["--load", str(bad), *data]) == 1
    err = capsys.readouterr().err
    assert "corrupted" in err and "iter_0000010" in err
    (bad / "iter_0000010" / ".metadata").unlink()
    assert evaluate(["--load", str(bad), *data]) == 1
    assert "incomplete or corrupted: missing ['.metadata']" in capsys.readouterr().err
    # The destination of a conversion may not be inside its source.
    src = os.path.join(run["save"], "token")
    assert convert(["--load", src, "--save", os.path.join(src, "out"), "--to", "token"]) == 1
    assert "never modified" in capsys.readouterr().err
    # A tokenizer of another vocabulary than the run's.
    other = make_tokenizer(tmp_path / "other", vocab_size=300)
    assert evaluate(["--load", os.path.join(run["save"], "token"), "--data-path", run["prefix"],
                     "--tokenizer-model", other]) == 1
    assert "vocab_size 400" in capsys.readouterr().err
