"""The submission: predict the test scans, post-process, encode, validate, write atomically."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from gi_utils.atomic import atomic_write_text
from gi_utils.constants import CLASSES, NUM_CLASSES, SUBMISSION_COLUMNS
from gi_utils.data.layout import build_metadata
from gi_utils.data.rle import RLEError, encode_rle, is_empty_rle, parse_rle
from gi_utils.inference.postprocessing import PostProcess
from gi_utils.inference.predict import load_models, predict_volumes
from gi_utils.paths import DataNotFoundError

__all__ = ["make_submission", "validate_submission", "write_submission", "empty_submission"]


def empty_submission() -> pd.DataFrame:
    """A submission with the competition's header and no rows."""
    return pd.DataFrame({c: pd.Series(dtype=str) for c in SUBMISSION_COLUMNS})


def _has_images(folder: Path) -> bool:
    return folder.is_dir() and next(folder.rglob("*.png"), None) is not None


def make_submission(
    model_paths: Sequence[str | os.PathLike] | str | os.PathLike,
    data_dir: str | os.PathLike,
    split: str = "test",
    out_csv: str | os.PathLike | None = "submission.csv",
    *,
    post: PostProcess | None = None,
    tta=False,
    batch_size: int = 16,
    device=None,
    progress: bool = True,
) -> pd.DataFrame:
    """Predict every scan of ``data_dir/split`` and write the competition's CSV.

    Args:
        model_paths: one or more ``.safetensors`` models (an ensemble is averaged).
        data_dir: the data root, resolved by the caller
            (:func:`gi_utils.paths.resolve_data_dir`).
        split: folder of the scans, ``"test"`` on Kaggle.
        out_csv: where to write (atomically); ``None`` writes nothing.
        post: thresholds and component sizes; ``None``: the models' own
            (:meth:`PostProcess.from_model_configs`).
        tta: ``False``, ``True`` (horizontal flip) or names of :data:`TTA_FLIPS`.

    Returns:
        ``id, class, predicted``: one row per (slice, class), classes in
        :data:`~gi_utils.constants.CLASSES` order, ``""`` for no mask. When the split has
        no images (Kaggle's hidden test set while a notebook is saved) the result is
        empty, with the header, and a warning.

    Raises:
        DataNotFoundError: ``data_dir`` does not exist (a typo must not give an empty
            submission).
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataNotFoundError(f"data folder {root} does not exist (make_submission data_dir)")
    if not _has_images(root / split):
        warnings.warn(f"no images under {root / split}: writing an empty submission", stacklevel=2)
        df = empty_submission()
    else:
        models = load_models(model_paths, device)
        post = post or PostProcess.from_model_configs([c for _, c in models])
        meta = build_metadata(root, split, labels=False)
        rows_out: list[tuple[str, str, str]] = []
        for _, rows, probs in predict_volumes(
            models, meta, tta=tta, batch_size=batch_size, device=device, progress=progress
        ):
            masks = post.apply(probs)
            for d, sid in enumerate(rows.sort_values("slice")["id"]):
                rows_out.extend(
                    (sid, name, encode_rle(masks[d, ..., c])) for c, name in enumerate(CLASSES)
                )
        df = pd.DataFrame(rows_out, columns=list(SUBMISSION_COLUMNS))
        validate_submission(df, meta)
    if out_csv is not None:
        write_submission(df, out_csv)
    return df


def write_submission(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``df`` as CSV atomically (temp file + ``os.replace``)."""
    return atomic_write_text(path, df.to_csv(index=False))


def validate_submission(df: pd.DataFrame, meta: pd.DataFrame) -> None:
    """Check a submission against the slices of ``meta`` (``build_metadata(..., "test")``).

    Checks: the header is exactly ``id,class,predicted``; one row per (id, class) of
    ``meta`` x :data:`CLASSES`, no duplicates, no others; every ``predicted`` is empty or
    an RLE with positive, increasing, non-overlapping runs inside the image (H * W of that id).

    Raises:
        ValueError: the first problem, naming the row (0-based), its id and class.
    """
    if list(df.columns) != list(SUBMISSION_COLUMNS):
        raise ValueError(
            f"submission columns are {list(df.columns)}; expected {list(SUBMISSION_COLUMNS)}"
        )
    pixels = dict(
        zip(meta["id"], meta["height"].astype(int) * meta["width"].astype(int), strict=True)
    )
    seen: set[tuple[str, str]] = set()
    for i, (sid, cls, rle) in enumerate(zip(df["id"], df["class"], df["predicted"], strict=True)):
        where = f"row {i} (id {sid!r}, class {cls!r})"
        if cls not in CLASSES:
            raise ValueError(f"{where}: unknown class; expected one of {list(CLASSES)}")
        if sid not in pixels:
            raise ValueError(f"{where}: id is not a slice of the test set")
        if (sid, cls) in seen:
            raise ValueError(f"{where}: duplicate (id, class)")
        seen.add((sid, cls))
        if not is_empty_rle(rle):
            try:
                parse_rle(rle, pixels[sid])
            except RLEError as err:
                raise ValueError(f"{where}: bad RLE: {err}") from None
    if len(seen) != len(pixels) * NUM_CLASSES:
        missing = next((s, c) for s in pixels for c in CLASSES if (s, c) not in seen)
        raise ValueError(
            f"submission has {len(seen)} rows, expected {len(pixels) * NUM_CLASSES}; "
            f"first missing (id, class): {missing}"
        )
