"""Dataclass configs <-> command line and YAML: one flag per field, typed, with the field's help string.

Every config dataclass of the project (``EvalConfig``, the trainers' ``SFTConfig`` / ``GRPOConfig`` /
``PPOConfig``) puts a ``help`` string in each field's metadata. :func:`add_dataclass_arguments` turns the fields
into ``--field-name`` flags (so help text and defaults cannot drift from the code) and :func:`build_config` merges
defaults < a YAML/JSON file < flags given on the command line < explicit overrides.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

def _base_type(annotation: Any) -> tuple[type, bool]:
    """(type, optional) of a field annotation such as ``int``, ``str | None`` or ``'float'``."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {**vars(typing), "types": types})  # noqa: S307 - our own annotations
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], True
    return annotation, False


def _parse_bool(text: str) -> bool:
    lowered = str(text).lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {text!r}")


def _optional(kind: type):
    def convert(text: str):
        return None if str(text).lower() in ("none", "null", "") else kind(text)

    convert.__name__ = kind.__name__
    return convert


def add_dataclass_arguments(parser: argparse.ArgumentParser, config_cls: type, *, skip: tuple[str, ...] = (),
                            flags: dict[str, list[str]] | None = None) -> None:
    """One ``--field-name`` flag per dataclass field, typed, with the field's help and default.

    Scalars (``int``, ``float``, ``str``, ``bool`` as ``true/false``, optionals accepting ``none``) take one value;
    ``tuple[str, ...]`` / ``list[...]`` fields take one or more. Fields typed ``Any`` take a string; ``dict`` fields
    and those in ``skip`` get no flag. ``flags`` renames or adds aliases (``{"out_dir": ["--out"],
    "num_prompts": ["-n", "--num-prompts"]}``). Defaults are not written into the namespace: only flags given on
    the command line reach :func:`build_config`.
    """
    flags = flags or {}
    for f in fields(config_cls):
        if f.name in skip:
            continue
        kind, optional = _base_type(f.type)
        origin = typing.get_origin(kind)
        if kind is dict or origin is dict:
            continue
        names = flags.get(f.name, ["--" + f.name.replace("_", "-")])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f"{f.metadata.get('help', '')} (default: {default})".replace("%", "%%")
        common = dict(default=argparse.SUPPRESS, help=help_text, dest=f.name)
        if origin in (tuple, list) or kind in (tuple, list):
            element = next((a for a in typing.get_args(kind) if a is not Ellipsis), str)
            element = str if element is Any else element
            parser.add_argument(*names, type=element, nargs="+", metavar=element.__name__.upper(), **common)
        elif kind is bool:
            parser.add_argument(*names, type=_parse_bool, metavar="BOOL", **common)
        else:
            kind = str if kind is Any else kind
            convert = _optional(kind) if optional else kind
            parser.add_argument(*names, type=convert, metavar=kind.__name__.upper(), **common)


def _coerce(config_cls: type, values: dict) -> dict:
    """Lists from the command line or YAML become tuples where the field is a tuple."""
    out = dict(values)
    for f in fields(config_cls):
        if f.name in out and isinstance(out[f.name], list):
            kind, _ = _base_type(f.type)
            if typing.get_origin(kind) is tuple or kind is tuple:
                out[f.name] = tuple(out[f.name])
    return out


def load_config_file(path: str | Path) -> dict:
    """A YAML (or JSON) mapping of field names to values; dashes in keys are accepted for underscores."""
    text = Path(path).read_text(encoding="utf-8")
    if str(path).endswith(".json"):
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config fields")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def build_config(config_cls: type, args: argparse.Namespace | None = None, file: str | Path | None = None,
                 **overrides: Any):
    """The config from (lowest to highest priority) defaults, a YAML/JSON file, flags that were given, overrides."""
    names = {f.name for f in fields(config_cls)}
    values: dict[str, Any] = {}
    if file is not None:
        from_file = load_config_file(file)
        unknown = sorted(set(from_file) - names)
        if unknown:
            raise ValueError(f"{file}: unknown {config_cls.__name__} fields {unknown}; valid: {sorted(names)}")
        values.update(from_file)
    if args is not None:
        values.update({k: v for k, v in vars(args).items() if k in names})  # only flags given (SUPPRESS)
    values.update(overrides)
    return config_cls(**_coerce(config_cls, values))


def config_dict(config: Any) -> dict:
    return {f.name: getattr(config, f.name) for f in fields(config)}
