"""The data root of a notebook or command, resolved once: the competition data where they
are found, else (locally, never on Kaggle or Colab unless asked with ``data_dir="synthetic"``)
the default synthetic dataset, written on first use."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from filelock import FileLock

from gi_utils.constants import DATA_DIR_ENV
from gi_utils.data.holdout import solution_path
from gi_utils.paths import (
    REPO_ROOT,
    DataNotFoundError,
    colab_content_dir,
    in_checkout,
    on_colab,
    platform_name,
    resolve_data_dir,
)
from gi_utils.synthetic.generate import MARKER, generate_dataset

__all__ = ["SYNTH_CASES", "SYNTH_TEST_CASES", "SYNTH_SEED", "SYNTH_SLICES", "SYNTHETIC", "synthetic_params",
           "ensure_data"]  # fmt: skip

#: The ``data_dir`` value that asks for the default synthetic dataset by name (the way to
#: train on it on Kaggle or Colab, where a missing competition folder is otherwise an error).
SYNTHETIC = "synthetic"

#: The synthetic dataset made on first use (and by ``make demo``): 24 cases of 1-3 scans
#: of 80 slices (a real scan length), about 50 scans, 0.5 GB and 20 s to write. Fewer cases
#: generalise worse: with 12, fold 0 validates on 2 patients and models trained on the other
#: 10 mistake plain tissue of unseen patients for bowel (UNet: Dice 0.80 instead of 0.88).
SYNTH_CASES, SYNTH_TEST_CASES, SYNTH_SEED, SYNTH_SLICES = 24, 2, 0, 80


def synthetic_params() -> dict[str, Any]:
    """The ``params`` record (``synth.json``) of the dataset :func:`ensure_data` writes."""
    return {"n_cases": SYNTH_CASES, "n_test_cases": SYNTH_TEST_CASES, "seed": SYNTH_SEED,
            "slices_per_scan": SYNTH_SLICES, "size": None}  # fmt: skip


def _synthetic_target() -> Path:
    """Where :func:`ensure_data` writes: ``data/`` of the checkout, else of the cwd (on
    Colab the runtime's local disk, not Drive)."""
    if on_colab():
        return colab_content_dir() / "data"
    return (REPO_ROOT if in_checkout() else Path.cwd()) / "data"


_WHERE_DATA = {
    "kaggle": "attach the competition to this notebook (Add Input -> Competitions -> UW-Madison GI Tract Image "
              "Segmentation)",
    "colab": "copy the competition's data to Google Drive, MyDrive/uw-madison-gi-tract-image-segmentation "
             "(found once Drive is mounted), or pass data_dir",
}  # fmt: skip


def _stale_synthetic(root: Path) -> str:
    """Why the synthetic dataset in ``root`` is not the one :func:`ensure_data` makes ('' if it is)."""
    try:
        params = json.loads((root / MARKER).read_text(encoding="utf-8"))["params"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""  # not a synthetic dataset of ours: real data are never touched
    want = synthetic_params()
    if {k: params.get(k) for k in want} != want:
        return f"{root.name}/ holds an older synthetic dataset ({params.get('n_cases')} cases)"
    if not solution_path(root).is_file():
        return f"{root.name}/ has no hold-out truth ({solution_path(root).name})"
    return ""


def ensure_data(data_dir: str | os.PathLike | None = "", synthetic_if_missing: bool = True) -> Path:
    """The data root; the synthetic dataset is written first if none is found.

    Synthetic data are made when ``data_dir`` is ``"synthetic"`` (:data:`SYNTHETIC`), or
    when no folder was named (argument or ``GI_DATA_DIR``), ``synthetic_if_missing`` is on
    and this is a local machine: on Kaggle or Colab a missing competition folder means
    the data were not attached or copied, which is an error that says how to fix it. A
    synthetic dataset that this function wrote earlier with other parameters (an older
    version of the project) is written again, so the demo's figures refer to the data it
    documents.

    Raises:
        DataNotFoundError: no data were found and none are to be made (the message lists
            the places tried and, on Kaggle or Colab, how to attach the data).
    """
    target = _synthetic_target()
    asked = str(data_dir or "") == SYNTHETIC
    named = (bool(data_dir) and not asked) or bool(os.environ.get(DATA_DIR_ENV))
    platform = platform_name()
    try:
        if asked:
            raise DataNotFoundError("the synthetic dataset was asked for")
        root = resolve_data_dir(data_dir or None)
    except DataNotFoundError as err:
        if not asked and (not synthetic_if_missing or named or platform != "local"):
            if platform in _WHERE_DATA and not named:
                raise DataNotFoundError(f"{err}\nOn {platform.capitalize()}: {_WHERE_DATA[platform]}; or pass "
                                        f"data_dir={SYNTHETIC!r} to train on the synthetic dataset.") from None
            raise
        reason = "Asked for the synthetic dataset" if asked else "No data found"
    else:
        stale = not named and synthetic_if_missing and root.resolve() == target.resolve()
        reason = _stale_synthetic(root) if stale else ""
        if not reason:
            return root
    target.parent.mkdir(parents=True, exist_ok=True)
    # one writer: two notebooks or test workers started at once on a fresh checkout wrote
    # the same dataset together, each renaming the folder under the other's reader
    with FileLock(target.parent / f".{target.name}.lock"):
        if (target / MARKER).is_file() and not _stale_synthetic(target):
            return target  # current already (asked for it), or written by another process while this one waited
        print(f"{reason}: writing the synthetic dataset ({SYNTH_CASES} cases, seed {SYNTH_SEED}) "
              f"to {target}")
        return generate_dataset(target, SYNTH_CASES, SYNTH_TEST_CASES, SYNTH_SEED,
                                slices_per_scan=SYNTH_SLICES, progress=False)  # fmt: skip
