"""The accidents of a long cluster run, done for real on CPU: a SIGTERM mid-stage, a relaunch with
the wrong flags, a second launch on a live run, a NaN, a torn metrics line, a hand-over from an
unfinished stage. Each runs tools/pretrain.py as users do (one process each; a few seconds)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests import ROOT
from tests.distributed.train_common import make_corpus, read_metrics, tiny_flags, tool, tree_digest

pytestmark = pytest.mark.distributed

EXIT_EARLY, EXIT_DIVERGED = 3, 2


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(str(tmp_path_factory.mktemp("data")))


def flags(corpus, save, **over):
    prefix, tok = corpus
    base = {"--train-iters": 600, "--patch-size": 4, "--patch-fraction": 0.5, "--patch-seq-length": 64,
            "--save-interval": 100, "--eval-iters": 1, "--log-interval": 1}
    base.update(over)
    return tiny_flags(prefix, tok, str(save), **base)


def losses(run_dir):
    return {f"{r['stage']}:{r['step']}": r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"}


def launch(args) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, str(ROOT / "tools" / "pretrain.py"), *map(str, args)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_line(proc, prefix: str, timeout: float = 120) -> list:
    lines, end = [], time.time() + timeout
    while time.time() < end:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"no line starting {prefix!r}: {''.join(lines)[-2000:]}")


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    save = tmp_path_factory.mktemp("ref") / "run"
    proc = tool("pretrain.py", *flags(corpus, save))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return save


def test_sigterm_saves_exits_3_and_the_relaunch_reproduces_the_run(corpus, reference, tmp_path):
    save = tmp_path / "run"
    args = flags(corpus, save, **{"--exit-signal-handler": True, "--load": str(save)})
    proc = launch(args)
    wait_for_line(proc, "step  20/")
    proc.send_signal(signal.SIGSTOP)  # hold the run mid-stage while a second launch tries it
    try:
        second = tool("pretrain.py", *args)
        assert second.returncode == 1 and "in use by a live run" in second.stderr, second.stderr[-2000:]
        proc.send_signal(signal.SIGTERM)  # SLURM's warning before the time limit
    finally:
        proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_EARLY, err[-3000:]
    assert "stopped early" in out and "received SIGTERM" in out
    with open(save / "patch" / "latest_checkpointed_iteration.txt") as f:
        stopped_at = int(f.read())
    assert 20 <= stopped_at < 300  # the current step finished, then one checkpoint
    assert f"patch:{stopped_at + 1}" not in losses(save)
    # The stage is unfinished: no hand-over from it, neither by conversion nor by --init-from.
    conv = tool("convert_checkpoint.py", "--load", save / "patch", "--save", tmp_path / "w", "--to", "token")
    assert conv.returncode == 1 and "unfinished" in conv.stderr and not (tmp_path / "w").exists()
    init = tool("pretrain.py", *flags(corpus, tmp_path / "other", **{"--init-from": str(save / "patch")}))
    assert init.returncode == 1 and "--allow-unfinished-stage" in init.stderr, init.stderr[-2000:]
    ok = tool("convert_checkpoint.py", "--load", save / "patch", "--save", tmp_path / "w", "--to", "token",
              "--allow-unfinished-stage")
    assert ok.returncode == 0, ok.stderr[-2000:]
    # A kill mid-write leaves a torn last line; the relaunch repairs it and goes on.
    with open(save / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "stage": "pa')
    resumed = tool("pretrain.py", *flags(corpus, save, **{"--load": str(save)}))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {save / 'patch' / f'iter_{stopped_at:07d}'}" in resumed.stdout
    assert losses(save) == losses(reference)  # step for step, bit for bit
    assert [r["kind"] for r in read_metrics(save)].count("data") == 2  # one per stage, not repeated


def test_relaunch_without_load_leaves_the_run_untouched(corpus, reference):
    before = tree_digest(str(reference))
    proc = tool("pretrain.py", *flags(corpus, reference, **{"--seed": 99}))
    assert proc.returncode == 1
    assert f"--load {reference}" in proc.stderr and "nothing was changed" in proc.stderr
    assert tree_digest(str(reference)) == before
    bogus = tool("pretrain.py", *flags(corpus, reference.parent / "new", **{"--load": str(ROOT / "examples")}))
    assert bogus.returncode == 1 and "is not a run directory or checkpoint directory" in bogus.stderr


def test_data_epochs_are_recorded_and_eval_iters_0_means_no_validation(corpus, reference, tmp_path):
    data = [r for r in read_metrics(reference) if r["kind"] == "data"]
    assert [(r["stage"], r["patch_size"]) for r in data] == [("patch", 4), ("token", 1)]
    assert [r["samples"] for r in data] == [300 * 4, 300 * 4] and all(r["epochs"] > 0 for r in data)
    # A budget larger than a stage's share of the data: the repetition is printed and recorded.
    save = tmp_path / "run"
    proc = tool("pretrain.py", *flags(corpus, save, **{"--train-iters": 4, "--eval-iters": 0,
                                                        "--global-batch-size": 200, "--micro-batch-size": 100,
                                                        "--patch-size": 1, "--patch-fraction": 0,
                                                        "--patch-seq-length": None, "--save-interval": None}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (rec,) = [r for r in read_metrics(save) if r["kind"] == "data"]
    assert rec["epochs"] > 1 and "the data repeats" in proc.stdout
    assert not [r for r in read_metrics(save) if r["kind"] == "eval"]


def _nan_weights(corpus, path):
    """A weights-only checkpoint of the tiny model with one NaN weight (saved by the product)."""
    import torch

    from megatron_patch.training import builders, checkpointing
    from megatron_patch.training.config import parse_config
    from megatron_patch.training.preflight import resolve
    from tests._inproc import world_of_one

    cfg = resolve(parse_config(flags(corpus, path.parent / "unused")))
    with world_of_one():
        (chunk,) = builders.build_chunks(cfg, 1)
        with torch.no_grad():
            chunk.decoder.layers[0].mlp.linear_fc2.weight[0, 0] = float("nan")
        checkpointing.save_checkpoint(str(path), cfg, [chunk])


@pytest.mark.parametrize("skip", [0, 2])
def test_a_nan_stops_the_run_before_any_update_is_saved(corpus, tmp_path, skip):
    _nan_weights(corpus, tmp_path / "nan")
    save = tmp_path / "run"
    proc = tool("pretrain.py", *flags(corpus, save, **{"--init-from": str(tmp_path / "nan"),
                                                        "--skip-bad-steps": skip, "--save-interval": 1}))
    assert proc.returncode == EXIT_DIVERGED, proc.stderr[-3000:]
    assert f"patch stage (K=4) step {skip + 1}: loss nan" in proc.stderr
    assert "this stage has no checkpoint yet" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout.count("update skipped") == skip
    assert not (save / "patch").exists()  # nothing saved: not even the skipped steps' checkpoints
