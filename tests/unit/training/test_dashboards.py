"""A dashboard a flag asks for (--tensorboard-dir, --wandb-project) without its package fails at
start, on every rank, with exit status 1 and the extra to install; nothing is trained or written.
The missing package is simulated in a subprocess (None in sys.modules makes its import fail).

    pytest -q tests/unit/training/test_dashboards.py
"""
import os
import subprocess
import sys

import pytest

from megatron_patch.training.config import LoggingConfig
from megatron_patch.training.metrics import DASHBOARDS_EXTRA, check_dashboards

BASE = ["--model", "tiny", "--num-layers", "2", "--mock-data", "--tokenizer-type", "NullTokenizer",
        "--vocab-size", "300", "--seq-length", "32", "--global-batch-size", "4", "--micro-batch-size", "2",
        "--train-iters", "2", "--eval-iters", "0"]
HIDE = {"tensorboard": ("tensorboard", "torch.utils.tensorboard"), "wandb": ("wandb",)}


def _pretrain(hide, args, rank=0, world=1):
    code = ("import sys\n"
            f"for name in {HIDE[hide]!r}:\n"
            "    sys.modules[name] = None  # import of it raises ImportError, as when not installed\n"
            "from megatron_patch.cli.pretrain import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.parametrize("hide,flags,named", [
    ("tensorboard", ["--tensorboard-dir", "TB"], "--tensorboard-dir"),
    ("wandb", ["--wandb-project", "p"], "--wandb-project"),
])
def test_requested_dashboard_without_package_fails_at_start(tmp_path, hide, flags, named):
    run = tmp_path / "run"
    flags = [str(tmp_path / f) if f == "TB" else f for f in flags]
    proc = _pretrain(hide, [*BASE, "--save", str(run), *flags])
    assert proc.returncode == 1, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert named in proc.stderr and DASHBOARDS_EXTRA in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not run.exists() and not (tmp_path / "TB").exists()  # before any training or writing
    # Another rank fails the same way (the check is in preflight, not on rank 0 only), quietly.
    other = _pretrain(hide, [*BASE, "--global-batch-size", "8", "--save", str(run), *flags], rank=1, world=2)
    assert other.returncode == 1 and "Traceback" not in other.stderr, other.stderr[-3000:]


def test_default_tensorboard_without_package_is_off_and_says_so(tmp_path):
    code = ("import sys\n"
            "sys.modules['tensorboard'] = sys.modules['torch.utils.tensorboard'] = None\n"
            "from megatron_patch.training.config import LoggingConfig\n"
            "from megatron_patch.training.metrics import MetricsLogger\n"
            f"log = MetricsLogger({str(tmp_path)!r}, LoggingConfig())\n"
            "assert log.tb is None\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TensorBoard events off" in proc.stdout and DASHBOARDS_EXTRA in proc.stdout


def test_installed_dashboards_pass_the_check(tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    pytest.importorskip("wandb")
    check_dashboards(LoggingConfig(tensorboard_dir=str(tmp_path), wandb_project="p"))
    check_dashboards(LoggingConfig(tensorboard=False, tensorboard_dir=str(tmp_path)))  # --no-tensorboard wins
