"""Every `tools/*.py` command line in README.md, docs/*.md and examples/slurm/README.md parses with
the real parser of that tool (megatron_patch/cli/<name>.py; tools/pretrain.py through
parse_config, which also checks the values). Command lines are python or torchrun running tools/NAME.py, taken
from code blocks (fenced or indented, with backslash continuations; comments dropped) and from
inline code spans; a line that elides part of itself with "..." is not a command. Only parsing: no file named on a line needs to exist (except a --config YAML)."""
import argparse
import glob
import importlib
import os
import re
import shlex

import pytest

from tests import ROOT as _ROOT

ROOT = str(_ROOT)
DOCS = sorted([os.path.join(ROOT, "README.md"), *glob.glob(os.path.join(ROOT, "docs", "*.md")),
               os.path.join(ROOT, "examples", "slurm", "README.md")])
# A command: python (or a torchrun launch) running tools/NAME.py, with or without a path before tools/.
TOOL = re.compile(r"(?:^|\s)(?:\S*/)?(?:python3?|torchrun(?:\s+--?[\w-]+(?:=\S+)?)*)\s+(?:\S*/)?tools/([a-z_]+)\.py(?=\s|$)")


def _code_lines(text: str):
    """(line number, command text) of the shell lines in code blocks, continuations joined."""
    out, fenced, pending, start = [], False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not (fenced or line.startswith("    ")) and not pending:
            for span in re.findall(r"`([^`]+)`", line):
                match = TOOL.search(span)
                if match and span[match.end():].strip():  # a bare `python tools/x.py` names the tool
                    out.append((number, span))
            continue
        if not pending:
            start = number
        pending += " " + line.strip()
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        out.append((start, pending.strip()))
        pending = ""
    return out


def commands():
    """(doc:line, tool name, argv) of every tools/*.py command line in the docs."""
    found = []
    for path in DOCS:
        if not os.path.isfile(path):
            continue
        rel = os.path.relpath(path, ROOT)
        for number, text in _code_lines(open(path, encoding="utf-8").read()):
            for segment in re.split(r"\s(?:&&|\|\||;|\|)\s", text):
                match = TOOL.search(segment)
                if not match:
                    continue
                words = shlex.split(segment[match.end():], comments=True)
                if "..." in words:  # an elided line ("... the same flags"), not a command to run
                    continue
                found.append((f"{rel}:{number}", match.group(1), words))
    return found


class _Parsed(Exception):
    pass


def parse(tool: str, argv: list, monkeypatch) -> None:
    """Parse `argv` with the tool's real parser; raises SystemExit(2) on a parse error."""
    if tool == "pretrain":
        from megatron_patch.training.config import parse_config

        parse_config(argv)
        return
    module = importlib.import_module(f"megatron_patch.cli.{tool}")
    for name in ("get_args", "parse_args"):  # the tool's own argv reader (e.g. study's "--" split)
        if callable(getattr(module, name, None)):
            getattr(module, name)(argv)
            return
    if hasattr(module, "build_parser"):
        module.build_parser().parse_args(argv)
        return
    # The parser is built inside main(): stop main right after its parser accepted the line.
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        real(self, args, namespace)
        raise _Parsed()

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(_Parsed):
        module.main(argv)


COMMANDS = commands()


def test_the_docs_have_command_lines_of_the_main_tools():
    tools = {tool for _, tool, _ in COMMANDS}
    assert {"pretrain", "preprocess_data", "convert_checkpoint", "evaluate", "gpu_check"} <= tools


@pytest.mark.parametrize("where,tool,argv", COMMANDS, ids=[f"{w} {t}" for w, t, _ in COMMANDS])
def test_doc_command_line_parses(where, tool, argv, monkeypatch, capsys):
    assert os.path.isfile(os.path.join(ROOT, "tools", f"{tool}.py")), f"{where}: no tools/{tool}.py"
    monkeypatch.chdir(ROOT)
    try:
        parse(tool, argv, monkeypatch)
    except SystemExit as stop:
        assert stop.code == 0, f"{where}: tools/{tool}.py {' '.join(argv)}\n{capsys.readouterr().err}"
    except ValueError as err:
        pytest.fail(f"{where}: tools/{tool}.py {' '.join(argv)}: {err}")


def test_the_flag_table_lists_every_default_that_differs_from_megatron_lm():
    from megatron_patch.training.megatron_flags import ACCEPTED, MEGATRON_DEFAULTS, ONE_VALUE, REFUSED

    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    table = readme[readme.index("**Defaults that differ from Megatron-LM's.**"):]
    rows = {line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| `")}
    for flag, *_ in MEGATRON_DEFAULTS:
        assert any(f"`{flag}`" in row for row in rows), flag
    flags_section = readme[readme.index("### Megatron-LM flags"):readme.index("**Defaults that differ")]
    for flag in (*ACCEPTED, *ONE_VALUE, *REFUSED):
        assert flag in flags_section or flag.startswith(("--fp8-", "--moe-")), flag
