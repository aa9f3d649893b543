"""``train.csv``: the run-length masks of the training slices, validated row by row."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from gi_utils.constants import CLASSES, TRAIN_CSV_COLUMNS
from gi_utils.data.errors import DataError
from gi_utils.data.names import ID_RE

__all__ = ["read_train_csv"]


def read_train_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``train.csv`` into a wide table: index ``id``, one RLE column per class.

    Missing or NaN segmentations become ``""`` (empty mask). The columns are read by
    name: extra columns, or ``id, class, segmentation`` in another order, give a warning
    that names them. Rows are validated:

    Raises:
        DataError: the file is missing, a column of ``id, class, segmentation`` is missing
            (named), the file does not parse as CSV, an (id, class) pair appears twice, a class name
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
    df = _required_columns(df, path)
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


def _required_columns(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """``df[id, class, segmentation]``; a missing one raises, extra or reordered ones warn."""
    columns, expected = list(df.columns), list(TRAIN_CSV_COLUMNS)
    missing = [c for c in expected if c not in columns]
    if missing:
        raise DataError(
            f"{path} has columns {columns}; expected {expected}: missing column(s) {missing}"
        )
    extra = [c for c in columns if c not in expected]
    if extra:
        warnings.warn(
            f"{path} has columns {columns}: extra column(s) {extra} ignored; "
            f"{expected} are read by name",
            stacklevel=3,
        )
    elif columns != expected:
        warnings.warn(
            f"{path} has columns {columns}, in another order than {expected}; "
            "they are read by name",
            stacklevel=3,
        )
    return df[expected]
