"""Reading a training config file (YAML or JSON) strictly: a file that does not parse is reported with its
line and column, a key given twice anywhere in the file is an error (YAML and JSON would silently keep the
last one: a task that disappears, an option that flips), and every option's value is checked against the
option's type, naming the line it is on."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import types
import typing
from typing import Any

import yaml

from .errors import MultiTaskEncoderError

# The sections of a config that are not options: the tasks and their data, the embedding's evaluation sets,
# the single-task teachers to distil.
SECTIONS = ("tasks", "embedding_evaluation", "teachers")


class ConfigError(MultiTaskEncoderError, ValueError):
    """A config file that cannot be used, with the file (and line) in the message."""


class PositionedDict(dict):
    """A mapping read from a config file that remembers the line of each key (1-based)."""

    lines: dict[str, int]


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader whose mappings refuse duplicate keys and remember each key's line."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> PositionedDict:
    loader.flatten_mapping(node)
    mapping = PositionedDict()
    mapping.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in mapping:
            first = mapping.lines[key]
            raise ConfigError(
                f"line {key_node.start_mark.line + 1}, column {key_node.start_mark.column + 1}: the key {key!r} "
                f"is given twice (first on line {first}); YAML would silently keep only the last one."
            )
        mapping[key] = loader.construct_object(value_node, deep=deep)
        mapping.lines[key] = key_node.start_mark.line + 1
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _json_object(pairs: list[tuple[str, Any]]) -> dict:
    keys = [key for key, _ in pairs]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise ConfigError(
            f"the key(s) {duplicates} are given twice in one object; JSON would keep only the last."
        )
    return dict(pairs)


def read_config_file(path: str) -> dict[str, Any]:
    """The file's top-level mapping; raises ConfigError naming the file, line and column of a problem."""
    if not os.path.isfile(path):
        raise ConfigError(f"training config {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start + 1})") from None
    try:
        if path.endswith(".json"):
            values = json.loads(text, object_pairs_hook=_json_object)
        else:
            values = yaml.load(text, Loader=_StrictLoader)
    except ConfigError as error:
        raise ConfigError(f"{path}, {error}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}, line {error.lineno}, column {error.colno}: {error.msg}") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(part for part in (error.context, error.problem) if part)
        raise ConfigError(f"{path}{where}: {problem}") from None
    if not isinstance(values, dict):
        raise ConfigError(
            f"{path}: a training config is a mapping of options (and `tasks:`), got {type(values).__name__}"
        )
    return values


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


# The strings the argument parser reads as a bool (transformers' string_to_bool).
BOOL_STRINGS = {"yes", "true", "t", "y", "1", "no", "false", "f", "n", "0"}


def _check_string(value: str, hint: Any) -> str | None:
    """Why the argument parser would refuse the string `value` for an option of type `hint` (it converts
    strings as it converts command-line flags: YAML reads `1e-3` as a string), so that the refusal names the
    file and line rather than coming from argparse without them."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if not all(a in (bool, int, float) for a in args):
        return None  # a type that takes strings (str, a choice, a JSON mapping): the parser decides
    for kind in args:
        try:
            if kind is bool:
                if value.strip().lower() in BOOL_STRINGS:
                    return None
            else:
                kind(value)
                return None
        except ValueError:
            pass
    expected = {bool: "true or false", int: "an integer", float: "a number"}
    return " or ".join(expected[a] for a in args) + f", got {value!r}"


def _check_value(name: str, value: Any, hint: Any) -> str | None:
    """Why `value` cannot be the option `name` of type `hint` (None when it can)."""
    if value is None:
        return None
    if isinstance(value, str):
        return _check_string(value, hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        problems = [_check_value(name, value, a) for a in args]
        return None if any(p is None for p in problems) else problems[0]
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        if not isinstance(value, list):
            return f"a list, got {value!r}"
        bad = [
            v
            for v in value
            if _check_value(name, v, item) is not None or not isinstance(v, (str, int, float))
        ]
        return f"a list of {getattr(item, '__name__', item)}, got {value!r}" if bad else None
    if hint is bool:
        return None if isinstance(value, bool) else f"true or false, got {value!r}"
    if hint is int:
        return (
            None if isinstance(value, int) and not isinstance(value, bool) else f"an integer, got {value!r}"
        )
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"a number, got {value!r}"
    if hint is dict or origin is dict:
        return None if isinstance(value, dict) else f"a mapping, got {value!r}"
    if isinstance(value, (list, dict)) and hint is not Any:
        return f"a single value, got {value!r}"
    return None


def check_options(path: str, values: dict[str, Any], argument_classes: tuple[type, ...]) -> None:
    """Refuse options no argument class knows (suggesting the closest) and values of the wrong type."""
    types_by_name: dict[str, Any] = {}
    for cls in argument_classes:
        types_by_name.update(_field_types(cls))
    lines = getattr(values, "lines", {})
    for key, value in values.items():
        where = f"{path}, line {lines[key]}" if key in lines else path
        if key in SECTIONS:
            continue
        if key not in types_by_name:
            hint = difflib.get_close_matches(str(key), sorted([*types_by_name, *SECTIONS]), n=1)
            raise ConfigError(
                f"{where}: unknown option {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else ".")
            )
        problem = _check_value(key, value, types_by_name[key])
        if problem:
            raise ConfigError(f"{where}: option {key!r} must be {problem}")


def check_finite_options(source: str, *arguments: Any) -> None:
    """Refuse a NaN or infinite value in any numeric option of the parsed argument dataclasses (config file or
    flag: `.nan`, `inf` and `1e999` all parse as floats). Such a learning rate, loss weight or beta trains a
    model whose weights are NaN, and only loading it would say so."""

    def non_finite(value: Any) -> bool:  # also inside lists and mappings (the `peft:` block)
        if isinstance(value, dict):
            return any(non_finite(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return any(non_finite(v) for v in value)
        return isinstance(value, float) and not math.isfinite(value)

    for values in arguments:
        for option in dataclasses.fields(values):
            value = getattr(values, option.name, None)
            if non_finite(value):
                raise ConfigError(
                    f"{source}: option {option.name!r} must be a finite number, got {value!r} (a NaN or infinite "
                    "value would make the trained weights NaN)."
                )


__all__ = ["ConfigError", "check_finite_options", "check_options", "read_config_file"]
