"""Dataclass configs <-> command line and YAML: one flag per field, typed, with the field's help string.

Every config dataclass of the project (``EvalConfig``, the trainers' ``SFTConfig`` / ``GRPOConfig`` /
``PPOConfig``, ``search_gym.envs.EnvConfig``) puts a ``help`` string in each field's metadata
(:func:`help_field`). :func:`add_dataclass_arguments` turns the fields into ``--field-name`` flags (so help text and
defaults cannot drift from the code) and :func:`build_config` merges defaults < a YAML/JSON file < flags given on
the command line < explicit overrides.

A field whose type is itself a config dataclass is a *section* (``GRPOConfig.env: EnvConfig``): its fields become
``--section.field-name`` flags in an argument group of their own, ``section: {field: value}`` mappings (or dotted
``section.field`` keys) in files, and nested mappings in :func:`config_dict`. A field named after a Python keyword
drops its trailing underscore in flags and files (``PenaltyConfig.lambda_``: ``--penalty.lambda``). A class may
list the top-level fields it moved into sections in a ``moved_fields`` class attribute (``{"max_turns":
"env.max_turns"}``): those old flat keys and flags still load, with a one-line deprecation message naming the new
key.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import keyword
import logging
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def help_field(text: str, **kw) -> Any:
    """A dataclass field with its help string (``field(metadata={"help": text}, **kw)``)."""
    return dataclasses.field(metadata={"help": text}, **kw)


def moved_to(section: str, keys: Iterable[str] | type, prefix: str = "") -> dict[str, str]:
    """``{prefix + key: "section.key"}`` for a ``moved_fields`` class attribute: top-level fields that moved into a
    section (``keys``: their keys, or a config class for all of its fields; ``moved_to("vllm", VLLMConfig,
    "vllm_")`` maps ``vllm_max_model_len`` to ``vllm.max_model_len``)."""
    if isinstance(keys, type):
        keys = [_key(f.name) for f in fields(keys)]
    return {prefix + key: f"{section}.{key}" for key in keys}


def _key(name: str) -> str:
    """A field's key in flags and files: its name, less the underscore a Python keyword needs (``lambda_``)."""
    return name[:-1] if name.endswith("_") and keyword.iskeyword(name[:-1]) else name


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(type, optional) of a field annotation such as ``int``, ``str | None`` or ``'float'``."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {**vars(typing), "types": types})  # noqa: S307 - our own annotations
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], True
    return annotation, False


def _field_types(config_cls: type) -> dict[str, Any]:
    """Field name -> annotation, resolved in the class's module (string annotations naming other classes)."""
    try:
        return typing.get_type_hints(config_cls)
    except (NameError, TypeError):
        return {f.name: f.type for f in fields(config_cls)}


def sections(config_cls: type) -> dict[str, type]:
    """The fields of ``config_cls`` that hold another config dataclass: name -> that class."""
    hints = _field_types(config_cls)
    out = {}
    for f in fields(config_cls):
        kind, _ = _base_type(hints.get(f.name, f.type))
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            out[f.name] = kind
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


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


def _add_field(container, f: dataclasses.Field, annotation: Any, names: list[str], dest: str, default: Any,
               hidden: bool = False) -> None:
    """One typed flag for field ``f`` (none for ``dict`` fields)."""
    kind, optional = _base_type(annotation)
    origin = typing.get_origin(kind)
    if kind is dict or origin is dict:
        return
    help_text = argparse.SUPPRESS if hidden else f"{f.metadata.get('help', '')} (default: {default})".replace("%", "%%")
    common = dict(default=argparse.SUPPRESS, help=help_text, dest=dest)
    if origin in (tuple, list) or kind in (tuple, list):
        element = next((a for a in typing.get_args(kind) if a is not Ellipsis), str)
        element = str if element is Any else element
        container.add_argument(*names, type=element, nargs="+", metavar=element.__name__.upper(), **common)
    elif kind is bool:
        container.add_argument(*names, type=_parse_bool, metavar="BOOL", **common)
    else:
        kind = str if kind is Any else kind
        convert = _optional(kind) if optional else kind
        container.add_argument(*names, type=convert, metavar=kind.__name__.upper(), **common)


def add_dataclass_arguments(parser: argparse.ArgumentParser, config_cls: type, *, skip: tuple[str, ...] = (),
                            flags: dict[str, list[str]] | None = None) -> None:
    """One ``--field-name`` flag per dataclass field, typed, with the field's help and default.

    Scalars (``int``, ``float``, ``str``, ``bool`` as ``true/false``, optionals accepting ``none``) take one value;
    ``tuple[str, ...]`` / ``list[...]`` fields take one or more. Fields typed ``Any`` take a string; ``dict`` fields
    and those in ``skip`` get no flag. A section (a field holding a config dataclass) gets an argument group of
    ``--section.field-name`` flags, with the section's default values; ``skip`` may name a whole section or one of
    its fields (``"env.judges"``). The old flat flags of ``config_cls.moved_fields`` are accepted but not listed.
    ``flags`` renames or adds aliases (``{"out_dir": ["--out"], "num_prompts": ["-n", "--num-prompts"]}``; a
    section's field by its dotted name). Defaults are not written into the namespace: only flags given on the
    command line reach :func:`build_config`.
    """
    flags = flags or {}
    hints = _field_types(config_cls)
    nested = sections(config_cls)
    by_name = {f.name: f for f in fields(config_cls)}
    for f in fields(config_cls):
        if f.name not in skip and f.name not in nested:
            _add_field(parser, f, hints[f.name], flags.get(f.name, [_flag(_key(f.name))]), f.name, _default(f))
    for f in fields(config_cls):
        if f.name in skip or f.name not in nested:
            continue
        group = parser.add_argument_group(f.name, f.metadata.get("help"))
        default, sub_hints = _default(f), _field_types(nested[f.name])
        for sub in fields(nested[f.name]):
            dest = f"{f.name}.{sub.name}"
            if dest not in skip:
                names = flags.get(dest, [_flag(f"{f.name}.{_key(sub.name)}")])
                _add_field(group, sub, sub_hints[sub.name], names, dest, getattr(default, sub.name, None))
    for old, new in getattr(config_cls, "moved_fields", {}).items():
        section, key = new.split(".", 1)
        if old in by_name or section in skip or section not in nested:
            continue
        sub = _section_field(nested[section], key)
        _add_field(parser, sub, _field_types(nested[section])[sub.name], [_flag(old)], old, None, hidden=True)


def add_config_parser(sub, name: str, config_cls: type, func, *, help: str, description: str | None = None):
    """A subcommand whose flags are ``config_cls``'s fields (:func:`add_dataclass_arguments`) plus ``--config``, a
    YAML/JSON file of the same fields read first (flags given on the command line win); ``func(args)`` runs it.
    Returns the parser."""
    parser = sub.add_parser(name, help=help, description=description,
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", default=None, help=f"YAML or JSON file of {config_cls.__name__} fields")
    add_dataclass_arguments(parser, config_cls)
    parser.set_defaults(func=func)
    return parser


def _section_field(section_cls: type, key: str) -> dataclasses.Field:
    for f in fields(section_cls):
        if key in (f.name, _key(f.name)):
            return f
    raise KeyError(key)


def _coerce(config_cls: type, values: dict) -> dict:
    """Lists from the command line or YAML become tuples where the field is a tuple (``none`` alone: None where the
    field is optional)."""
    out = dict(values)
    hints = _field_types(config_cls)
    for f in fields(config_cls):
        if f.name in out and isinstance(out[f.name], (list, tuple)):
            kind, optional = _base_type(hints[f.name])
            if optional and [str(v).lower() for v in out[f.name]] in (["none"], ["null"]):
                out[f.name] = None
            elif typing.get_origin(kind) is tuple or kind is tuple:
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


def _section_values(section_cls: type, value: Any, where: str) -> dict:
    """A section's given values by field name: from a mapping of its keys, or every field of an instance."""
    if isinstance(value, section_cls):
        return {f.name: getattr(value, f.name) for f in fields(section_cls)}
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a mapping of {section_cls.__name__} fields, not {value!r}")
    out, unknown = {}, []
    for raw, item in value.items():
        try:
            out[_section_field(section_cls, str(raw).replace("-", "_")).name] = item
        except KeyError:
            unknown.append(str(raw))
    if unknown:
        valid = sorted(_key(f.name) for f in fields(section_cls))
        raise ValueError(f"{where}: unknown {section_cls.__name__} fields {sorted(unknown)}; valid: {valid}")
    return out


def config_keys(config_cls: type) -> set[str]:
    """Every key :func:`build_config` reads: field names and keys, ``section.field`` names and the moved keys (to
    keep the known keys of a dict that holds others too, e.g. a ``config.json`` of an older version)."""
    keys = {k for f in fields(config_cls) for k in (f.name, _key(f.name))}
    keys |= {f"{name}.{f.name}" for name, cls in sections(config_cls).items() for f in fields(cls)}
    return keys | set(getattr(config_cls, "moved_fields", {}))


def _read(config_cls: type, data: Mapping, source: str, *, as_flags: bool = False) -> tuple[dict, dict]:
    """(top-level values, {section: values}) by field name, from the keys of a file, a namespace or overrides.

    Old flat keys (``config_cls.moved_fields``) load with one logged line naming their new keys; where a source
    gives a value both ways, the new key wins. Unknown keys raise, naming them.
    """
    nested = sections(config_cls)
    names = {k: f.name for f in fields(config_cls) for k in (f.name, _key(f.name))}
    moved = getattr(config_cls, "moved_fields", {})
    top: dict[str, Any] = {}
    new: dict[str, dict] = {}
    old: dict[str, dict] = {}
    renamed, unknown = [], []
    for raw, value in data.items():
        key = str(raw).replace("-", "_")
        head, _, rest = key.partition(".")
        if key in names and names[key] in nested:
            new.setdefault(names[key], {}).update(_section_values(nested[names[key]], value, f"{source}: {key}"))
        elif key in names:
            top[names[key]] = value
        elif rest and head in nested:
            new.setdefault(head, {}).update(_section_values(nested[head], {rest: value}, source))
        elif key in moved:
            renamed.append((key, moved[key]))
            head, _, rest = moved[key].partition(".")
            old.setdefault(head, {}).update(_section_values(nested[head], {rest: value}, source))
        else:
            unknown.append(str(raw))
    if unknown:
        valid = sorted({_key(f.name) for f in fields(config_cls) if f.name not in nested}
                       | {f"{name}.{_key(f.name)}" for name, cls in nested.items() for f in fields(cls)})
        raise ValueError(f"{source}: unknown {config_cls.__name__} fields {sorted(unknown)}; valid: {valid}")
    if renamed:
        show = _flag if as_flags else str
        log.warning("%s: deprecated flat %s, now nested: %s", source, "flags" if as_flags else "keys",
                    ", ".join(f"{show(a)} -> {show(b)}" for a, b in renamed))
    for head, values in new.items():
        old.setdefault(head, {}).update(values)
    return top, old


def build_config(config_cls: type, args: argparse.Namespace | None = None, file: str | Path | None = None,
                 **overrides: Any):
    """The config from (lowest to highest priority) defaults, a YAML/JSON file, flags that were given, overrides.

    A section's values merge key by key over its default (``env: {max_turns: 2}`` keeps the other ``env``
    defaults; a later source's ``--env.topk`` keeps the file's ``env.max_turns``). ``overrides`` take the same keys
    as a file (a section as a mapping or an instance).
    """
    sources = []
    if file is not None:
        sources.append((load_config_file(file), str(file), False))
    if args is not None:
        known = config_keys(config_cls)  # only flags given (SUPPRESS); the namespace also holds other commands'
        sources.append(({k: v for k, v in vars(args).items() if k in known}, "command line", True))
    sources.append((overrides, "overrides", False))
    top: dict[str, Any] = {}
    in_sections: dict[str, dict] = {}
    for data, source, as_flags in sources:
        values, section_values = _read(config_cls, data, source, as_flags=as_flags)
        top.update(values)
        for head, given in section_values.items():
            in_sections.setdefault(head, {}).update(given)
    nested = sections(config_cls)
    for f in fields(config_cls):
        if f.name in in_sections:
            default, given = _default(f), _coerce(nested[f.name], in_sections[f.name])
            if default is dataclasses.MISSING:
                top[f.name] = nested[f.name](**given)
            else:
                top[f.name] = dataclasses.replace(default, **given)
    return config_cls(**_coerce(config_cls, top))


def config_dict(config: Any) -> dict:
    """The config's fields by key, sections as nested mappings: what :func:`build_config` reads back."""
    nested = sections(type(config))
    return {_key(f.name): config_dict(getattr(config, f.name)) if f.name in nested else getattr(config, f.name)
            for f in fields(config)}
