"""Progress bars that suit a live notebook, an executed one and a log file alike.

In a live notebook a bar is a widget. A notebook executed headlessly (papermill,
nbconvert, nbclient, nbval -- Kaggle's "Save & Run All" is papermill) would save only a
widget's first state (``0/3920``), so there the bar is text that prints one line, its final
state, when it closes (a bar made with ``leave=False``, such as one epoch's, prints
nothing: the epoch's own line says what it did); in a log file it is text every 30 s and
its final state. A kernel counts as headless when
``GI_HEADLESS=1`` is in its environment (:func:`gi_utils.pipeline.run_notebook` and the
tests set it) or its parent's command line names a headless runner;
``GI_PROGRESS=widget|text`` forces either.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import psutil
from tqdm import tqdm as text_tqdm
from tqdm.auto import tqdm as auto_tqdm

__all__ = ["HEADLESS_RUNNERS", "FinalStateBar", "headless_kernel", "progress_bar"]

#: Words in the command line of a kernel's parent that mark a headless execution.
HEADLESS_RUNNERS: tuple[str, ...] = ("papermill", "nbconvert", "nbclient", "nbval", "pytest")


@lru_cache(maxsize=1)
def headless_kernel() -> bool:
    """True inside a Jupyter kernel that a headless runner started (see the module
    docstring); False outside a kernel or in a live notebook."""
    forced = os.environ.get("GI_PROGRESS", "")
    if forced in ("widget", "text"):
        return forced == "text"
    if "ipykernel" not in sys.modules:
        return False
    if os.environ.get("GI_HEADLESS") == "1":
        return True
    try:
        parents = psutil.Process().parents()[:3]
        command = " ".join(" ".join(p.cmdline()) for p in parents).lower()
    except (psutil.Error, OSError):
        return False
    return any(word in command for word in HEADLESS_RUNNERS)


#: The line an executed notebook keeps: ``caching volumes: 100%|##########| 3920/3920 [00:12]``.
FINAL_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}]"


class FinalStateBar(text_tqdm):
    """A text bar that prints one line, its final state, when it closes (nothing before)."""

    _closing = False

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        return super().display(msg, pos) if self._closing else True

    def close(self) -> None:
        self._closing = True
        super().close()


def progress_bar(iterable: Iterable | None = None, desc: str = "", enabled: bool = True, **kwargs: Any):
    """A tqdm bar: a widget in a live notebook; in an executed notebook one text line, the
    final state, or nothing for ``leave=False``; text in a terminal, and in a log file every
    30 s and at the end.

    ``kwargs`` go to tqdm (``total``, ``unit``, ``leave``...).
    """
    in_kernel = "ipykernel" in sys.modules
    live = in_kernel and not headless_kernel()
    if live:
        return auto_tqdm(iterable, desc=desc, disable=not enabled, dynamic_ncols=True, mininterval=0.2, **kwargs)
    if in_kernel:  # an executed notebook: the final state of the bars that stay
        leave = kwargs.pop("leave", True)
        quiet = not enabled or leave is False
        return FinalStateBar(iterable, desc=desc, disable=quiet, leave=True, file=sys.stdout, bar_format=FINAL_FORMAT,
                             **kwargs)  # fmt: skip
    interval = 0.2 if sys.stderr.isatty() else 30.0
    if not sys.stderr.isatty():
        kwargs["leave"] = True  # a log keeps each bar's final state
    options = {"desc": desc, "disable": not enabled, "mininterval": interval, "ascii": not sys.stderr.isatty(),
               "file": sys.stderr, **kwargs}  # fmt: skip
    return text_tqdm(iterable, **options)
