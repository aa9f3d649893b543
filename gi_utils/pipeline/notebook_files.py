"""The notebook files themselves: their parameters cells and their shared setup cell.

* :func:`parameters_cell` / :func:`notebook_annotations`: the types a notebook's
  parameters cell annotates, read from the ``.ipynb`` file (tests and tools use them; a
  running notebook passes its own ``__annotations__``).
* :data:`SETUP_CELL`: ``notebooks/setup_cell.py``, the one source of the first cell of
  every notebook; :func:`sync_setup_cells` copies it into them (``make notebooks``) and
  :func:`setup_cell_drift` names the notebooks whose copy differs (a test).
* :func:`execute_in_place`: run the notebooks with their default parameters, in a
  temporary runs folder, and save them executed (what nbval compares against).

nbformat, nbclient and papermill are imported in the functions that use them, here and in
the pipeline's other modules: through jsonschema they cost about 1.3 s at import, which
every notebook kernel that imports :mod:`gi_utils.pipeline` would otherwise pay.
"""

from __future__ import annotations

import ast
import os
import tempfile
import typing
from pathlib import Path
from typing import Any

from gi_utils.constants import RUNS_DIR_ENV
from gi_utils.paths import REPO_ROOT

__all__ = ["NOTEBOOKS_DIR", "SETUP_CELL", "notebook_paths", "parameters_cell", "notebook_annotations",
           "setup_cell_drift", "sync_setup_cells", "execute_in_place"]  # fmt: skip

NOTEBOOKS_DIR: Path = REPO_ROOT / "notebooks"
SETUP_CELL: Path = NOTEBOOKS_DIR / "setup_cell.py"
#: Names an annotation in a parameters cell may use.
_TYPE_NAMES: dict[str, Any] = {"Optional": typing.Optional, "Union": typing.Union, "int": int,
                               "float": float, "str": str, "bool": bool, "list": list, "dict": dict}  # fmt: skip


def notebook_paths(folder: str | os.PathLike = NOTEBOOKS_DIR) -> list[Path]:
    """The numbered notebooks of ``folder`` (``01_eda.ipynb`` ...), in order."""
    return sorted(p for p in Path(folder).glob("[0-9][0-9]_*.ipynb"))


def parameters_cell(path: str | os.PathLike) -> str:
    """Source of the cell tagged ``parameters`` (``ValueError`` naming the file if none)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{path} has {len(cells)} cells tagged 'parameters'; expected 1")
    return cells[0].source


def notebook_annotations(path: str | os.PathLike) -> dict[str, Any]:
    """``{name: type}`` of the annotated assignments of a notebook's parameters cell.

    Raises:
        ValueError: a parameter without an annotation, or an annotation that is not built
            from ``int, float, str, bool, list, dict, Optional, Union`` (names the file).
    """
    tree = ast.parse(parameters_cell(path))
    out: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            raise ValueError(f"{path}: parameter {names} has no type annotation")
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            text = ast.unparse(node.annotation)
            try:
                out[node.target.id] = eval(text, {"__builtins__": {}}, _TYPE_NAMES)  # noqa: S307
            except NameError as err:
                raise ValueError(f"{path}: annotation {text!r} of {node.target.id!r}: {err}") from None
    return out


def _setup_source() -> str:
    return SETUP_CELL.read_text(encoding="utf-8").rstrip("\n")


def setup_cell_drift(folder: str | os.PathLike = NOTEBOOKS_DIR) -> list[str]:
    """Names of the notebooks whose first cell is not :data:`SETUP_CELL`."""
    import nbformat

    want = _setup_source()
    bad = []
    for path in notebook_paths(folder):
        cells = nbformat.read(path, as_version=4).cells
        code = [c for c in cells if c.cell_type == "code"]
        if not code or code[0].source.rstrip("\n") != want:
            bad.append(path.name)
    return bad


def sync_setup_cells(folder: str | os.PathLike = NOTEBOOKS_DIR) -> list[Path]:
    """Copy :data:`SETUP_CELL` into the first code cell of every notebook that differs."""
    import nbformat

    want, changed = _setup_source(), []
    for path in notebook_paths(folder):
        nb = nbformat.read(path, as_version=4)
        first = next(c for c in nb.cells if c.cell_type == "code")
        if first.source.rstrip("\n") != want:
            first.source = want
            nbformat.write(nb, path)
            changed.append(path)
    return changed


#: How the temporary runs folder of :func:`execute_in_place` reads in the saved outputs: the
#: default runs folder, where a user who runs the notebooks finds the same files.
RUNS_SHOWN = "runs"


def _without_path(node: Any, path: str, shown: str) -> Any:
    """``node`` (a notebook, or any part of one) with every ``path`` in its strings written as ``shown``."""
    if isinstance(node, str):
        return node.replace(path, shown)
    if isinstance(node, list):
        return [_without_path(v, path, shown) for v in node]
    if isinstance(node, dict):
        return type(node)({k: _without_path(v, path, shown) for k, v in node.items()})
    return node


def execute_in_place(paths: list[Path] | None = None, timeout: int = 1800) -> list[Path]:
    """Execute notebooks (default: all, in order) with their default parameters and save
    them executed. They share one temporary runs folder, as under nbval, so 03 and 04 see
    the run that 02 made and nothing else; the saved outputs name it :data:`RUNS_SHOWN`; ``preset="auto"`` is ``smoke`` (``$GI_PRESET``),
    as in the tests, whatever the machine."""
    import nbformat
    from nbclient import NotebookClient

    paths = paths or notebook_paths()
    old = os.environ.get(RUNS_DIR_ENV)
    os.environ["GI_HEADLESS"] = "1"  # as under nbval: text progress, static viewer
    os.environ.setdefault("GI_PRESET", "smoke")  # as under pytest: preset="auto" is the cheap one
    with tempfile.TemporaryDirectory(prefix="gi_nb_runs_") as runs:
        os.environ[RUNS_DIR_ENV] = runs
        try:
            for path in paths:
                nb = nbformat.read(path, as_version=4)
                NotebookClient(nb, timeout=timeout, kernel_name="python3",
                               resources={"metadata": {"path": str(Path(path).parent)}}).execute()  # fmt: skip
                nbformat.write(_without_path(nb, runs, RUNS_SHOWN), path)
                print("executed", path.name, flush=True)
        finally:
            if old is None:
                os.environ.pop(RUNS_DIR_ENV, None)
            else:
                os.environ[RUNS_DIR_ENV] = old
    return paths
