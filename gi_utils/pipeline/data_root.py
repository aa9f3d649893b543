"""The data root of a notebook or command, resolved once: the competition data where they
are found, else (locally, never on Kaggle) the default synthetic dataset, written on first
use."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gi_utils.constants import DATA_DIR_ENV
from gi_utils.data.holdout import solution_path
from gi_utils.paths import REPO_ROOT, DataNotFoundError, in_checkout, on_kaggle, resolve_data_dir
from gi_utils.synthetic.generate import MARKER, generate_dataset

__all__ = ["SYNTH_CASES", "SYNTH_TEST_CASES", "SYNTH_SEED", "SYNTH_SLICES", "synthetic_params",
           "ensure_data"]  # fmt: skip

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
    """Where :func:`ensure_data` writes: ``data/`` of the checkout, else of the cwd."""
    return (REPO_ROOT if in_checkout() else Path.cwd()) / "data"


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

    Synthetic data are made only when no folder was named (argument or ``GI_DATA_DIR``),
    ``synthetic_if_missing`` is on and this is not Kaggle (where a missing competition
    mount means the data were not attached, which should be an error). A synthetic dataset
    that this function wrote earlier with other parameters (an older version of the
    project) is written again, so the demo's figures refer to the data it documents.
    """
    target = _synthetic_target()
    named = bool(data_dir) or bool(os.environ.get(DATA_DIR_ENV))
    try:
        root = resolve_data_dir(data_dir or None)
    except DataNotFoundError:
        if not synthetic_if_missing or named or on_kaggle():
            raise
        reason = "No data found"
    else:
        stale = not named and synthetic_if_missing and root.resolve() == target.resolve()
        reason = _stale_synthetic(root) if stale else ""
        if not reason:
            return root
    print(f"{reason}: writing the synthetic dataset ({SYNTH_CASES} cases, seed {SYNTH_SEED}) "
          f"to {target.name}/")
    return generate_dataset(target, SYNTH_CASES, SYNTH_TEST_CASES, SYNTH_SEED,
                            slices_per_scan=SYNTH_SLICES, progress=False)  # fmt: skip
