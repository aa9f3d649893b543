"""Executed notebooks as documents: HTML that opens offline, and the demo's report.

* :func:`export_html`: one executed notebook as one self-contained HTML file -- figures
  embedded, code hidden by default, and no script fetched from the network (nbconvert's
  ``lab`` template loads require.js, MathJax, Mermaid and the widget manager from CDNs;
  :data:`OFFLINE_TEMPLATE` leaves them out). Works with nbconvert 6.4 (the Kaggle image)
  and 7.
* :func:`report_notebook`: the demo's executed notebooks in one document, for
  ``report.html``: a title, where the data came from, then the data (01), the training
  runs (02), the choice (03) and the submission (04), their headings one level down; the
  parameters and the note on committed smoke outputs left out, the setup's lines once.

nbformat and nbconvert (the ``notebooks`` extra) are imported in the functions that use
them: every other part of ``gi_utils`` imports with the base dependencies alone.
"""

from __future__ import annotations

import copy
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gi_utils.atomic import atomic_write_text
from gi_utils.pipeline.notebook_files import SETUP_TAGS, SMOKE_NOTE_TAG

__all__ = ["OFFLINE_TEMPLATE", "HIDDEN_TAGS", "drop_tagged_cells", "export_html", "report_notebook"]

#: An nbconvert template: the ``lab`` one without the scripts it fetches from CDNs.
OFFLINE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
"""
#: Cells a published notebook leaves out: the parameters (and papermill's copy of them) and
#: the note that the committed outputs are the smoke run.
HIDDEN_TAGS: tuple[str, ...] = ("parameters", "injected-parameters", SMOKE_NOTE_TAG)


def _read(notebook: Any) -> Any:
    import nbformat

    return copy.deepcopy(notebook) if hasattr(notebook, "cells") else nbformat.read(notebook, as_version=4)


def drop_tagged_cells(nb: Any, tags: Sequence[str] = HIDDEN_TAGS) -> Any:
    """``nb`` without the cells tagged with any of ``tags`` (in place; returned)."""
    nb.cells = [c for c in nb.cells if not set(tags) & set(c.metadata.get("tags", []))]
    return nb


def export_html(notebook: str | os.PathLike | Any, out: str | os.PathLike, hide_code: bool = True,
                title: str | None = None) -> Path:  # fmt: skip
    """One self-contained HTML file of an executed notebook (a path or a notebook node),
    written atomically: figures embedded, no script from the network, the cells of
    :data:`HIDDEN_TAGS` left out and, with ``hide_code``, the code and the prompts.

    Raises:
        ImportError: nbconvert is not installed (says what to install).
    """
    try:
        from nbconvert import HTMLExporter
    except ImportError as err:
        raise ImportError(f"export_html({out}) needs nbconvert: pip install 'gi-utils[notebooks]'") from err
    nb = drop_tagged_cells(_read(notebook))
    nb.metadata.pop("widgets", None)  # live widget state: nothing to show offline
    if title:
        nb.metadata["title"] = title
    with tempfile.TemporaryDirectory(prefix="gi_html_") as tmp:
        template = Path(tmp) / "offline.html.j2"
        template.write_text(OFFLINE_TEMPLATE, encoding="utf-8")
        exporter = HTMLExporter(template_name="lab", template_file=str(template), embed_images=True,
                                exclude_input=hide_code, exclude_input_prompt=hide_code,
                                exclude_output_prompt=hide_code)  # fmt: skip
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title or Path(out).stem}})
    return atomic_write_text(out, body)


def _demote(markdown: str) -> str:
    """Every Markdown heading one level down (``# A`` -> ``## A``)."""
    return re.sub(r"^(#{1,5}) ", r"#\1 ", markdown, flags=re.M)


def report_notebook(notebooks: Sequence[str | os.PathLike], title: str, intro: str) -> Any:
    """The executed notebooks as one notebook for :func:`export_html`: ``title`` and
    ``intro`` (Markdown) first, then each notebook's cells with its headings one level down
    (a notebook run twice, such as ``02_train_unet`` and ``02_train_fpn``, says which in its
    title), the cells of :data:`HIDDEN_TAGS` left out and the setup cell's output (the
    machine and the data) kept from the first notebook only."""
    import nbformat
    from nbformat.v4 import new_markdown_cell, new_notebook

    report = new_notebook(cells=[new_markdown_cell(f"# {title}\n\n{intro}")])
    for k, path in enumerate(notebooks):
        nb = drop_tagged_cells(nbformat.read(path, as_version=4))
        parts = Path(path).stem.split("_")
        variant = "_".join(parts[2:]) if len(parts) > 2 else ""  # 02_train_unet -> unet
        for cell in nb.cells:
            if cell.cell_type == "markdown":
                cell.source = _demote(cell.source)
                if variant and cell.source.startswith("## "):
                    first, _, rest = cell.source.partition("\n")
                    cell.source = f"{first} ({variant})\n{rest}"
                    variant = ""
            elif k > 0 and set(SETUP_TAGS) <= set(cell.metadata.get("tags", [])) and "runpy" in cell.source:
                continue
            report.cells.append(cell)
    report.metadata = {k: v for k, v in report.metadata.items() if k != "widgets"}
    report.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for k, cell in enumerate(report.cells):
        cell["id"] = f"r{k:03d}"
    return report
