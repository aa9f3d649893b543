"""Read the competition data: ids, file names, the metadata table, images and masks.

The same functions read the real Kaggle data and the synthetic dataset of
:mod:`gi_utils.synth`, because both use the Kaggle layout::

    DATA/train.csv                                  id, class, segmentation (RLE)
    DATA/train/case123/case123_day20/scans/slice_0001_266_266_1.50_1.50.png
    DATA/test/...                                   same layout, no labels

The four numbers in a file name are **width, height** (pixels) and the pixel spacing in
mm along width and height; the image array has shape (H, W).

Nothing is skipped silently: a ``train.csv`` id without an image, an image that does
not decode, or a malformed id raises an error that names the id and the path.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from gi_utils.constants import CLASSES, TRAIN_CSV_COLUMNS
from gi_utils.rle import RLEError, decode_rle

__all__ = [
    "DataError",
    "ImageReadError",
    "parse_id",
    "make_id",
    "parse_slice_filename",
    "list_slices",
    "read_train_csv",
    "build_metadata",
    "read_image",
    "slice_mask",
    "iter_volumes",
    "read_volume",
    "read_volume_mask",
]

ID_RE = re.compile(r"^case(?P<case>\d+)_day(?P<day>\d+)_slice_(?P<slice>\d+)$")
FILENAME_RE = re.compile(
    r"^slice_(?P<slice>\d+)_(?P<width>\d+)_(?P<height>\d+)_"
    r"(?P<spacing_w>\d+(?:\.\d+)?)_(?P<spacing_h>\d+(?:\.\d+)?)\.png$"
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
METADATA_COLUMNS: tuple[str, ...] = (
    "id", "case", "day", "slice", "case_day", "width", "height",
    "spacing_w", "spacing_h", "path",
)  # fmt: skip


class DataError(ValueError):
    """The data on disk or in train.csv do not follow the competition layout."""


class ImageReadError(DataError):
    """An image file is missing, does not decode, or is not what its name says."""


# --------------------------------------------------------------------------- ids, names
def parse_id(slice_id: str) -> tuple[int, int, int]:
    """Split ``"case123_day20_slice_0001"`` into ``(123, 20, 1)``.

    Raises:
        DataError: the id does not have the form ``caseN_dayD_slice_SSSS``.
    """
    m = ID_RE.match(slice_id) if isinstance(slice_id, str) else None
    if m is None:
        raise DataError(f"id {slice_id!r} is not of the form 'caseN_dayD_slice_SSSS'")
    return int(m["case"]), int(m["day"]), int(m["slice"])


def make_id(case: int, day: int, slice_no: int) -> str:
    """Inverse of :func:`parse_id`: ``(123, 20, 1)`` -> ``"case123_day20_slice_0001"``."""
    return f"case{case}_day{day}_slice_{slice_no:04d}"


def parse_slice_filename(name: str) -> dict[str, float | int]:
    """Parse ``slice_0067_360_310_1.50_1.50.png``.

    Returns:
        ``{"slice": 67, "width": 360, "height": 310, "spacing_w": 1.5, "spacing_h": 1.5}``;
        the image array of that file has shape (height, width) = (310, 360).

    Raises:
        DataError: the name does not follow ``slice_SSSS_W_H_SW_SH.png``.
    """
    m = FILENAME_RE.match(os.path.basename(name))
    if m is None:
        raise DataError(
            f"slice file name {name!r} does not follow 'slice_SSSS_W_H_SW_SH.png' "
            "(slice number, width, height, pixel spacing in mm)"
        )
    return {
        "slice": int(m["slice"]),
        "width": int(m["width"]),
        "height": int(m["height"]),
        "spacing_w": float(m["spacing_w"]),
        "spacing_h": float(m["spacing_h"]),
    }


# --------------------------------------------------------------------------- tables
def list_slices(data_dir: str | os.PathLike, split: str = "train") -> pd.DataFrame:
    """List every slice image under ``data_dir/split`` (file names only; nothing decoded).

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
    for case_entry in sorted(os.scandir(root), key=lambda e: e.name):
        if not case_entry.is_dir():
            continue
        if not re.fullmatch(r"case\d+", case_entry.name):
            raise DataError(f"unexpected folder {case_entry.path}: expected caseN")
        for day_entry in sorted(os.scandir(case_entry.path), key=lambda e: e.name):
            if not day_entry.is_dir():
                continue
            m = re.fullmatch(r"case(\d+)_day(\d+)", day_entry.name)
            if m is None or f"case{m[1]}" != case_entry.name:
                raise DataError(
                    f"unexpected folder {day_entry.path}: expected {case_entry.name}_dayD"
                )
            scans = Path(day_entry.path) / "scans"
            if not scans.is_dir():
                raise DataError(f"case-day folder {day_entry.path} has no scans/ folder")
            case, day = int(m[1]), int(m[2])
            for f in os.scandir(scans):
                if f.name.endswith(".png"):
                    rows.append((case, day, f.name, f.path))
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


def read_train_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``train.csv`` into a wide table: index ``id``, one RLE column per class.

    Missing or NaN segmentations become ``""`` (empty mask). Rows are validated:

    Raises:
        DataError: the file is missing, the columns are not ``id, class, segmentation``,
            the file does not parse as CSV, an (id, class) pair appears twice, a class name
            is unknown, or an id is malformed. Each message names the offending row or
            value. An id with rows for only some classes gives a warning (the missing
            classes are empty masks).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"train.csv not found at {path}")
    try:
        df = pd.read_csv(path, dtype={"id": str, "class": str, "segmentation": str})
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not a readable CSV ({type(err).__name__}: {err})") from err
    if tuple(df.columns) != TRAIN_CSV_COLUMNS:
        raise DataError(
            f"{path} has columns {list(df.columns)}; expected {list(TRAIN_CSV_COLUMNS)}"
        )
    unknown = ~df["class"].isin(CLASSES)
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise DataError(
            f"{path} row {i + 2}: unknown class {df['class'].iloc[i]!r} "
            f"(id {df['id'].iloc[i]!r}); expected one of {list(CLASSES)}"
        )
    dup = df.duplicated(["id", "class"])
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise DataError(
            f"{path} row {i + 2}: duplicate (id, class) = ({df['id'].iloc[i]!r}, "
            f"{df['class'].iloc[i]!r})"
        )
    bad_id = ~df["id"].str.match(ID_RE.pattern, na=False)
    if bad_id.any():
        i = int(np.flatnonzero(bad_id)[0])
        raise DataError(f"{path} row {i + 2}: id {df['id'].iloc[i]!r} is not 'caseN_dayD_slice_SSSS'")
    counts = df.groupby("id").size()
    partial = counts[counts < len(CLASSES)]
    if len(partial):
        warnings.warn(
            f"{path}: {len(partial)} id(s) lack rows for some classes, first {partial.index[0]!r}; "
            "the missing classes are taken as empty masks",
            stacklevel=2,
        )
    wide = df.pivot(index="id", columns="class", values="segmentation")
    wide = wide.reindex(columns=list(CLASSES), fill_value="").fillna("")
    wide.columns.name = None
    return wide


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


# --------------------------------------------------------------------------- pixels
def read_image(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a slice PNG as uint16 (H, W) without losing bit depth.

    8-bit grayscale files are accepted with a warning and widened to uint16 (values
    unchanged); colour images are rejected.

    Args:
        path: the PNG.
        shape: expected (H, W); by default taken from the file name when it follows the
            competition's naming.

    Raises:
        ImageReadError: the file is missing, is not a PNG, does not decode (truncated),
            has colour channels, or its size differs from ``shape`` / its file name. The
            message names the path.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image not found: {path}")
    data = np.fromfile(path, dtype=np.uint8)
    if data[: len(PNG_SIGNATURE)].tobytes() != PNG_SIGNATURE:
        raise ImageReadError(f"image {path} is not a PNG file (no PNG signature at its start)")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageReadError(f"image does not decode (not a PNG or truncated): {path}")
    if img.ndim != 2:
        raise ImageReadError(
            f"image {path} has shape {img.shape}; expected 16-bit grayscale (H, W)"
        )
    if img.dtype == np.uint8:
        warnings.warn(f"image {path} is 8-bit; expected 16-bit, widening to uint16", stacklevel=2)
        img = img.astype(np.uint16)
    elif img.dtype != np.uint16:
        raise ImageReadError(f"image {path} has dtype {img.dtype}; expected uint16")
    if shape is None and FILENAME_RE.match(path.name):
        info = parse_slice_filename(path.name)
        shape = (int(info["height"]), int(info["width"]))
    if shape is not None and img.shape != tuple(shape):
        raise ImageReadError(
            f"image {path} has shape (H, W) = {img.shape}; its name says {tuple(shape)}"
        )
    return img


def slice_mask(row: pd.Series | dict) -> np.ndarray:
    """Decode the three class masks of one metadata row into a bool array (H, W, 3).

    Raises:
        DataError: a mask string is malformed; the message names the id and class.
    """
    shape = (int(row["height"]), int(row["width"]))
    out = np.zeros((*shape, len(CLASSES)), dtype=bool)
    for c, name in enumerate(CLASSES):
        try:
            out[..., c] = decode_rle(row[name], shape)
        except RLEError as err:
            raise DataError(f"bad mask for id {row['id']!r}, class {name!r}: {err}") from err
    return out


def iter_volumes(meta: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    """Yield ``(case_day, rows)`` per scan, rows in slice order, scans in case/day order."""
    order = meta.sort_values(["case", "day", "slice"], kind="stable")
    for case_day, rows in order.groupby("case_day", sort=False):
        yield str(case_day), rows


def read_volume(rows: pd.DataFrame) -> np.ndarray:
    """Stack the slices of one scan (rows of :func:`iter_volumes`) into uint16 (D, H, W)."""
    rows = rows.sort_values("slice")
    return np.stack([read_image(p, (h, w)) for p, h, w in zip(rows["path"], rows["height"], rows["width"])])


def read_volume_mask(rows: pd.DataFrame) -> np.ndarray:
    """Masks of one scan as bool (D, H, W, 3), slices in order, channels in class order."""
    rows = rows.sort_values("slice")
    return np.stack([slice_mask(r) for _, r in rows.iterrows()])
