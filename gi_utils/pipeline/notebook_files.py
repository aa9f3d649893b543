"""The notebook files themselves: their parameters cells and their shared setup cell.

* :func:`parameters_cell` / :func:`notebook_annotations`: the types a notebook's
  parameters cell annotates, read from the ``.ipynb`` file (tests and tools use them; a
  running notebook passes its own ``__annotations__``).
* :data:`SETUP_CELL`: ``notebooks/setup_cell.py``, the one source of the first code cell of
  every notebook (a few lines that find and run :data:`SETUP_SCRIPT`, ``gi_setup.py``, the
  platform steps); :func:`sync_setup_cells` copies it into them with its
  ``nbval-ignore-output`` tag (``make notebooks``) and :func:`setup_cell_drift` names the
  notebooks whose copy differs (a test).
* :func:`execute_in_place`: run the notebooks with their default parameters, in a
  temporary runs folder, and save them executed (what nbval compares against).
* :func:`lines_before_first_output` and :func:`output_problems`: what a reader meets first
  (the lines of code above the first output) and what an output must not show (an
  absolute path, a raw dict, a float of many digits, a figure twice); a test applies them
  to the committed notebooks and ``make docs`` to the demo's.

nbformat, nbclient and papermill are imported in the functions that use them, here and in
the pipeline's other modules: through jsonschema they cost about 1.3 s at import, which
every notebook kernel that imports :mod:`gi_utils.pipeline` would otherwise pay.
"""

from __future__ import annotations

import ast
import os
import re
import tempfile
import typing
from pathlib import Path
from typing import Any

from gi_utils.constants import RUNS_DIR_ENV
from gi_utils.paths import REPO_ROOT

__all__ = ["NOTEBOOKS_DIR", "SETUP_CELL", "SETUP_SCRIPT", "SETUP_TAGS", "SMOKE_NOTE_TAG", "notebook_paths",
           "parameters_cell", "notebook_annotations", "setup_cell_drift", "sync_setup_cells", "headless_kernel_env", "execute_in_place",
           "lines_before_first_output", "output_problems"]  # fmt: skip

NOTEBOOKS_DIR: Path = REPO_ROOT / "notebooks"
SETUP_CELL: Path = NOTEBOOKS_DIR / "setup_cell.py"
#: The platform steps the setup cell runs (shipped beside the wheels by ``make kaggle``).
SETUP_SCRIPT: Path = NOTEBOOKS_DIR / "gi_setup.py"
#: The setup cell's tags: its output names the machine, which nbval cannot compare.
SETUP_TAGS: tuple[str, ...] = ("nbval-ignore-output",)
#: The tag of the note that says the committed outputs are the smoke run (dropped where
#: a notebook is run for real: ``make demo``'s copies and the published demo).
SMOKE_NOTE_TAG = "smoke-outputs"
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


def _first_code(cells: list) -> Any:
    return next((c for c in cells if c.cell_type == "code"), None)


def setup_cell_drift(folder: str | os.PathLike = NOTEBOOKS_DIR) -> list[str]:
    """Names of the notebooks whose first code cell is not :data:`SETUP_CELL` with
    :data:`SETUP_TAGS`."""
    import nbformat

    want = _setup_source()
    bad = []
    for path in notebook_paths(folder):
        first = _first_code(nbformat.read(path, as_version=4).cells)
        if first is None or first.source.rstrip("\n") != want or not set(SETUP_TAGS) <= set(first.metadata.get("tags", [])):
            bad.append(path.name)
    return bad


def sync_setup_cells(folder: str | os.PathLike = NOTEBOOKS_DIR) -> list[Path]:
    """Copy :data:`SETUP_CELL` (and its tags) into the first code cell of every notebook that differs."""
    import nbformat

    changed = []
    for path in notebook_paths(folder):
        if path.name not in setup_cell_drift(path.parent) or not path.is_file():
            continue
        nb = nbformat.read(path, as_version=4)
        first = _first_code(nb.cells)
        first.source = _setup_source()
        first.metadata["tags"] = sorted({*first.metadata.get("tags", []), *SETUP_TAGS})
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


def headless_kernel_env() -> None:
    """Set what the kernel of a notebook run from this process inherits: text progress and
    the static viewer (``GI_HEADLESS=1``), and no ``MPLBACKEND``, so the kernel draws with
    Jupyter's inline backend and the executed notebook holds its figures, as a reader's
    does, whatever the shell or an imported module set (``Agg`` hides them)."""
    os.environ["GI_HEADLESS"] = "1"
    os.environ.pop("MPLBACKEND", None)


def execute_in_place(paths: list[Path] | None = None, timeout: int = 1800) -> list[Path]:
    """Execute notebooks (default: all, in order) with their default parameters and save
    them executed. They share one temporary runs folder, as under nbval, so 03 and 04 see
    the run that 02 made and nothing else; the saved outputs name it :data:`RUNS_SHOWN`; ``preset="auto"`` is ``smoke`` (``$GI_PRESET``),
    as in the tests, whatever the machine."""
    import nbformat
    from nbclient import NotebookClient

    paths = paths or notebook_paths()
    old = os.environ.get(RUNS_DIR_ENV)
    headless_kernel_env()  # as under nbval
    os.environ.setdefault("GI_PRESET", "smoke")  # as under pytest: preset="auto" is the cheap one
    with tempfile.TemporaryDirectory(prefix="gi_nb_runs_") as runs:
        os.environ[RUNS_DIR_ENV] = runs
        try:
            for path in paths:
                nb = nbformat.read(path, as_version=4)
                NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                               resources={"metadata": {"path": str(Path(path).parent)}}).execute()  # fmt: skip
                nbformat.write(_without_path(nb, runs, RUNS_SHOWN), path)
                print("executed", path.name, flush=True)
        finally:
            if old is None:
                os.environ.pop(RUNS_DIR_ENV, None)
            else:
                os.environ[RUNS_DIR_ENV] = old
    return paths


def _code_lines(source: str) -> int:
    return len(source.splitlines())


def lines_before_first_output(nb: Any) -> int:
    """Lines of code a reader scrolls past before the first output: every code cell up to
    and including the first one that shows something (blank lines and comments count).
    A notebook with no output gives all its code lines."""
    total = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        total += _code_lines(cell.source)
        if cell.get("outputs"):
            break
    return total


#: What no displayed output may show, by name: a path from the root (a URL is not one);
#: a dict printed as Python writes it; a number with five decimals or more.
OUTPUT_RULES: dict[str, re.Pattern] = {
    "absolute path": re.compile(r"(?<![\w.:/~-])/(?:[\w.\-]+/)+[\w.\-]*"),
    "raw dict": re.compile(r"\{'[^'\n]*': "),
    "unrounded float": re.compile(r"(?<![\w.])\d+\.\d{5,}(?![\w.])"),
}


def _texts(output: Any) -> list[str]:
    if output.get("output_type") == "stream":
        return [output.get("text", "")]
    data = output.get("data", {})
    return [data[k] for k in ("text/plain", "text/markdown", "text/html") if k in data]


def output_problems(nb: Any) -> list[str]:
    """What the outputs of an executed notebook show that a reader should not see: for each
    hit of :data:`OUTPUT_RULES`, ``"cell N: <rule>: <text>"``, and ``"cell N: a figure shown
    twice"`` for an image equal to one shown before. Errors' tracebacks are not read."""
    problems, images = [], set()
    for k, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            for text in _texts(output):
                text = "".join(text) if isinstance(text, list) else text
                for rule, pattern in OUTPUT_RULES.items():
                    problems += [f"cell {k}: {rule}: {m.group(0)!r}" for m in pattern.finditer(text)]
            png = output.get("data", {}).get("image/png")
            if png is not None:
                if png in images:
                    problems.append(f"cell {k}: a figure shown twice")
                images.add(png)
    return problems
