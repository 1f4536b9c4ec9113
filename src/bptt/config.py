"""Options declared once: an application's configuration is a dataclass whose fields carry their
help (``option``); the command line (``add_options``) and TOML files (``read_toml``) are built
from it, and ``merge`` puts the three sources together: the command line over the file over the
dataclass's defaults. Unknown keys are rejected with the list of known ones.
"""

import argparse
import dataclasses
import os
import tomllib
import types
import typing


class ConfigError(ValueError):
    """A bad option, file or combination: printed as one line by the CLI."""


def option(default, help, *, choices=None, metavar=None, cli=True, shown=None):
    """A configuration field with its help; ``choices`` are shown and enforced; ``cli=False``
    keeps a field off the command line (set by code, stored in checkpoints); ``shown`` is what
    the help says for the default where the value itself would mislead (None meaning k1)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices,
                                                        "metavar": metavar, "cli": cli,
                                                        "shown": shown})


def base_type(field):
    """The field's type without ``| None``: int, float, str, bool or tuple."""
    t = field.type
    if isinstance(t, str):
        t = eval(t, {"int": int, "float": float, "str": str, "bool": bool, "tuple": tuple})
    if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union:
        args = [a for a in typing.get_args(t) if a is not type(None)]
        t = args[0]
    return t


def cli_fields(cls):
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", False)]


def add_options(parser, cls):
    """``--name`` for every CLI field of the dataclass ``cls``; each parses as None when not
    given, so that a TOML file, a resumed run or the default can fill it."""
    for f in cli_fields(cls):
        kind, meta = base_type(f), f.metadata
        default = f.default
        shown = meta.get("shown") or ("none" if default is None else (
            "on" if default is True else "off" if default is False else default))
        text = f"{meta['help']} (default {shown})"
        name = "--" + f.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(name, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=None, help=text)
            continue
        choices = meta.get("choices")   # shown here, checked by the dataclass (a one-line error)
        metavar = meta.get("metavar") or ("{" + ",".join(map(str, choices)) + "}" if choices
                                          else f.name.upper())
        parser.add_argument(name, dest=f.name, type=kind, default=None, help=text,
                            metavar=metavar)


def given(args, cls):
    """The CLI fields that the command line set: name -> value."""
    return {f.name: getattr(args, f.name) for f in cli_fields(cls)
            if getattr(args, f.name, None) is not None}


def read_toml(path, cls, extra=()):
    """The table of a TOML file of options for ``cls`` (keys as the long options, ``-`` or
    ``_``), checked: known keys only (``extra`` names command options that are not fields),
    values of the field's type."""
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"--config: cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--config: {path} is not valid TOML: {e}") from None
    table = {k.replace("-", "_"): v for k, v in table.items()}
    fields = {f.name: f for f in cli_fields(cls)}
    unknown = sorted(set(table) - set(fields) - set(extra))
    if unknown:
        raise ConfigError(f"--config: unknown keys {', '.join(unknown)}; known: "
                          f"{', '.join(sorted(set(fields) | set(extra)))}")
    for k, v in table.items():
        if k not in fields:
            continue
        kind = base_type(fields[k])
        ok = isinstance(v, kind) and not (kind is not bool and isinstance(v, bool))
        if not ok and not (kind is float and isinstance(v, int) and not isinstance(v, bool)):
            raise ConfigError(f"--config: {k} should be {kind.__name__}, got {v!r}")
    return table


def merge(cls, args, extra=()):
    """``cls(**options)`` from the dataclass's defaults, overridden by ``args.config``'s TOML
    file (when the command has ``--config``), overridden by the command line. Returns
    ``(options given, table)``: the fields set by the file or the command line, and the file's
    table (for the ``extra`` keys)."""
    table = {}
    if getattr(args, "config", None):
        table = read_toml(args.config, cls, extra)
    options = {k: v for k, v in table.items() if k not in extra}
    options.update(given(args, cls))
    return options, table


def check_choice(who, name, value, choices):
    if value not in choices:
        names = list(map(str, choices))
        allowed = " or ".join(names) if len(names) == 2 else "one of " + ", ".join(names)
        raise ValueError(f"{who}: expected {name} {allowed}, got {value!r}")


def positive_int(who, name, value, *, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{who}: expected {name} a positive integer, got {value!r}")


def absolute(path):
    return None if path is None else os.path.abspath(os.fspath(path))


def resume_options(saved, options, allowed):
    """The saved configuration with ``options`` applied where they may change (``allowed``);
    a clear refusal naming every other option that differs from the run's own."""
    changed = {k: v for k, v in options.items() if saved.get(k) != v}
    refused = sorted(set(changed) - set(allowed))
    if refused:
        got = ", ".join(f"--{k.replace('_', '-')} {changed[k]!r} (the run has {saved.get(k)!r})"
                        for k in refused)
        raise ConfigError(f"--resume continues a run with its own configuration; only "
                          f"{', '.join(sorted(allowed))} may change, got {got}")
    return {**saved, **changed}
