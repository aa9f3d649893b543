"""Glue for the notebooks: checking their parameters.

Papermill only *warns* about a ``-p`` name the notebook does not know, and passes values
as whatever YAML makes of them. Each notebook therefore snapshots its globals before the
parameters cell, annotates every parameter with its type (``n_overlays: int = 8  # ...``,
which is also what ``papermill --help-notebook`` prints), and right after the parameters
(and papermill's injected cell) calls :func:`check_params` with the cell's
``__annotations__``: an unknown name or a value of the wrong type fails fast, naming the
parameter and the expected type. The types live in the cell only.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Any

__all__ = ["ParameterError", "annotation_kinds", "check_params", "new_names"]


class ParameterError(ValueError):
    """A notebook parameter is unknown or has the wrong type or value."""


def new_names(namespace: Mapping[str, Any], before: set[str]) -> dict[str, Any]:
    """Globals defined since the snapshot ``before`` (private ``_names`` excluded)."""
    return {k: v for k, v in namespace.items() if k not in before and not k.startswith("_")}


def annotation_kinds(annotation: Any) -> tuple[type, ...]:
    """The classes an annotation admits: ``Optional[int]`` -> ``(int, NoneType)``,
    ``list[int]`` -> ``(list,)``, ``Union[float, list]`` -> ``(float, list)``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return tuple(k for a in typing.get_args(annotation) for k in annotation_kinds(a))
    if annotation is None or annotation is type(None):
        return (type(None),)
    if isinstance(annotation, str):
        raise ParameterError(f"annotation {annotation!r} is a string; write the type itself")
    return (origin,) if origin is not None else (annotation,)


def _type_ok(value: Any, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in kinds
    if float in kinds and isinstance(value, int):
        return True  # 1 for 1.0
    if list in kinds and isinstance(value, tuple):
        return True
    if tuple in kinds and isinstance(value, list):
        return True  # YAML gives lists
    return isinstance(value, kinds)


def check_params(given: Mapping[str, Any], annotations: Mapping[str, Any]) -> dict[str, Any]:
    """Validate notebook parameters against the types annotated in the parameters cell.

    Args:
        given: the parameters as the notebook sees them (from :func:`new_names`).
        annotations: the cell's annotations (the notebook passes ``__annotations__``), e.g.
            ``{"n_overlays": int, "thresholds": Union[float, list]}``; an int is accepted
            for a float and a list for a tuple (papermill passes YAML values).

    Returns:
        The parameters, ints widened to float where only float is allowed and lists turned
        into tuples where only a tuple is.

    Raises:
        ParameterError: an unknown name (listing the valid names), a missing name, or a
            value of the wrong type; the message names the parameter.
    """
    unknown = sorted(set(given) - set(annotations))
    if unknown:
        raise ParameterError(
            f"unknown notebook parameter(s) {unknown}; valid parameters: {sorted(annotations)}"
        )
    out = {}
    for name, annotation in annotations.items():
        if name not in given:
            raise ParameterError(f"parameter {name!r} is missing from the parameters cell")
        kinds, value = annotation_kinds(annotation), given[name]
        if not _type_ok(value, kinds):
            names = " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
            raise ParameterError(
                f"parameter {name!r} = {value!r} has type {type(value).__name__}; expected {names}"
            )
        if float in kinds and int not in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if tuple in kinds and list not in kinds and isinstance(value, list):
            value = tuple(value)
        out[name] = value
    return out
