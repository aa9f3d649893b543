"""Resolve where the competition data lives.

Order (first folder that holds ``train.csv`` wins):

1. the explicit ``data_dir`` argument,
2. the ``GI_DATA_DIR`` environment variable,

(these two are what the user asked for: when one is set and holds no ``train.csv`` the
error is raised at once rather than silently falling back to another folder), then
3. the Kaggle input mount,
4. the Colab Google-Drive folder,
5. ``./data`` in the working directory, then ``data/`` in the repository checkout.

When none holds ``train.csv`` a :class:`DataNotFoundError` lists every place tried and
says how to make the synthetic dataset.
"""

from __future__ import annotations

import os
from pathlib import Path

from gi_utils.constants import (
    COLAB_DATA_DIR,
    DATA_DIR_ENV,
    KAGGLE_DATA_DIR,
    LOCAL_DATA_DIRNAME,
)

REPO_ROOT: Path = Path(__file__).resolve().parents[1]


class DataNotFoundError(FileNotFoundError):
    """No data root with a ``train.csv`` was found."""


def candidate_data_dirs(data_dir: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """Return the places searched for the data, in order, as ``(source, path)`` pairs."""
    candidates: list[tuple[str, Path]] = []
    if data_dir is not None and str(data_dir) != "":
        candidates.append(("argument data_dir", Path(data_dir).expanduser()))
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        candidates.append((f"environment variable {DATA_DIR_ENV}", Path(env).expanduser()))
    candidates.append(("Kaggle input mount", Path(KAGGLE_DATA_DIR)))
    candidates.append(("Colab Drive folder", Path(COLAB_DATA_DIR)))
    candidates.append(("working directory", Path.cwd() / LOCAL_DATA_DIRNAME))
    repo_local = REPO_ROOT / LOCAL_DATA_DIRNAME
    if repo_local != Path.cwd() / LOCAL_DATA_DIRNAME:
        candidates.append(("repository checkout", repo_local))
    return candidates


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Return the first data root that holds ``train.csv``.

    Args:
        data_dir: explicit folder; ``None`` or ``""`` means "search".

    Raises:
        DataNotFoundError: no candidate holds ``train.csv``; the message lists each
            place tried and the command that writes the synthetic dataset.
    """
    tried = []
    for source, path in candidate_data_dirs(data_dir):
        if (path / "train.csv").is_file():
            return path
        state = "missing" if not path.exists() else "no train.csv"
        tried.append(f"  - {source}: {path} ({state})")
        if source.startswith(("argument", "environment")):
            break
    raise DataNotFoundError(
        "No data folder with train.csv found. Tried, in order:\n"
        + "\n".join(tried)
        + f"\nPass data_dir=..., set {DATA_DIR_ENV}, or make the synthetic dataset with:\n"
        "  python -m gi_utils.synth data --cases 20"
    )
