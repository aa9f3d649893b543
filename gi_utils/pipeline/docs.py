"""``make docs``: publish what the last ``make demo`` measured and ran.

``make demo`` writes only under the runs folder (``runs/pictures``: the tables and the
figures; ``runs/notebooks``: the executed notebooks). This step, run on purpose, copies
into the tracked files:

* the figures the README and the docs show, and the tables, into ``pictures/``;
* each generated part of a Markdown file, kept between ``<!-- NAME:start -->`` and
  ``<!-- NAME:end -->`` (:data:`BLOCKS`): the results table in the README, the full
  selection table in ``docs/results.md``, the configuration table (from the presets) in
  ``docs/configuration.md``;
* the demo's executed notebooks, code hidden, and their report (:func:`demo_report`) as
  HTML pages under ``docs/demo/`` (:func:`publish_demo`), with what a reader meets in each
  (:func:`notebook_measures`).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from gi_utils.atomic import atomic_path, atomic_write_text
from gi_utils.paths import REPO_ROOT
from gi_utils.pipeline.notebook_files import lines_before_first_output, output_problems
from gi_utils.pipeline.publish import export_html
from gi_utils.pipeline.series import DEMO_ARCHS, demo_notebooks, demo_report
from gi_utils.training.presets import presets_table

__all__ = ["README", "DOCS_DIR", "DEMO_DIR", "BLOCKS", "doc_block", "readme_block", "replace_block", "doc_pictures",
           "readme_pictures", "notebook_measures", "publish_demo", "publish_docs"]  # fmt: skip

README: Path = REPO_ROOT / "README.md"
DOCS_DIR: Path = REPO_ROOT / "docs"
#: Where ``make docs`` publishes the demo's notebooks and report (relative to the docs).
DEMO_DIR = "demo"
#: The generated blocks: the file (relative to the repository) and the names of its blocks.
BLOCKS: dict[str, tuple[str, ...]] = {
    "README.md": ("results",),
    "docs/results.md": ("selection",),
    "docs/configuration.md": ("presets",),
}
#: Files of the runs' pictures folder published besides the figures; the block each fills.
RESULT_FILES: dict[str, str] = {"results.md": "results", "results.json": "", "selection.md": "selection"}


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def doc_block(name: str, path: str | os.PathLike) -> str:
    """The text between the ``name`` markers of the Markdown file ``path``.

    Raises:
        ValueError: the file has no such block (names the file and the markers).
    """
    start, end = _markers(name)
    text = Path(path).read_text(encoding="utf-8")
    m = re.search(re.escape(start) + r"\n(.*?)" + re.escape(end), text, flags=re.S)
    if m is None:
        raise ValueError(f"{path} has no {start} ... {end} block")
    return m.group(1)


def readme_block(name: str, readme: str | os.PathLike = README) -> str:
    """:func:`doc_block` of the README."""
    return doc_block(name, readme)


def replace_block(name: str, body: str, path: str | os.PathLike = README) -> Path:
    """Replace the ``name`` block of the Markdown file ``path`` with ``body`` (atomic write)."""
    doc_block(name, path)  # raises when the markers are missing
    start, end = _markers(name)
    text = Path(path).read_text(encoding="utf-8")
    i, j = text.index(start) + len(start), text.index(end)
    return atomic_write_text(path, text[:i] + "\n" + body.rstrip("\n") + "\n" + text[j:])


def doc_pictures(path: str | os.PathLike) -> list[str]:
    """File names of the ``pictures/*.png`` a Markdown file shows (``pictures/x.png`` or
    ``../pictures/x.png``), in order."""
    text = Path(path).read_text(encoding="utf-8")
    return list(dict.fromkeys(re.findall(r"\]\((?:\.\./)?pictures/([\w.\-]+\.png)\)", text)))


def readme_pictures(readme: str | os.PathLike = README) -> list[str]:
    """:func:`doc_pictures` of the README."""
    return doc_pictures(readme)


def notebook_measures(path: str | os.PathLike) -> tuple[int, list[str]]:
    """What a reader of an executed notebook meets: the lines of code before its first
    output, and what its outputs should not show (:func:`output_problems`)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    return lines_before_first_output(nb), output_problems(nb)


def publish_demo(nb_dir: str | os.PathLike, out_dir: str | os.PathLike, archs: tuple[str, ...] = DEMO_ARCHS) -> list[Path]:
    """Each of the demo's executed notebooks as an HTML page without code, and their
    report (``report.html``), into ``out_dir``; prints each notebook's measures.

    Raises:
        FileNotFoundError: a notebook of the demo is missing (run ``make demo`` first).
    """
    paths = demo_notebooks(nb_dir, archs)
    out = Path(out_dir)
    written = []
    for path in paths:
        lines, problems = notebook_measures(path)
        print(f"{path.name}: {lines} lines of code before the first output; "
              + (f"{len(problems)} output problem(s): {problems[:3]}" if problems else "no output problem"))  # fmt: skip
        written.append(export_html(path, out / f"{path.stem}.html"))
    written.append(demo_report(nb_dir, out / "report.html", archs))
    return written


def publish_docs(runs_dir: str | os.PathLike, root: str | os.PathLike = REPO_ROOT, demo: bool = True) -> list[Path]:
    """Copy the demo's tables and the figures the README and the docs show from
    ``<runs_dir>/pictures`` into ``<root>/pictures`` and the blocks of :data:`BLOCKS`, and
    (``demo``) publish its notebooks and report under ``<root>/docs/demo``
    (:func:`publish_demo`).

    Raises:
        FileNotFoundError: a file the docs need is not in the runs folder (run ``make
            demo`` first); nothing is changed then.
    """
    src, root = Path(runs_dir) / "pictures", Path(root)
    docs = [root / "README.md", *sorted((root / "docs").glob("*.md"))]  # the pages that show figures
    names = [*RESULT_FILES, *dict.fromkeys(n for d in docs for n in doc_pictures(d))]
    missing = [n for n in names if not (src / n).is_file()]
    if demo:
        try:
            demo_notebooks(Path(runs_dir) / "notebooks")
        except FileNotFoundError as err:
            missing.append(str(err))
    if missing:
        raise FileNotFoundError(f"{src} lacks {missing}: run `make demo` first")
    written = []
    for name in names:
        with atomic_path(root / "pictures" / name) as tmp:
            shutil.copyfile(src / name, tmp)
        written.append(root / "pictures" / name)
    generated = {block: (src / f).read_text(encoding="utf-8") for f, block in RESULT_FILES.items() if block}
    generated["presets"] = presets_table()
    for doc, blocks in BLOCKS.items():
        for block in blocks:
            replace_block(block, generated[block], root / doc)
        written.append(root / doc)
    if demo:
        written += publish_demo(Path(runs_dir) / "notebooks", root / "docs" / DEMO_DIR)
    return written
