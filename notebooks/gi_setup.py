"""Make ``gi_utils`` importable in a notebook, on Kaggle, Colab or a checkout, and say what
the session runs on. The first cell of every notebook finds this file and runs it.

It uses the standard library alone: it runs before ``gi_utils`` is installed, since it
installs it. Where this file is found:

* in a checkout: ``notebooks/gi_setup.py``;
* on Kaggle: at the top of the bundle dataset of ``make kaggle`` (attached to the notebook,
  ``/kaggle/input/<dataset>/``), beside the wheels;
* on Colab: in ``MyDrive/gi-tract-segmentation/wheels`` with the wheels (the cell mounts
  Drive first).

What it does: nothing where ``gi_utils`` imports already (a checkout after ``make venv``);
otherwise ``pip install`` from, in order, the checkout the notebook sits in (``-e``), the
wheels beside this file and those of an attached Kaggle dataset (``/kaggle/input/*/`` or
one folder below) or of ``MyDrive/gi-tract-segmentation/wheels`` on Colab -- first offline
(``--no-index``), then with the package index for what they lack -- and last
``$GI_REPO_URL``, only when set (a pip requirement). Then it prints one line on the
package and the device, and one on the data the notebook finds by default (synthetic data
said so in capitals).

Platform folders are read below ``$GI_PLATFORM_ROOT`` (default ``/``), as in
:mod:`gi_utils.paths`. For the tests: ``GI_SETUP_FORCE=1`` acts even where gi_utils
imports, ``GI_SETUP_DRY_RUN=1`` prints the pip command it chose instead of running it.
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import os
import site
import subprocess
import sys

HINT = (
    " On Kaggle: attach the bundle dataset of `make kaggle` (kaggle datasets create -p dist/kaggle/dataset) to this"
    " notebook. On Colab: copy the files of `make kaggle` (dist/kaggle/dataset/*.whl and gi_setup.py) to"
    " MyDrive/gi-tract-segmentation/wheels. Or set GI_REPO_URL to a pip requirement of the project"
    " (e.g. git+https://...)."
)


def _here() -> str:
    """The folder of this file (``runpy.run_path`` sets ``__file__``)."""
    path = globals().get("__file__")
    return os.path.dirname(os.path.abspath(path)) if path else ""


def _places(root: str) -> list[str]:
    """Glob patterns of folders that may hold the wheels."""
    places = [_here(), os.path.join(root, "kaggle", "input", "*"), os.path.join(root, "kaggle", "input", "*", "*")]
    if os.environ.get("COLAB_RELEASE_TAG"):
        places.append(os.path.join(root, "content", "drive", "MyDrive", "gi-tract-segmentation", "wheels"))
    return [p for p in places if p]


def _attempts(root: str) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """``[(what, pip arguments)]`` in the order tried, and the places searched for wheels."""
    here = os.path.abspath(os.getcwd())
    checkouts = [d for d in (here, os.path.dirname(here))
                 if os.path.isfile(os.path.join(d, "pyproject.toml")) and os.path.isdir(os.path.join(d, "gi_utils"))]
    places = _places(root)
    wheel_dirs = sorted({os.path.dirname(w) for place in places for w in glob.glob(os.path.join(place, "gi_utils-*.whl"))})
    attempts = [(f"the checkout {d}", ["-e", d]) for d in checkouts[:1]]
    if wheel_dirs:
        links = [f"--find-links={d}" for d in wheel_dirs]
        attempts.append((f"the wheels in {', '.join(wheel_dirs)} (offline)", ["--no-index", *links, "gi-utils"]))
        attempts.append((f"the wheels in {', '.join(wheel_dirs)} and the package index", [*links, "gi-utils"]))
    if os.environ.get("GI_REPO_URL"):
        attempts.append((f"the repository {os.environ['GI_REPO_URL']}", [os.environ["GI_REPO_URL"]]))
    return attempts, places


def install() -> bool:
    """Install gi_utils where it is missing (see the module docstring); True when it can
    be imported afterwards.

    Raises:
        RuntimeError: every source failed (lists what was tried and where wheels were
            looked for, and what to attach or copy).
    """
    if importlib.util.find_spec("gi_utils") is not None and os.environ.get("GI_SETUP_FORCE") != "1":
        return True
    attempts, places = _attempts(os.environ.get("GI_PLATFORM_ROOT") or "/")
    tried = []
    for what, args in attempts:
        command = [sys.executable, "-m", "pip", "install", "-q", *args]
        if os.environ.get("GI_SETUP_DRY_RUN") == "1":
            print("gi_utils would be installed from", what, "with:", " ".join(command[1:]))
            return False
        if subprocess.run(command).returncode == 0:
            for packages in site.getsitepackages():
                site.addsitedir(packages)  # activates an editable install in this kernel
            importlib.invalidate_caches()
            print("gi_utils installed from", what)
            return True
        tried.append(what)
    raise RuntimeError("could not install gi_utils; tried: " + ("; ".join(tried) or "nothing")
                       + f". No usable wheels in {', '.join(places)}." + HINT)


if install():
    from gi_utils.pipeline.notebook import session_banner

    print(session_banner())
