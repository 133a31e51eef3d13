"""Every command is a package function: tools/X.py is a thin shell over megatron_patch.cli.X, and
setup.py's console scripts name the same functions."""
import ast
import importlib
import re

import pytest

from tests import ROOT

TOOLS = sorted(p for p in (ROOT / "tools").glob("*.py"))


def _setup_clis():
    text = (ROOT / "setup.py").read_text()
    block = re.search(r"CLIS = \((.*?)\)", text, re.S).group(1)
    return ast.literal_eval("(" + block + ")")


@pytest.mark.parametrize("tool", TOOLS, ids=lambda p: p.name)
def test_tools_are_thin_shells(tool):
    tree = ast.parse(tool.read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert [(n.module, [a.name for a in n.names]) for n in imports] == [(f"megatron_patch.cli.{tool.stem}", ["main"])]
    assert "sys.path" not in tool.read_text()
    assert len(tool.read_text().splitlines()) <= 15


def test_console_scripts_and_tools_match():
    clis = _setup_clis()
    assert sorted(clis) == sorted(t.stem for t in TOOLS)
    for name in clis:
        assert callable(importlib.import_module(f"megatron_patch.cli.{name}").main), name
