"""ownership.check_launch: which launches may use a run directory (no process groups needed)."""
import types

import pytest

from megatron_patch.training.ownership import RunLock, check_launch


def launch(save, load=None):
    return types.SimpleNamespace(checkpoint=types.SimpleNamespace(save=str(save), load=load and str(load)))


def make_run(path):
    (path / "patch").mkdir(parents=True)
    (path / "patch" / "latest_checkpointed_iteration.txt").write_text("5")
    return path


def test_first_launches(tmp_path):
    check_launch(launch(tmp_path / "new"))                        # a new directory
    check_launch(launch(tmp_path / "new", tmp_path / "new"))      # --save D --load D, nothing yet
    logs = tmp_path / "logs_inside"
    logs.mkdir()
    (logs / "slurm-1.out").write_text("x")
    check_launch(launch(logs, logs))                               # non-empty, but holds no run


def test_a_used_directory_is_resumed_or_left_alone(tmp_path):
    run = make_run(tmp_path / "run")
    check_launch(launch(run, run))
    with pytest.raises(ValueError, match="already holds a run.*--load"):
        check_launch(launch(run))
    with pytest.raises(ValueError, match="already holds a run"):
        check_launch(launch(run, make_run(tmp_path / "other")))   # writing into another run's directory


def test_load_must_be_a_run_or_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        check_launch(launch(tmp_path / "new", tmp_path / "missing"))
    stray = tmp_path / "stray"
    (stray / "notes").mkdir(parents=True)
    (stray / "notes" / "latest_checkpointed_iteration.txt").write_text("1")  # not a stage name
    with pytest.raises(ValueError, match="not a run directory or checkpoint directory"):
        check_launch(launch(tmp_path / "new", stray))
    check_launch(launch(tmp_path / "new", make_run(tmp_path / "old") / "patch"))  # a checkpoint dir


def test_one_live_launch_per_run_directory(tmp_path):
    first, second = RunLock(str(tmp_path)), RunLock(str(tmp_path))
    first.acquire()
    try:
        with pytest.raises(ValueError, match="in use by a live run"):
            second.acquire()
    finally:
        first.release()
    second.acquire()
    second.release()
