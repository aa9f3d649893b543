"""The 1st place's tail filter: the slices just past the last annotated one of each scan,
left out of training.

Below the large bowel's last annotated slice the annotators stopped, not the organ: the
next slices often show bowel with no mask, a misleading "empty" sample. The 1st place
(CarnoZhao/Kaggle-UWMGIT, ``data_preprocess.py``, the ``splits_notail`` lists) removes, per
case-day, the 5 slices numbered ``end + 1 .. end + 5``, where ``end`` is the number of the
last slice with any class annotated; the 2.5D stacks are still built from the whole scan,
so a kept slice keeps its neighbours. :func:`tail_slices` is that rule; the training
sampler leaves those rows out (``TrainConfig.drop_tail``), validation keeps whole scans.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["TAIL_SLICES", "tail_slices"]

#: Slices past the last annotated one that the 1st place left out.
TAIL_SLICES: int = 5


def tail_slices(meta: pd.DataFrame, n: int = TAIL_SLICES) -> np.ndarray:
    """The rows of ``meta`` in the tail of their scan (the 1st place's ``splits_notail``).

    Args:
        meta: slices with ``case_day``, ``slice`` (the number in the file name) and
            ``empty`` (no class annotated), as :func:`gi_utils.data.build_metadata` gives.
        n: how many slice numbers past the last annotated one.

    Returns:
        bool (len(meta),): ``slice`` in ``end + 1 .. end + n``, ``end`` the largest slice
        number of the row's scan with an annotation. A scan without any annotation has
        no tail (the 1st place's script assumes one; every training scan has one).
    """
    if n < 0:
        raise ValueError(f"tail_slices: n must be >= 0, got {n}")
    missing = [c for c in ("case_day", "slice", "empty") if c not in meta.columns]
    if missing:
        raise ValueError(f"tail_slices: meta lacks the column(s) {missing}")
    end = meta.loc[~meta["empty"].astype(bool)].groupby("case_day")["slice"].max()
    last = meta["case_day"].map(end)  # NaN: a scan without annotation
    number = meta["slice"]
    return ((number > last) & (number <= last + n)).to_numpy(bool)
