"""A run that spans sessions: continuing one found among Kaggle's attached inputs, and the
line that says how to continue one the session's time limit stopped.

On Kaggle a new version of a notebook starts from an empty ``/kaggle/working``; the
previous version's output comes back only as a read-only input, mounted under
``/kaggle/input/<notebook>/`` (Add Input -> Your Work -> Notebooks). :func:`adopt_attached_run`
finds there a run folder of the same name whose settings are those of the run about to
start (:func:`gi_utils.models.run_folder.resume_differences`, the check ``last.pt`` is
resumed under), copies it into the run's own folder, and the run goes on from its
``last.pt``: resuming is exact, so the result equals an uninterrupted run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd

from gi_utils.atomic import read_json
from gi_utils.models.run_folder import CONFIG_FILE, HISTORY_FILE, STATE_FILE, resume_differences
from gi_utils.paths import kaggle_input_dir, platform_name
from gi_utils.runlock import LOCK_NAME
from gi_utils.training.config import TrainConfig

__all__ = ["ATTACHED_DEPTH", "attached_runs", "adopt_attached_run", "continue_hint"]

#: Folder levels below ``/kaggle/input/<input>/`` searched for a run folder (the output of
#: 02 holds ``runs/<run>``; a dataset may hold ``<run>`` or one more level).
ATTACHED_DEPTH = 3


def attached_runs(name: str) -> list[Path]:
    """Run folders called ``name`` that hold a ``last.pt`` among Kaggle's inputs
    (``/kaggle/input/<input>/<run>``, ``.../runs/<run>``, one level deeper), sorted."""
    root = kaggle_input_dir()
    if not root.is_dir():
        return []
    found = []
    for depth in range(ATTACHED_DEPTH):
        found += root.glob("/".join(["*"] * (depth + 1)) + f"/{name}/{STATE_FILE}")
    return sorted({p.parent for p in found})


def _epochs_done(folder: Path) -> int:
    history = folder / HISTORY_FILE
    return len(pd.read_csv(history)) if history.is_file() else 0


def adopt_attached_run(cfg: TrainConfig) -> Path | None:
    """Copy into ``cfg.out_dir`` the attached run folder of the same run (same name, same
    settings up to those that do not change its numbers) when ``cfg.out_dir`` has no
    ``last.pt`` yet and ``cfg.resume``; of several, the one furthest on. Attached folders
    of the same name and other settings are named and left alone.

    Returns:
        The folder copied from, or ``None``.
    """
    out = Path(cfg.out_dir)
    if not cfg.resume or (out / STATE_FILE).is_file():
        return None
    same = []
    for folder in attached_runs(out.name):
        saved = read_json(folder / CONFIG_FILE) if (folder / CONFIG_FILE).is_file() else {}
        diff = resume_differences(cfg.to_dict(), saved)
        if diff:
            details = ", ".join(f"{k}: {old!r} there, {new!r} here" for k, (old, new) in list(diff.items())[:3])
            print(f"not continuing the attached {folder}: another run ({details})", flush=True)
        else:
            same.append(folder)
    if not same:
        return None
    source = max(same, key=lambda f: (_epochs_done(f), (f / STATE_FILE).stat().st_mtime))
    staging = out.with_name(f".{out.name}.adopting")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging, copy_function=shutil.copyfile,  # the input's read-only bits not copied
                    ignore=shutil.ignore_patterns(LOCK_NAME))  # a lock of the other session's process
    for folder, _, _ in os.walk(staging):
        os.chmod(folder, 0o755)  # copytree copies a folder's read-only mode
    if out.exists():  # a folder without last.pt: nothing trained there
        shutil.rmtree(out)
    staging.rename(out)
    print(f"continuing {out.name} from the attached {source} ({_epochs_done(out)} of {cfg.epochs} epochs done): "
          f"copied to {out}", flush=True)  # fmt: skip
    return source


def continue_hint(run_dir: Path, not_started: int = 0) -> str:
    """One line: how to continue the run in ``run_dir`` that the session's time limit
    stopped (``not_started``: folds not begun), in the platform's words."""
    later = f" and the {not_started} fold(s) not begun" if not_started else ""
    platform = platform_name()
    if platform == "kaggle":
        return (f"to continue {run_dir.name}{later}: this version's output keeps {STATE_FILE}; in the next "
                "version of this notebook (or a copy of it) Add Input -> Your Work -> Notebooks -> this notebook, "
                "then Save Version -> Save & Run All with the same parameters: 02 copies the run from "
                "/kaggle/input and goes on where it stopped")  # fmt: skip
    if platform == "colab":
        return (f"to continue {run_dir.name}{later}: in a new runtime open this notebook and Run all with the "
                f"same parameters: it resumes from {run_dir / STATE_FILE} on Drive")  # fmt: skip
    return (f"to continue {run_dir.name}{later}: run this notebook again with the same parameters: it resumes "
            f"from {run_dir / STATE_FILE}")  # fmt: skip
