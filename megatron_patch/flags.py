'''Command-line flags generated from typed config dataclasses: one source of truth.

A config field is declared once, with its type, default and a docstring:

    @dataclass
    class OptimConfig:
        lr: float = 3e-4
        """Peak learning rate."""
        clip_grad: float = field(default=1.0, metadata=flag("--clip-grad"))
        """Global gradient-norm clip (0 disables)."""

and becomes the flag `--lr` (the field name with dashes, unless `flag(...)` names Megatron-LM's
spelling), typed by the annotation, with the docstring as its `--help`. A flag may set a
constant (`flag("--fp32", const=False)`: Megatron's store-true/false switches) and a field may
have several flags. Values read from YAML go through the same `coerce`, so a YAML key and its
flag accept the same text ("2/3", "3e-4", "none").
'''
import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
import typing
from typing import Dict, List, Optional, Tuple

_NO_CONST = object()
HIDDEN = {"flags": ()}
"""Metadata of a field with no flag (YAML only, or set by the program)."""


def flag(*names: str, const=_NO_CONST, choices: Optional[Tuple] = None, **more) -> dict:
    """Field metadata: the flag spellings (`names`), an optional constant they store, the accepted
    values. Pass several `flag()` results' flags by calling `flags(flag(...), flag(...))`."""
    return {"flags": tuple((n, const) for n in names), "choices": choices, **more}


def flags(*specs: dict, choices: Optional[Tuple] = None) -> dict:
    """Merge several `flag()` metadata (e.g. `--bf16` storing True and `--fp32` storing False)."""
    return {"flags": tuple(f for s in specs for f in s["flags"]), "choices": choices}


@functools.lru_cache(maxsize=None)
def field_docs(cls) -> Dict[str, str]:
    """{field name: its docstring} from the class source (the string after each field)."""
    docs: Dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:] + [None]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def field_flags(f: dataclasses.Field) -> Tuple[Tuple[str, object], ...]:
    """(flag, const) pairs of a field; the default is the field name with dashes."""
    if "flags" in f.metadata:
        return f.metadata["flags"]
    return ((f"--{f.name.replace('_', '-')}", _NO_CONST),)


def field_choices(f: dataclasses.Field) -> Optional[Tuple]:
    return f.metadata.get("choices")


def _base_type(tp):
    """Optional[X] -> X."""
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def coerce(value, tp, where: str):
    """Turn a YAML/CLI value into the field's type (YAML 1.1 reads `3e-4` as a string)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union and type(None) in args:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        tp = _base_type(tp)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    try:
        if origin in (list, List):
            items = value if isinstance(value, (list, tuple)) else str(value).split()
            return [coerce(v, args[0], where) for v in items]
        if tp is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if tp is int:
            if isinstance(value, bool):
                raise ValueError(value)
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            if isinstance(value, str) and ("e" in value.lower() or "." in value):
                number = float(value)
                if not number.is_integer():
                    raise ValueError(value)
                return int(number)
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError(value)
            if isinstance(value, str) and "/" in value:  # "2/3"
                num, den = value.split("/")
                return float(num) / float(den)
            return float(value)
        if tp is str:
            return str(value)
    except (TypeError, ValueError, ZeroDivisionError):
        raise ValueError(f"{where}: cannot read {value!r} as {getattr(tp, '__name__', tp)}") from None
    return value


def type_hints(cls) -> dict:
    return typing.get_type_hints(cls)


def set_fields(obj, updates: dict, section: str) -> None:
    """Set `updates` (raw YAML/CLI values) on a config object, coerced to each field's type."""
    hints = type_hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in updates.items():
        if key not in fields:
            valid = ", ".join(sorted(fields))
            raise ValueError(f"unknown key {section}.{key}; valid keys of {section}: {valid}")
        value = coerce(value, hints[key], f"{section}.{key}")
        choices = field_choices(fields[key])
        if choices is not None and value is not None and value not in choices:
            raise ValueError(f"{section}.{key} (--{key.replace('_', '-')}): {value!r} is not "
                             f"supported; choose one of {', '.join(map(str, choices))}")
        setattr(obj, key, value)


def add_section(parser: argparse.ArgumentParser, section: str, cls, title: str) -> None:
    """Add one argument group with a flag per field of `cls`; dest is "section.field"."""
    group = parser.add_argument_group(title, field_docs(cls).get("__doc__") or cls.__doc__)
    docs = field_docs(cls)
    hints = type_hints(cls)
    for f in dataclasses.fields(cls):
        base = _base_type(hints[f.name])
        choices = field_choices(f)
        for name, const in field_flags(f):
            help_text = docs.get(f.name, "")
            if choices:
                help_text += f" Choices: {', '.join(map(str, choices))}."
            dest = f"{section}.{f.name}"
            if const is not _NO_CONST:
                group.add_argument(name, dest=dest, action="store_const", const=const, help=help_text)
            elif base is bool:
                group.add_argument(name, dest=dest, action="store_const", const=True, help=help_text)
            elif typing.get_origin(base) in (list, List):
                group.add_argument(name, dest=dest, nargs="+", metavar="X", help=help_text)
            else:
                metavar = {int: "N", float: "X", str: "S"}.get(base, "V")
                group.add_argument(name, dest=dest, metavar=metavar, help=help_text)


def given(namespace: argparse.Namespace) -> Dict[str, dict]:
    """{section: {field: raw value}} of the flags present on the command line."""
    out: Dict[str, dict] = {}
    for dest, value in vars(namespace).items():
        if "." in dest:
            section, name = dest.split(".", 1)
            out.setdefault(section, {})[name] = value
    return out


def all_flags(section_classes: Dict[str, type]) -> Dict[str, Tuple[str, str]]:
    """{flag: (section, field)} of every generated flag (for docs and tests)."""
    out = {}
    for section, cls in section_classes.items():
        for f in dataclasses.fields(cls):
            for name, _ in field_flags(f):
                out[name] = (section, f.name)
    return out


def to_argv(flag_values: dict) -> List[str]:
    """{"--lr": 3e-4, "--bf16": True, "--load": None} -> ["--lr", "3e-4", "--bf16"]: True is a bare
    switch, None leaves the flag out (for programs that launch tools/pretrain.py)."""
    out: List[str] = []
    for name, value in flag_values.items():
        if value is None or value is False:
            continue
        out += [name] if value is True else [name, str(value)]
    return out
