"""Glue for the notebooks: their parameters, checked, and the lines that open them.

Papermill only *warns* about a ``-p`` name the notebook does not know, and passes values
as whatever YAML makes of them. Each notebook therefore annotates every parameter with its
type (``n_overlays: int = 8  # ...``, which is also what ``papermill --help-notebook``
prints), and right after the parameters calls :func:`notebook_params`: it reads the names
the parameters cell annotated and those papermill injected (its ``# Parameters`` cell, from
the kernel's input history), and :func:`check_params` fails fast on an unknown name or a
value of the wrong type, naming the parameter and the expected type. The types live in the
cell only; the notebook needs no glue of its own.

:func:`session_banner` is what the setup cell prints first: the package and the device,
and the data the notebook finds (synthetic data said so in capitals, :func:`describe_data`).
"""

from __future__ import annotations

import ast
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gi_utils.paths import (
    DataNotFoundError,
    in_checkout,
    platform_name,
    resolve_data_dir,
    shown_path,
)
from gi_utils.synthetic.generate import MARKER

__all__ = ["ParameterError", "annotation_kinds", "check_params", "injected_names", "notebook_parameters",
           "notebook_params", "is_synthetic", "describe_data", "session_banner"]  # fmt: skip

#: The first line of the cell papermill injects after the parameters cell.
INJECTED_COMMENT = "# Parameters"


class ParameterError(ValueError):
    """A notebook parameter is unknown or has the wrong type or value."""


def injected_names(history: Sequence[str]) -> list[str]:
    """Names assigned by papermill's injected cells (those starting ``# Parameters``) in a
    kernel's input history (IPython's ``In``), in order."""
    names: list[str] = []
    for source in history:
        if not source.lstrip().startswith(INJECTED_COMMENT):
            continue
        for node in ast.parse(source).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            names += [t.id for t in targets if isinstance(t, ast.Name) and t.id not in names]
    return names


def notebook_parameters(namespace: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(given, annotations)`` of a running notebook: the value of every name its
    parameters cell annotates and of every name papermill injected, and the cell's
    annotations (``__annotations__``).

    Args:
        namespace: the notebook's globals; default: those of the running IPython kernel
            (its input history ``In`` says what papermill injected).

    Raises:
        RuntimeError: no namespace was given and no IPython kernel runs.
    """
    if namespace is None:
        from IPython import get_ipython  # here: IPython is there wherever a notebook runs

        shell = get_ipython()
        if shell is None:
            raise RuntimeError("notebook_parameters() reads a running notebook's parameters cell; "
                               "elsewhere call check_params(values, annotations)")  # fmt: skip
        namespace = shell.user_ns
    annotations = dict(namespace.get("__annotations__", {}))
    names = [*annotations, *(n for n in injected_names(namespace.get("In", ())) if n not in annotations)]
    return {n: namespace[n] for n in names if n in namespace}, annotations


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
        given: the parameters as the notebook sees them (from :func:`notebook_parameters`).
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


def notebook_params(namespace: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The running notebook's parameters, checked: :func:`check_params` of
    :func:`notebook_parameters` (the notebooks call it right after their parameters cell).

    Raises:
        ParameterError: see :func:`check_params`.
    """
    return check_params(*notebook_parameters(namespace))


def is_synthetic(data_dir: str | os.PathLike) -> bool:
    """True for a dataset written by :mod:`gi_utils.synthetic` (it leaves ``synth.json``)."""
    return (Path(data_dir) / MARKER).is_file()


def describe_data(data_dir: str | os.PathLike) -> str:
    """One sentence on where the data came from: synthetic data said so in capitals, with
    what that means for the scores."""
    where = shown_path(data_dir)
    if is_synthetic(data_dir):
        return (f"SYNTHETIC DATA in {where}: phantom scans made by gi_utils.synthetic, not patients' MRI.\n"
                "Scores here measure the pipeline on made-up scans: not comparable with the leaderboard (~0.88).")
    return f"Data: the scans and masks in {where} (the competition's data, or data laid out like them)."


def session_banner(data_dir: str | os.PathLike | None = None) -> str:
    """Two lines for the top of a notebook: the package, PyTorch and the device; and the
    data the notebook finds by default (:func:`describe_data`), or where they will come from.

    Args:
        data_dir: the data; default: what :func:`gi_utils.paths.resolve_data_dir` finds.
    """
    from importlib.metadata import PackageNotFoundError, version

    import torch  # here: the setup cell imports this module right after installing the package

    try:
        release = version("gi-utils")
    except PackageNotFoundError:
        release = "(not installed)"
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(k) for k in range(torch.cuda.device_count())]
        device = f"GPU: {names[0]}" + (f" x{len(names)}" if len(names) > 1 else "")
    else:
        device = "CPU only, no GPU"
    origin = "this checkout" if in_checkout() else "installed"
    head = f"gi_utils {release} ({origin}) · PyTorch {torch.__version__} · {device}"
    try:
        root = Path(data_dir) if data_dir else resolve_data_dir()
    except DataNotFoundError:
        return head + "\n" + _NO_DATA.get(platform_name(), _NO_DATA["local"])
    return head + "\n" + describe_data(root)


#: What the banner says when no data are found, per platform.
_NO_DATA = {
    "local": "Data: none found yet; the notebook writes SYNTHETIC DATA (phantom scans made by gi_utils.synthetic, not "
             "patients' MRI) to data/ when it needs them.",
    "kaggle": "Data: none found. Attach the competition to this notebook (Add Input -> Competitions -> UW-Madison GI "
              "Tract Image Segmentation), or set data_dir = \"synthetic\" for SYNTHETIC DATA.",
    "colab": "Data: none found. Copy the competition's data to Google Drive, "
             "MyDrive/uw-madison-gi-tract-image-segmentation, or set data_dir = \"synthetic\" for SYNTHETIC DATA.",
}  # fmt: skip
