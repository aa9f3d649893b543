"""Where things are: the platform, the competition data, the runs folder, the pictures.

Every path of the package is resolved here, once, at an entry point (a notebook's first
cells, a command line), and the resolved :class:`~pathlib.Path` is passed down.

Platform (:func:`platform_name`): Kaggle when ``/kaggle/working`` (or the competition
mount) exists, Colab when ``COLAB_RELEASE_TAG`` is set (every Colab runtime sets it), else
local. The platform mounts are read below :func:`platform_root` (``$GI_PLATFORM_ROOT``,
default ``/``), so the platform stand-ins of the tests lay out ``kaggle/input``,
``kaggle/working`` or ``content/drive/MyDrive`` under a temporary folder.

Data root, first folder that holds ``train.csv`` wins:

1. the explicit ``data_dir`` argument,
2. the ``GI_DATA_DIR`` environment variable,

(these two are what the user asked for: when one is set and holds no ``train.csv`` the
error is raised at once rather than silently falling back to another folder), then
3. the Kaggle input mount,
4. the Colab Google-Drive folder,
5. ``./data`` in the working directory, then ``data/`` in the repository checkout.

When none holds ``train.csv`` a :class:`DataNotFoundError` lists every place tried and
says how to make the synthetic dataset.

Runs folder (checkpoints, caches, folds, results): the argument, ``$GI_RUNS_DIR``,
``/kaggle/working/runs`` on Kaggle, ``MyDrive/gi-tract-segmentation/runs`` on Colab with
Drive mounted (``/content`` is lost when the runtime is recycled; without Drive the runs
go to ``/content/runs`` with a warning that says so), ``runs/`` of the checkout, ``./runs``.

Disk cache (:func:`platform_cache_dir`): on Kaggle a scratch folder outside the saved output
(``/kaggle/temp``, else ``/tmp``) when it has room, on Colab the runtime's own disk
(``/content/cache``); elsewhere, and as the fallback, ``<runs>/cache`` beside the runs.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from gi_utils.atomic import SPACE_MARGIN, format_bytes, free_bytes
from gi_utils.constants import (
    COLAB_CONTENT_REL,
    COLAB_DATA_DIRNAME,
    COLAB_DRIVE_REL,
    COLAB_RUNS_REL,
    DATA_DIR_ENV,
    KAGGLE_COMPETITION,
    KAGGLE_INPUT_REL,
    KAGGLE_SCRATCH_RELS,
    KAGGLE_WORKING_REL,
    LOCAL_DATA_DIRNAME,
    PLATFORM_ROOT_ENV,
    RUNS_DIR_ENV,
)

__all__ = [
    "REPO_ROOT",
    "shown_path",
    "PLATFORMS",
    "DataNotFoundError",
    "platform_root",
    "kaggle_input_dir",
    "kaggle_data_dir",
    "kaggle_working_dir",
    "kaggle_scratch_dirs",
    "colab_content_dir",
    "colab_drive_dir",
    "on_kaggle",
    "on_colab",
    "platform_name",
    "candidate_data_dirs",
    "resolve_data_dir",
    "in_checkout",
    "default_runs_dir",
    "platform_cache_dir",
    "runs_dirs",
    "output_dir",
    "default_pictures_dir",
    "default_submission_path",
]

REPO_ROOT: Path = Path(__file__).resolve().parents[1]
#: The platforms :func:`platform_name` tells apart.
PLATFORMS: tuple[str, ...] = ("kaggle", "colab", "local")


class DataNotFoundError(FileNotFoundError):
    """No data root with a ``train.csv`` was found."""


def platform_root() -> Path:
    """The folder the platform mounts are read below: ``$GI_PLATFORM_ROOT``, else ``/``."""
    return Path(os.environ.get(PLATFORM_ROOT_ENV) or "/")


def kaggle_input_dir() -> Path:
    """Kaggle's read-only mounts of attached datasets and competitions (``/kaggle/input``)."""
    return platform_root() / KAGGLE_INPUT_REL


def kaggle_data_dir() -> Path:
    """Where Kaggle mounts the competition's data."""
    return kaggle_input_dir() / KAGGLE_COMPETITION


def kaggle_working_dir() -> Path:
    """A Kaggle notebook's own writable output folder (``/kaggle/working``)."""
    return platform_root() / KAGGLE_WORKING_REL


def kaggle_scratch_dirs() -> list[Path]:
    """Writable folders of a Kaggle session that are **not** saved with the notebook's
    output, in the order tried (``/kaggle/temp``, ``/tmp``)."""
    return [platform_root() / rel for rel in KAGGLE_SCRATCH_RELS]


def colab_content_dir() -> Path:
    """Colab's local disk (``/content``), lost when the runtime is recycled."""
    return platform_root() / COLAB_CONTENT_REL


def colab_drive_dir() -> Path:
    """Google Drive as Colab mounts it (``/content/drive/MyDrive``)."""
    return platform_root() / COLAB_DRIVE_REL


def in_checkout() -> bool:
    """True when ``gi_utils`` runs from a checkout of the repository (not an installed wheel)."""
    return (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "notebooks").is_dir()


def on_kaggle() -> bool:
    """True inside a Kaggle notebook (the competition mount or /kaggle/working exists)."""
    return kaggle_data_dir().is_dir() or kaggle_working_dir().is_dir()


def on_colab() -> bool:
    """True inside a Colab runtime (which sets ``COLAB_RELEASE_TAG``)."""
    return bool(os.environ.get("COLAB_RELEASE_TAG"))


def platform_name() -> str:
    """``"kaggle"``, ``"colab"`` or ``"local"`` (:data:`PLATFORMS`)."""
    return "kaggle" if on_kaggle() else "colab" if on_colab() else "local"


def candidate_data_dirs(data_dir: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """Return the places searched for the data, in order, as ``(source, path)`` pairs."""
    candidates: list[tuple[str, Path]] = []
    if data_dir is not None and str(data_dir) != "":
        candidates.append(("argument data_dir", Path(data_dir).expanduser()))
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        candidates.append((f"environment variable {DATA_DIR_ENV}", Path(env).expanduser()))
    candidates.append(("Kaggle input mount", kaggle_data_dir()))
    candidates.append(("Colab Drive folder", colab_drive_dir() / COLAB_DATA_DIRNAME))
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
        "  python -m gi_utils.synthetic data --cases 24"
    )


def default_runs_dir(runs_dir: str | os.PathLike | None = None) -> Path:
    """Folder of run folders: argument → ``$GI_RUNS_DIR`` → ``/kaggle/working/runs`` on
    Kaggle → ``MyDrive/gi-tract-segmentation/runs`` on Colab with Drive mounted (else
    ``/content/runs``, with a warning: it is lost when the runtime is recycled) →
    ``runs/`` of the repository checkout → ``./runs``."""
    if runs_dir:
        return Path(runs_dir)
    if os.environ.get(RUNS_DIR_ENV):
        return Path(os.environ[RUNS_DIR_ENV])
    if on_kaggle():
        return kaggle_working_dir() / "runs"
    if on_colab():
        if colab_drive_dir().is_dir():
            return colab_drive_dir() / COLAB_RUNS_REL
        warnings.warn(f"Google Drive is not mounted at {colab_drive_dir()}: runs go to {colab_content_dir() / 'runs'}, "
                      "which is lost when the runtime is recycled; run the setup cell again and allow Drive, "
                      "or pass runs_dir", stacklevel=2)  # fmt: skip
        return colab_content_dir() / "runs"
    return (REPO_ROOT if in_checkout() else Path.cwd()) / "runs"


def platform_cache_dir(need_bytes: int = 0) -> tuple[Path | None, str]:
    """The folder of the disk cache on this platform, and a note to print (``""``: none).

    * Kaggle: everything under ``/kaggle/working`` is saved as the notebook's output (20 GB
      at most) and re-attached to every later notebook, so the cache (3.9 GB compact at
      320 px) goes to the first existing scratch folder (:func:`kaggle_scratch_dirs`) with
      room for ``need_bytes`` (plus a 5% margin), as ``<scratch>/gi-cache``; with none, the
      note says so and the default (``None``: ``<runs>/cache``, in the output) is kept.
    * Colab: ``/content/cache``, the runtime's local disk (Drive is slow and small for it).
    * Elsewhere: ``None`` (``<runs>/cache``).
    """
    if on_kaggle():
        tried = []
        for folder in kaggle_scratch_dirs():
            free = free_bytes(folder) if folder.is_dir() else None
            if free is not None and free >= need_bytes * (1 + SPACE_MARGIN):
                return folder / "gi-cache", ""
            tried.append(f"{folder} ({'missing' if not folder.is_dir() else f'{format_bytes(free or 0)} free'})")
        return None, (f"no scratch folder with {format_bytes(need_bytes)} free for the cache ({', '.join(tried)}): "
                      f"it goes to the runs folder in {kaggle_working_dir()} and is saved with the notebook's "
                      "output")  # fmt: skip
    if on_colab():
        return colab_content_dir() / "cache", ""
    return None, ""


def runs_dirs(runs_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders of run folders that ``03_compare`` and ``04_submission`` read: a
    comma-separated ``runs_dir`` (e.g. the outputs of two training notebooks attached to
    a third), else :func:`default_runs_dir`."""
    parts = [p.strip() for p in str(runs_dir or "").split(",") if p.strip()]
    return [Path(p) for p in parts] or [default_runs_dir()]


def output_dir(out_dir: str | os.PathLike | None, runs: list[Path]) -> Path:
    """Where a notebook that reads ``runs`` writes its own files: ``out_dir`` if given;
    else the first runs folder, unless that is read-only (under Kaggle's input mounts, or
    not writable), then :func:`default_runs_dir`."""
    if out_dir:
        return Path(out_dir)
    first = runs[0]
    read_only = first.resolve().is_relative_to(kaggle_input_dir().resolve()) or (
        first.is_dir() and not os.access(first, os.W_OK))
    return default_runs_dir() if read_only else first


def default_pictures_dir(
    pictures_dir: str | os.PathLike | None = None, runs_dir: str | os.PathLike | None = None
) -> Path:
    """Where a notebook saves figures: the argument, else ``<runs>/pictures``.

    The repository's ``pictures/`` (shown in the README) is written only by ``make docs``,
    which copies the figures of the last ``make demo`` there.
    """
    return Path(pictures_dir) if pictures_dir else default_runs_dir(runs_dir) / "pictures"


def default_submission_path(runs_dir: str | os.PathLike) -> Path:
    """``/kaggle/working/submission.csv`` on Kaggle (where the grader looks), else
    ``<runs_dir>/submission.csv``."""
    if on_kaggle():
        return kaggle_working_dir() / "submission.csv"
    return Path(runs_dir) / "submission.csv"


def shown_path(path: str | os.PathLike) -> str:
    """A path as a notebook shows it: relative to the working folder where it lies below it
    or one level up (``../data``, ``../input/<dataset>``, ``runs``), else as it is."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)
    return str(path) if rel.startswith(os.path.join(os.pardir, os.pardir)) else rel
