"""The submission: predict the test scans, post-process, encode, validate, write atomically."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from gi_utils.atomic import atomic_write_text
from gi_utils.constants import CLASSES, NUM_CLASSES, SUBMISSION_COLUMNS
from gi_utils.data.layout import build_metadata
from gi_utils.data.rle import RLEError, encode_rle, is_empty_rle, parse_rle
from gi_utils.inference.postprocessing import PostProcess
from gi_utils.inference.predict import load_models, predict_volumes
from gi_utils.paths import DataNotFoundError

__all__ = ["make_submission", "make_submissions", "validate_submission", "write_submission", "empty_submission"]


def empty_submission() -> pd.DataFrame:
    """A submission with the competition's header and no rows."""
    return pd.DataFrame({c: pd.Series(dtype=str) for c in SUBMISSION_COLUMNS})


def _has_images(folder: Path) -> bool:
    """True when ``folder`` (a split) holds a slice in the Kaggle layout (links followed)."""
    return folder.is_dir() and any(not p.name.startswith("._") for p in folder.glob("*/*/scans/*.png"))


def make_submission(
    model_paths: Sequence[str | os.PathLike] | str | os.PathLike,
    data_dir: str | os.PathLike,
    split: str = "test",
    out_csv: str | os.PathLike | None = "submission.csv",
    *,
    post: PostProcess | None = None,
    **predict: Any,
) -> pd.DataFrame:
    """Predict every scan of ``data_dir/split`` and write the competition's CSV.

    Args:
        model_paths: one or more ``.safetensors`` models (an ensemble is averaged).
        data_dir: the data root, resolved by the caller
            (:func:`gi_utils.paths.resolve_data_dir`).
        split: folder of the scans, ``"test"`` on Kaggle.
        out_csv: where to write (atomically); ``None`` writes nothing.
        post: thresholds, component sizes, gates, tails; ``None``: the models' own
            (:meth:`PostProcess.from_model_configs`).
        predict: how to predict, the keyword arguments of :func:`make_submissions`
            (``weights``, ``tta``, ``batch_size``, ``device``, ``amp``, ``channels_last``,
            ``progress``).

    Returns:
        ``id, class, predicted``: one row per (slice, class), classes in
        :data:`~gi_utils.constants.CLASSES` order, ``""`` for no mask. When the split has
        no images (Kaggle's hidden test set while a notebook is saved) the result is
        empty, with the header, and a warning.

    Raises:
        DataNotFoundError: ``data_dir`` does not exist (a typo must not give an empty
            submission).
    """
    posts = {"submission": post} if post is not None else None
    df = make_submissions(model_paths, data_dir, split, posts, **predict)["submission"]
    if out_csv is not None:
        write_submission(df, out_csv)
    return df


def make_submissions(
    model_paths: Sequence[str | os.PathLike] | str | os.PathLike,
    data_dir: str | os.PathLike,
    split: str = "test",
    posts: Mapping[str, PostProcess] | None = None,
    *,
    weights: Sequence[float] | None = None,
    tta=False,
    batch_size: int = 16,
    device=None,
    amp: str | None = None,
    channels_last: bool = False,
    progress: bool = True,
) -> dict[str, pd.DataFrame]:
    """One prediction of ``data_dir/split``, post-processed several ways.

    Args:
        model_paths, data_dir, split: as :func:`make_submission`.
        posts: name -> settings (``None``: ``{"submission": the models' own}``).
        weights: one weight per model (a blend); ``None``: equal weights.
        tta: ``False``, ``True`` (horizontal flip) or names of
            :data:`~gi_utils.inference.predict.TTA_FLIPS`.
        amp, channels_last: mixed precision and NHWC layout of the prediction (``None``:
            fp16 on a GPU, full precision on a CPU; ``"bf16"`` + ``channels_last`` changes
            about 1e-4 of the mask pixels on the CPU and is about 3x faster there).

    Returns:
        name -> validated submission table (see :func:`make_submission`).
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataNotFoundError(f"data folder {root} does not exist (make_submission data_dir)")
    if not _has_images(root / split):
        warnings.warn(f"no images under {root / split}: writing an empty submission", stacklevel=3)
        return {name: empty_submission() for name in (posts or {"submission": None})}
    models = load_models(model_paths, device, channels_last)
    posts = dict(posts or {"submission": PostProcess.from_model_configs([c for _, c in models])})
    meta = build_metadata(root, split, labels=False)
    rows_out: dict[str, list[tuple[str, str, str]]] = {name: [] for name in posts}
    for _, rows, probs, gate in predict_volumes(models, meta, tta=tta, batch_size=batch_size, device=device,
                                                weights=weights, amp=amp, progress=progress):  # fmt: skip
        ids = rows.sort_values("slice")["id"].tolist()
        for name, post in posts.items():
            masks = post.apply(probs, gate)
            rows_out[name].extend((sid, cls, encode_rle(masks[d, ..., c]))
                                  for d, sid in enumerate(ids) for c, cls in enumerate(CLASSES))  # fmt: skip
    out = {}
    for name, rows in rows_out.items():
        out[name] = pd.DataFrame(rows, columns=list(SUBMISSION_COLUMNS))
        validate_submission(out[name], meta)
    return out


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
