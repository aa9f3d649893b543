"""The metadata table: every slice of a split, found on disk and joined with its masks.

The same functions read the real Kaggle data and the synthetic dataset of
:mod:`gi_utils.synthetic`, because both use the Kaggle layout::

    DATA/train.csv                                  id, class, segmentation (RLE)
    DATA/train/case123/case123_day20/scans/slice_0001_266_266_1.50_1.50.png
    DATA/test/...                                   same layout, no labels

Nothing is skipped silently: a ``train.csv`` id without an image or a malformed folder
or file name raises an error that names the id and the path. The only files skipped are
those macOS and Windows add when a dataset is zipped, unzipped or browsed (AppleDouble
``._*`` files, ``__MACOSX/`` folders, ``.DS_Store``, ``Thumbs.db``, ``desktop.ini``), and
they are counted in one warning.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from gi_utils.constants import CLASSES
from gi_utils.data.errors import DataError
from gi_utils.data.labels import read_train_csv
from gi_utils.data.names import FILENAME_RE, parse_id

__all__ = [
    "METADATA_COLUMNS",
    "FOREIGN_NAMES",
    "is_foreign_file",
    "list_slices",
    "build_metadata",
    "sort_slices",
    "has_masks",
]

METADATA_COLUMNS: tuple[str, ...] = (
    "id", "case", "day", "slice", "case_day", "width", "height",
    "spacing_w", "spacing_h", "path",
)  # fmt: skip

#: Files and folders (lower case) that macOS or Windows add to a folder; see :func:`is_foreign_file`.
FOREIGN_NAMES: frozenset[str] = frozenset({"__macosx", ".ds_store", "thumbs.db", "desktop.ini"})
_FOREIGN_KINDS = "AppleDouble ._*, __MACOSX/, .DS_Store, Thumbs.db, desktop.ini"


def is_foreign_file(name: str) -> bool:
    """True for a file or folder name that an operating system, not the dataset, put there.

    An AppleDouble file (``._slice_0001_266_266_1.50_1.50.png``, macOS's resource fork
    next to every file it zips), a ``__MACOSX`` folder, ``.DS_Store``, ``Thumbs.db`` or
    ``desktop.ini`` (case-insensitive, as on the systems that write them).
    """
    return name.startswith("._") or name.lower() in FOREIGN_NAMES


def list_slices(data_dir: str | os.PathLike, split: str = "train") -> pd.DataFrame:
    """List every slice image under ``data_dir/split`` (file names only; nothing decoded).

    Files and folders that macOS or Windows added (:func:`is_foreign_file`) are skipped
    at every level, with one warning that counts them and names the first.

    Returns:
        One row per slice, columns ``id, case, day, slice, case_day, width, height,
        spacing_w, spacing_h, path``, sorted by case, day and slice.

    Raises:
        DataError: the split folder is missing, a folder or file name is malformed, or a
            file sits in the folder of another case/day.
    """
    root = Path(data_dir) / split
    if not root.is_dir():
        raise DataError(f"no {split!r} folder at {root}")
    rows: list[tuple] = []
    foreign: list[str] = []
    for case_entry in _entries(root, foreign):
        if not case_entry.is_dir():
            continue
        if not re.fullmatch(r"case\d+", case_entry.name):
            raise DataError(f"unexpected folder {case_entry.path}: expected caseN")
        for day_entry in _entries(case_entry.path, foreign):
            if not day_entry.is_dir():
                continue
            m = re.fullmatch(r"case(\d+)_day(\d+)", day_entry.name)
            if m is None or f"case{m[1]}" != case_entry.name:
                raise DataError(
                    f"unexpected folder {day_entry.path}: expected {case_entry.name}_dayD"
                )
            _entries(day_entry.path, foreign)  # only counts what macOS/Windows left there
            scans = Path(day_entry.path) / "scans"
            if not scans.is_dir():
                raise DataError(f"case-day folder {day_entry.path} has no scans/ folder")
            case, day = int(m[1]), int(m[2])
            for f in _entries(scans, foreign):
                if f.name.endswith(".png"):
                    rows.append((case, day, f.name, f.path))
    if foreign:
        warnings.warn(
            f"skipped {len(foreign)} foreign file(s) and folder(s) ({_FOREIGN_KINDS}) under "
            f"{root}, first {foreign[0]}",
            stacklevel=2,
        )
    if not rows:
        raise DataError(f"no slice images (*.png) found under {root}")
    names = pd.DataFrame(rows, columns=["case", "day", "name", "path"])
    parts = names["name"].str.extract(FILENAME_RE)
    bad = parts["slice"].isna()
    if bad.any():
        raise DataError(
            f"slice file name {names.loc[bad, 'path'].iloc[0]!r} does not follow "
            "'slice_SSSS_W_H_SW_SH.png'"
        )
    meta = pd.DataFrame(
        {
            "case": names["case"].astype(np.int64),
            "day": names["day"].astype(np.int64),
            "slice": parts["slice"].astype(np.int64),
            "width": parts["width"].astype(np.int64),
            "height": parts["height"].astype(np.int64),
            "spacing_w": parts["spacing_w"].astype(float),
            "spacing_h": parts["spacing_h"].astype(float),
            "path": names["path"],
        }
    )
    meta["case_day"] = "case" + meta["case"].astype(str) + "_day" + meta["day"].astype(str)
    meta["id"] = meta["case_day"] + "_slice_" + meta["slice"].map("{:04d}".format)
    meta = meta.sort_values(["case", "day", "slice"], kind="stable").reset_index(drop=True)
    dup = meta["id"].duplicated()
    if dup.any():
        raise DataError(f"two image files for slice id {meta.loc[dup, 'id'].iloc[0]!r}")
    _check_volumes(meta)
    return meta[list(METADATA_COLUMNS)]


def _entries(folder: str | os.PathLike, foreign: list[str]) -> list[os.DirEntry]:
    """The entries of ``folder`` by name, without foreign ones (appended to ``foreign``)."""
    kept = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if is_foreign_file(entry.name):
            foreign.append(entry.path)
        else:
            kept.append(entry)
    return kept


def _check_volumes(meta: pd.DataFrame) -> None:
    """Warn about gaps in slice numbers; raise on mixed image sizes inside one scan."""
    g = meta.groupby("case_day", sort=False)
    sizes = g[["width", "height"]].nunique()
    mixed = sizes[(sizes > 1).any(axis=1)]
    if len(mixed):
        raise DataError(f"scan {mixed.index[0]!r} mixes slices of different sizes")
    stats = g["slice"].agg(["min", "max", "count"])
    gappy = stats[stats["max"] - stats["min"] + 1 != stats["count"]]
    for case_day, row in gappy.iterrows():
        present = set(meta.loc[meta["case_day"] == case_day, "slice"])
        missing = sorted(set(range(row["min"], row["max"] + 1)) - present)
        warnings.warn(
            f"scan {case_day!r} has gaps in its slice numbers (missing {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}); 2.5D neighbours follow the slices present",
            stacklevel=3,
        )


def build_metadata(
    data_dir: str | os.PathLike, split: str = "train", labels: bool | None = None
) -> pd.DataFrame:
    """One table of all slices of a split, joined with their RLE masks.

    Args:
        data_dir: the data root (see :func:`gi_utils.paths.resolve_data_dir`).
        split: ``"train"`` or ``"test"``.
        labels: join ``train.csv``; default ``True`` for train, ``False`` otherwise.

    Returns:
        The columns of :func:`list_slices` plus, with labels, one column per class in
        :data:`~gi_utils.constants.CLASSES` holding the RLE string (``""`` = empty) and a
        boolean ``empty`` (no class annotated on the slice).

    Raises:
        DataError: see :func:`list_slices` and :func:`read_train_csv`; also a
            ``train.csv`` id that has no image, named with the folder it should be in.
            (An image without ``train.csv`` rows only warns; its masks are empty.)
    """
    data_dir = Path(data_dir)
    meta = list_slices(data_dir, split)
    if labels is None:
        labels = split == "train"
    if not labels:
        return meta
    wide = read_train_csv(data_dir / "train.csv")
    orphans = wide.index.difference(pd.Index(meta["id"]))
    if len(orphans):
        sid = orphans[0]
        case, day, s = parse_id(sid)
        folder = data_dir / split / f"case{case}" / f"case{case}_day{day}" / "scans"
        raise DataError(
            f"{len(orphans)} train.csv id(s) have no image, first {sid!r}: expected "
            f"{folder}/slice_{s:04d}_W_H_SW_SH.png"
        )
    unlabelled = pd.Index(meta["id"]).difference(wide.index)
    if len(unlabelled):
        warnings.warn(
            f"{len(unlabelled)} image(s) under {data_dir / split} have no train.csv rows, first "
            f"{unlabelled[0]!r}; their masks are taken as empty",
            stacklevel=2,
        )
    meta = meta.join(wide, on="id")
    for name in CLASSES:
        meta[name] = meta[name].fillna("")
    meta["empty"] = (meta[list(CLASSES)] == "").all(axis=1)
    return meta


def sort_slices(meta: pd.DataFrame) -> pd.DataFrame:
    """``meta`` sorted by case, day and slice (stable), index reset: the row order of
    caches, datasets and out-of-fold files."""
    return meta.sort_values(["case", "day", "slice"], kind="stable").reset_index(drop=True)


def has_masks(meta: pd.DataFrame) -> bool:
    """True when ``meta`` carries one RLE column per class (a labelled split)."""
    return all(c in meta.columns for c in CLASSES)
