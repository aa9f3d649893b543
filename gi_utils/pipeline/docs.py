"""``make docs``: copy what the last ``make demo`` measured into the README and ``pictures/``.

``make demo`` writes only under the runs folder (``runs/pictures``: the results table and
the figures); this step, run on purpose, copies the figures the README shows and the
table into the tracked files, and writes the configuration table from the presets. The
README keeps each generated part between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from gi_utils.atomic import atomic_path, atomic_write_text
from gi_utils.paths import REPO_ROOT
from gi_utils.training.presets import presets_table

__all__ = ["README", "readme_block", "replace_block", "readme_pictures", "publish_docs"]

README: Path = REPO_ROOT / "README.md"
#: Files of the runs' pictures folder that are published besides the README's figures.
RESULT_FILES: tuple[str, ...] = ("results.md", "results.json", "selection.md")


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def readme_block(name: str, readme: str | os.PathLike = README) -> str:
    """The text between the README's ``name`` markers.

    Raises:
        ValueError: the README has no such block (names the file and the markers).
    """
    start, end = _markers(name)
    text = Path(readme).read_text(encoding="utf-8")
    m = re.search(re.escape(start) + r"\n(.*?)" + re.escape(end), text, flags=re.S)
    if m is None:
        raise ValueError(f"{readme} has no {start} ... {end} block")
    return m.group(1)


def replace_block(name: str, body: str, readme: str | os.PathLike = README) -> Path:
    """Replace the README's ``name`` block with ``body`` (atomic write)."""
    readme_block(name, readme)  # raises when the markers are missing
    start, end = _markers(name)
    text = Path(readme).read_text(encoding="utf-8")
    i, j = text.index(start) + len(start), text.index(end)
    return atomic_write_text(readme, text[:i] + "\n" + body.rstrip("\n") + "\n" + text[j:])


def readme_pictures(readme: str | os.PathLike = README) -> list[str]:
    """File names of the ``pictures/*.png`` the README shows, in order."""
    text = Path(readme).read_text(encoding="utf-8")
    return list(dict.fromkeys(re.findall(r"\]\(pictures/([\w.\-]+\.png)\)", text)))


def publish_docs(
    runs_pictures: str | os.PathLike, readme: str | os.PathLike = README, pictures: str | os.PathLike | None = None
) -> list[Path]:
    """Copy the demo's table and the README's figures from ``runs_pictures`` into
    ``pictures`` (default: next to the README) and the README's blocks.

    Raises:
        FileNotFoundError: a file the README needs is not in ``runs_pictures`` (run
            ``make demo`` first); nothing is changed then.
    """
    src, readme = Path(runs_pictures), Path(readme)
    dst = Path(pictures) if pictures else readme.parent / "pictures"
    names = [*RESULT_FILES, *readme_pictures(readme)]
    missing = [n for n in names if not (src / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{src} lacks {missing}: run `make demo` first")
    written = []
    for name in names:
        with atomic_path(dst / name) as tmp:
            shutil.copyfile(src / name, tmp)
        written.append(dst / name)
    replace_block("results", (src / "results.md").read_text(encoding="utf-8"), readme)
    replace_block("selection", (src / "selection.md").read_text(encoding="utf-8"), readme)
    replace_block("presets", presets_table(), readme)
    return [*written, readme]
