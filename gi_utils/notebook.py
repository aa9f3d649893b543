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

from gi_utils.atomic import atomic_write_text

__all__ = ["ParameterError", "check_params", "new_names", "write_json", "read_json"]


class ParameterError(ValueError):
    """A notebook parameter is unknown or has the wrong type or value."""


def new_names(namespace: Mapping[str, Any], before: set[str]) -> dict[str, Any]:
    """Globals defined since the snapshot ``before`` (private ``_names`` excluded)."""
    return {k: v for k, v in namespace.items() if k not in before and not k.startswith("_")}


def _type_ok(value: Any, expected: type | tuple[type, ...]) -> bool:
    expected = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool):
        return bool in expected
    if float in expected and isinstance(value, int):
        return True  # 1 for 1.0
    if tuple in expected and isinstance(value, list):
        return True  # YAML gives lists
    return isinstance(value, expected)


def check_params(given: Mapping[str, Any], spec: Mapping[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """Validate notebook parameters against a spec of expected types.

    Args:
        given: the parameters as the notebook sees them (from :func:`new_names`).
        spec: ``{name: type or tuple of types}``; an int is accepted for a float and a
            list for a tuple (papermill passes YAML values).

    Returns:
        The parameters, ints widened to float and lists turned into tuples where the spec
        asks for those.

    Raises:
        ParameterError: an unknown name (listing the valid names), a missing name, or a
            value of the wrong type; the message names the parameter.
    """
    unknown = sorted(set(given) - set(spec))
    if unknown:
        raise ParameterError(
            f"unknown notebook parameter(s) {unknown}; valid parameters: {sorted(spec)}"
        )
    out = {}
    for name, expected in spec.items():
        if name not in given:
            raise ParameterError(f"parameter {name!r} is missing from the parameters cell")
        value = given[name]
        if not _type_ok(value, expected):
            names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
            raise ParameterError(
                f"parameter {name!r} = {value!r} has type {type(value).__name__}; expected {names}"
            )
        kinds = expected if isinstance(expected, tuple) else (expected,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool) and int not in kinds:
            value = float(value)
        if tuple in kinds and isinstance(value, list):
            value = tuple(value)
        out[name] = value
    return out


def write_json(path: str | os.PathLike, data: Mapping[str, Any]) -> Path:
    """Write JSON atomically (temp file + rename) so a kill never leaves half a file."""
    text = json.dumps(data, indent=2, sort_keys=True, default=_default) + "\n"
    return atomic_write_text(path, text)


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
