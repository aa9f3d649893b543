"""Progress bars that suit both a notebook and a log file."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

__all__ = ["progress_bar"]


def progress_bar(iterable: Iterable | None = None, desc: str = "", enabled: bool = True, **kwargs: Any) -> tqdm:
    """A ``tqdm.auto`` bar: a widget in a notebook, a text bar in a terminal, and in a log
    file (papermill, a batch job) an update every 30 s instead of a line per refresh.

    ``kwargs`` go to tqdm (``total``, ``unit``, ``leave``...).
    """
    interactive = sys.stderr.isatty() or "ipykernel" in sys.modules
    options = {"desc": desc, "disable": not enabled, "dynamic_ncols": True,
               "mininterval": 0.2 if interactive else 30.0, **kwargs}  # fmt: skip
    return tqdm(iterable, **options)
