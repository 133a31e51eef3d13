"""tools/run_status.py: where a stage stands, against a real tiny run directory (4 + 4 steps,
stopped by --exit-interval after step 2 of the patch stage, then resumed to the end)."""
import os
import subprocess
import sys


from megatron_patch.cli.run_status import main
from tests import ROOT
from tests.distributed.train_common import make_corpus, tiny_flags, tool

EXIT_EARLY = 3


def status(capsys, *argv):
    rc = main([*map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_bad_arguments_and_runs_not_started(tmp_path, capsys):
    rc, _, err = status(capsys, tmp_path / "missing", "--stage", "patch")
    assert rc == 2 and "does not exist" in err
    (tmp_path / "file").write_text("x")
    rc, _, err = status(capsys, tmp_path / "file", "--stage", "token")
    assert rc == 2 and "not a directory" in err
    rc, _, err = status(capsys, tmp_path, "--stage", "all")
    assert rc == 2 and "not a stage name" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, out, _ = status(capsys, empty, "--stage", "patch")
    assert rc == 1 and "patch stage: not started (no run yet)" in out and "patch weights: absent" in out
    # A pointer to a checkpoint that is not there (a save cut short): not complete, and says why.
    (empty / "patch").mkdir()
    (empty / "patch" / "latest_checkpointed_iteration.txt").write_text("7")
    rc, out, _ = status(capsys, empty, "--stage", "patch")
    assert rc == 1 and "not complete" in out and "iter_0000007" in out
    rc, _, err = status(capsys, empty / "patch", "--stage", "patch")
    assert rc == 2 and "checkpoint directory, not a run directory" in err


def test_an_unfinished_then_a_complete_stage(tmp_path, capsys):
    prefix, tok = make_corpus(str(tmp_path / "data"))
    save = tmp_path / "run"
    flags = tiny_flags(prefix, tok, str(save), **{
        "--train-iters": 8, "--patch-size": 4, "--patch-fraction": 0.5, "--patch-seq-length": 64,
        "--lr-warmup-iters": 1, "--eval-iters": 1, "--load": str(save)})
    stopped = tool("pretrain.py", *flags, "--exit-interval", "2")
    assert stopped.returncode == EXIT_EARLY, stopped.stderr[-3000:]
    rc, out, _ = status(capsys, save, "--stage", "patch")
    # Stopped on purpose (the trainer's "exit" record matches the checkpoint): 3, continue it.
    assert rc == 3 and "patch stage: step 2 of 4, stopped early (--exit-interval 2 reached at step 2)" in out
    assert "iter_0000002" in out
    assert "patch weights: absent" in out
    rc, out, _ = status(capsys, save, "--stage", "token")
    assert rc == 1 and f"token stage: not started (no checkpoint in {save / 'token'})" in out
    # The shell in tools/ (what batch scripts call) answers with its exit status; no torch needed here.
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    shell = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "tools" / "run_status.py"), str(save),
                            "--stage", "token"], env=env, capture_output=True, text=True)
    assert shell.returncode == 1 and "token stage: not started" in shell.stdout
    assert " torch\n" not in shell.stderr  # the import log: torch stays unloaded

    done = tool("pretrain.py", *flags)
    assert done.returncode == 0, done.stderr[-3000:]
    for stage in ("patch", "token"):
        rc, out, _ = status(capsys, save, "--stage", stage)
        assert rc == 0 and f"{stage} stage: complete, step 4 of 4" in out, out
        assert "patch weights: present" in out
