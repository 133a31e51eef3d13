"""Import direction: the checkpoint formats (megatron_patch/checkpoint/) sit below training/ and
export/; export/ never imports training/, and no import cycle joins training/checkpointer.py and
training/convert.py. Every import statement counts, also the ones inside functions.

    pytest -q tests/unit/checkpoint/test_layering.py
"""
import ast
import os
import subprocess
import sys
from pathlib import Path

import megatron_patch

PACKAGE = Path(megatron_patch.__file__).parent


def _module(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _exists(name: str) -> bool:
    rel = Path(*name.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").is_file() or (PACKAGE.parent / rel / "__init__.py").is_file()


def import_graph() -> dict:
    """{module: {megatron_patch modules it imports anywhere in its source}}."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module(path)
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                # `from megatron_patch.training import rundir` imports the module rundir
                targets |= {f"{node.module}.{a.name}" for a in node.names if _exists(f"{node.module}.{a.name}")}
        graph[name] = {t for t in targets if t.startswith("megatron_patch.") and _exists(t)}
    return graph


def _reaches(graph: dict, start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        for t in graph.get(m, ()):
            if t == goal:
                return True
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return False


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_export_and_checkpoint_do_not_import_training():
    graph = import_graph()
    bad = {m: sorted(t for t in ts if _in(t, "megatron_patch.training"))
           for m, ts in graph.items() if _in(m, "megatron_patch.export") or _in(m, "megatron_patch.checkpoint")}
    assert not {m: t for m, t in bad.items() if t}, "export/ and checkpoint/ must not import training/"
    up = {m: sorted(t for t in ts if _in(t, "megatron_patch.export"))
          for m, ts in graph.items() if _in(m, "megatron_patch.checkpoint")}
    assert not {m: t for m, t in up.items() if t}, "checkpoint/ sits below export/"


def test_no_cycle_between_checkpointer_and_convert():
    graph = import_graph()
    a, b = "megatron_patch.training.checkpointer", "megatron_patch.training.convert"
    assert _reaches(graph, a, b)  # the hand-over converts
    assert not _reaches(graph, b, a), "training/convert.py must not import the checkpointer (a cycle)"
    for m in (a, b, "megatron_patch.training.checkpointing", "megatron_patch.checkpoint.store"):
        assert not _reaches(graph, m, m), f"{m} is in an import cycle"


def test_importing_the_hf_import_loads_no_training_module():
    code = ("import sys, megatron_patch.export.hf_import, megatron_patch.export.hf, megatron_patch.checkpoint.store; "
            "print(sorted(m for m in sys.modules if m.startswith('megatron_patch.training')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.stdout.strip() == "[]"


def test_training_names_still_importable():
    """The names tests and tools used before the formats moved keep working."""
    from megatron_patch.checkpoint import layout
    from megatron_patch.training import checkpointing as ckpt
    from megatron_patch.training import rundir

    assert rundir.CheckpointError is layout.CheckpointError
    for name in ("RELEASE", "TRACKER", "CONFIG_FILE", "check_complete", "latest_checkpoint", "read_tracker",
                 "require_checkpoint", "checkpoint_root", "resolve_checkpoint", "iteration_name"):
        assert hasattr(rundir, name), name
    for name in ("save_checkpoint", "load_weights", "load_full", "common_state", "checkpoint_config",
                 "check_model_matches", "model_differences", "megatron_lm_args", "completed", "require_completed"):
        assert hasattr(ckpt, name), name
