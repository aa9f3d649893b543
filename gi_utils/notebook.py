"""Glue for the notebooks: parameter checking and recording of results.

Papermill only *warns* about a ``-p`` name the notebook does not know, and passes values
as whatever YAML makes of them. Each notebook therefore snapshots its globals in the first
cell, and right after the parameters (and papermill's injected cell) calls
:func:`check_params`, which fails fast on an unknown name or a value of the wrong type,
naming the parameter and the expected type.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["ParameterError", "check_params", "new_names", "write_json", "read_json"]


class ParameterError(ValueError):
    """A notebook parameter is unknown or has the wrong type or value."""


def new_names(namespace: Mapping[str, Any], before: set[str]) -> dict[str, Any]:
    """Globals defined since the snapshot ``before`` (private ``_names`` excluded)."""
    return {k: v for k, v in namespace.items() if k not in before and not k.startswith("_")}


def _type_ok(value: Any, default: Any) -> bool:
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def check_params(given: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Validate notebook parameters against their defaults.

    Args:
        given: the parameters as the notebook sees them (from :func:`new_names`).
        defaults: the parameters cell's names and default values (their types are the
            expected types; an int is accepted where a float is expected, a list for a
            tuple, anything where the default is ``None``).

    Returns:
        The parameters, floats widened, lists turned into tuples where the default is one.

    Raises:
        ParameterError: an unknown name (with the list of valid names) or a wrong type.
    """
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ParameterError(
            f"unknown notebook parameter(s) {unknown}; valid parameters: {sorted(defaults)}"
        )
    out = {}
    for name, default in defaults.items():
        value = given.get(name, default)
        if not _type_ok(value, default):
            raise ParameterError(
                f"parameter {name!r} = {value!r} has type {type(value).__name__}; "
                f"expected {type(default).__name__} (default {default!r})"
            )
        if isinstance(default, float) and isinstance(value, int):
            value = float(value)
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        out[name] = value
    return out


def write_json(path: str | os.PathLike, data: Mapping[str, Any]) -> Path:
    """Write JSON atomically (temp file + rename) so a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=_default) + "\n")
    os.replace(tmp, path)
    return path


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON file, naming the path when it is missing or malformed."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {path}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def _default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
