"""Launch a worker script under torchrun (gloo, CPU) and read back the JSON its rank 0 wrote.

Workers live in tests/distributed/ and write their results with `write_result(obj)` to the path
in $RESULT_JSON. One launch per scenario: a launch costs seconds, a step milliseconds. `--standalone` lets
torchrun bind its own free port, so concurrent launches cannot collide.
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def torchrun(script: str, nproc: int, args=(), tmp_path=None, timeout: int = 600, env=None) -> dict:
    """Run tests/distributed/<script> on `nproc` processes; return rank 0's JSON result."""
    out = Path(tempfile.mkdtemp(prefix="result_", dir=tmp_path)) / "result.json"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
        "--standalone", str(ROOT / "tests" / "distributed" / script), *map(str, args),
    ]
    full_env = dict(os.environ, RESULT_JSON=str(out), OMP_NUM_THREADS="1",
                    PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    full_env.update(env or {})
    proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{script} failed (rc={proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return json.loads(out.read_text())


def write_result(obj) -> None:
    """Called by a worker on rank 0."""
    path = os.environ["RESULT_JSON"]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)
