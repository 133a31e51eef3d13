"""--to hf / --from hf without the Hugging Face packages fail at start with the extra to install,
before a model is loaded or anything is written (the missing package simulated in a subprocess).

    pytest -q tests/unit/export/test_hf_requirements.py
"""
import os
import subprocess
import sys

import pytest

from megatron_patch.export.hf import HF_EXTRA


def _convert(hide, args):
    code = ("import sys\n"
            f"sys.modules[{hide!r}] = None  # its import raises ImportError, as when not installed\n"
            "from megatron_patch.cli.convert_checkpoint import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.mark.parametrize("hide,args,flag", [
    ("safetensors", ["--from", "hf"], "--from hf"),
    ("safetensors", ["--to", "hf"], "--to hf"),
    ("tokenizers", ["--to", "hf"], "--to hf"),
])
def test_hf_conversion_without_package_fails_at_start(tmp_path, hide, args, flag):
    src = tmp_path / "src"
    src.mkdir()  # not even read: the check comes first
    proc = _convert(hide, [*args, "--load", str(src), "--save", str(tmp_path / "out")])
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert flag in proc.stderr and hide in proc.stderr and HF_EXTRA in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
