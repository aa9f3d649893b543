"""Synthetic phantom of the competition data, written in the Kaggle layout.

Every project path (data layer, training, inference, notebooks, tests) can run end to
end without the real data: :func:`generate_dataset` writes ::

    OUT/train.csv                 id,class,segmentation (3 rows per slice, CLASSES order)
    OUT/train/case12/case12_day3/scans/slice_0001_266_266_1.50_1.50.png   (16-bit)
    OUT/test/...                  same layout, no labels
    OUT/sample_submission.csv     header ``id,class,predicted`` only, as on Kaggle
    OUT/synth.json                parameters and figures (marks OUT as a synth output)

This module plans the dataset (:func:`plan_dataset`: cases, days, sizes, slice counts as
:class:`ScanSpec`) and writes it; each scan is drawn by :mod:`gi_utils.phantom` (body,
distractor organs and the three labelled organs, coherent across slices; about half of
all slices carry no label, as in the real data). :func:`render_scan` is re-exported here.

Everything is deterministic in ``seed``: the same call writes byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from gi_utils.constants import (
    BAD_CASE_DAYS,
    CLASSES,
    REAL_SIZES,
    SUBMISSION_COLUMNS,
    TRAIN_CSV_COLUMNS,
)
from gi_utils.data import make_id
from gi_utils.phantom import _render, render_scan
from gi_utils.rle import encode_rle

__all__ = ["MARKER", "ScanSpec", "plan_dataset", "render_scan", "generate_dataset", "main"]

#: File that marks a folder as written by this module (may be overwritten without force).
MARKER = "synth.json"
MAX_CASE = 156  # real case numbers go up to case156
MAX_DAY = 40
#: Real slices per scan by (width, height); every other size has 144.
REAL_SLICES = {(276, 276): 80}
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, 2]  # Huffman only


@dataclass(frozen=True)
class ScanSpec:
    """One scan (case-day) to synthesise. Width/height follow the file-name order."""

    case: int
    day: int
    width: int
    height: int
    spacing: float
    n_slices: int
    seed: int = 0

    @property
    def case_day(self) -> str:
        return f"case{self.case}_day{self.day}"

    def filename(self, slice_no: int) -> str:
        """``slice_0001_360_310_1.50_1.50.png``: width, height, spacing (2 decimals)."""
        sp = f"{self.spacing:.2f}"
        return f"slice_{slice_no:04d}_{self.width}_{self.height}_{sp}_{sp}.png"

    def folder(self, split: str) -> Path:
        return Path(split) / f"case{self.case}" / self.case_day / "scans"


# --------------------------------------------------------------------------- planning
def _spacing_for(width: int, height: int) -> float:
    return next((s for w, h, s, _ in REAL_SIZES if (w, h) == (width, height)), 1.50)


def plan_dataset(
    n_cases: int = 20,
    n_test_cases: int = 2,
    seed: int = 0,
    slices_per_scan: int | None = None,
    size: tuple[int, int] | None = None,
) -> dict[str, list[ScanSpec]]:
    """Choose cases, days, image sizes and slice counts (nothing is rendered).

    Case numbers are drawn from 1..156 without replacement (train and test disjoint),
    1-3 days per case from 0..40 (never one of ``BAD_CASE_DAYS``). Sizes follow the real
    proportions of scans; with at least 4 train scans, at least one is 360x310 and one
    276x276 or 234x234.

    Args:
        n_cases: train cases (>= 1). n_test_cases: test cases (>= 0). seed: any int >= 0.
        slices_per_scan: slices of every scan; ``None`` = real (144; 80 for 276x276).
        size: force every scan to ``(width, height)`` (>= 32 each); ``None`` = sample.

    Returns:
        ``{"train": [...], "test": [...]}``, scans sorted by case and day.
    """
    for name, value, low in (("n_cases", n_cases, 1), ("n_test_cases", n_test_cases, 0),
                             ("seed", seed, 0)):  # fmt: skip
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if slices_per_scan is not None and not (
        isinstance(slices_per_scan, (int, np.integer)) and 4 <= slices_per_scan <= 9999
    ):
        raise ValueError(f"slices_per_scan must be None or an integer 4..9999, got {slices_per_scan!r}")
    if size is not None and (
        len(size) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 32 for v in size)
    ):
        raise ValueError(f"size must be (width, height), integers >= 32, got {size!r}")
    rng = np.random.default_rng([seed, 7])
    cases = rng.choice(np.arange(1, max(MAX_CASE, n_cases + n_test_cases) + 1),
                       n_cases + n_test_cases, replace=False)  # fmt: skip
    real = [(w, h) for w, h, _, _ in REAL_SIZES]
    n_scans = np.array([n / REAL_SLICES.get((w, h), 144) for w, h, _, n in REAL_SIZES])
    plan: dict[str, list[ScanSpec]] = {}
    for split, split_cases in (("train", cases[:n_cases]), ("test", cases[n_cases:])):
        keys = [(int(c), int(d)) for c in sorted(split_cases) for d in sorted(rng.choice(
            [d for d in range(MAX_DAY + 1) if f"case{c}_day{d}" not in BAD_CASE_DAYS],
            rng.integers(1, 4), replace=False))]  # fmt: skip
        picks = list(rng.choice(len(real), len(keys), p=n_scans / n_scans.sum()))
        if split == "train" and len(keys) >= 4:  # make rare sizes appear in a small set
            order = [int(i) for i in rng.permutation(len(keys))]
            for want in ({1}, {2, 3}):
                if not want & set(picks):
                    spare = [i for i in order if picks[i] == 0 or picks.count(picks[i]) > 1]
                    picks[spare[0]] = min(want)
        specs = []
        for (case, day), pick in zip(keys, picks, strict=True):
            w, h = size if size is not None else real[pick]
            n = slices_per_scan or REAL_SLICES.get((w, h), 144)
            specs.append(ScanSpec(case, day, int(w), int(h), _spacing_for(w, h), int(n), int(seed)))
        plan[split] = specs
    return plan


# --------------------------------------------------------------------------- writing
def _check_target(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` that is not a previous synth output unless overwrite."""
    if not (out.exists() or out.is_symlink()):
        return
    resolved = out.resolve()
    protected = (Path(resolved.anchor), Path.home().resolve())
    if resolved in protected or Path.cwd().resolve().is_relative_to(resolved):
        raise FileExistsError(f"refusing to replace {out}: a root, home or the working directory")
    if out.is_dir() and (not any(out.iterdir()) or (out / MARKER).is_file()):
        return
    if not overwrite:
        kind = "folder" if out.is_dir() else "file"
        raise FileExistsError(
            f"{out} is a non-empty {kind} that is not a synthetic dataset (no {MARKER}); "
            "pass --force (overwrite=True) to replace it"
        )


def _replace(tmp: Path, out: Path) -> None:
    old = None
    if out.is_dir() and not out.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f"{out.name}.old-", dir=out.parent))
        out.rename(old / out.name)
    elif out.exists() or out.is_symlink():
        out.unlink()
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_scan(root: Path, split: str, spec: ScanSpec, rows: list[str] | None) -> int:
    """Render and write one scan; append train.csv lines to rows. Returns empty slices."""
    image, classes = _render(spec)
    folder = root / spec.folder(split)
    folder.mkdir(parents=True)
    n_empty = 0
    for k in range(spec.n_slices):
        if not cv2.imwrite(str(folder / spec.filename(k + 1)), image[k], PNG_PARAMS):
            raise OSError(f"could not write {folder / spec.filename(k + 1)}")
        if rows is not None:
            sid = make_id(spec.case, spec.day, k + 1)
            rles = [encode_rle(classes[k] == c + 1) for c in range(len(CLASSES))]
            n_empty += not any(rles)
            rows.extend(f"{sid},{name},{rle}\n" for name, rle in zip(CLASSES, rles, strict=True))
    return n_empty


def generate_dataset(
    out_dir: str | os.PathLike,
    n_cases: int = 20,
    n_test_cases: int = 2,
    seed: int = 0,
    *,
    slices_per_scan: int | None = None,
    size: tuple[int, int] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write a synthetic dataset in the Kaggle layout (see the module docstring).

    The dataset is built in a sibling folder ``OUT.tmp-*`` and renamed to ``out_dir``
    when complete (``train.csv`` is written last), so a crash never leaves a partial
    dataset under ``out_dir``.

    Args:
        out_dir: where to write. May be missing, empty, or a previous synth output.
        n_cases, n_test_cases, seed, slices_per_scan, size: see :func:`plan_dataset`.
        overwrite: replace a non-empty ``out_dir`` that is not a synth output.
        progress: show a tqdm bar over slices.

    Returns:
        ``out_dir`` as a Path. ``OUT/synth.json`` records the parameters and figures
        (scans, slices, empty fraction).

    Raises:
        FileExistsError: ``out_dir`` holds other data and ``overwrite`` is False.
        ValueError: a parameter is out of range; the message names it.
    """
    out = Path(out_dir)
    _check_target(out, overwrite)
    plan = plan_dataset(n_cases, n_test_cases, seed, slices_per_scan, size)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o755)
        rows: list[str] = []
        stats = {"scans": 0, "slices": 0, "empty_slices": 0, "test_scans": 0, "test_slices": 0}
        total = sum(s.n_slices for specs in plan.values() for s in specs)
        with tqdm(total=total, unit="slice", disable=not progress, desc="synth") as bar:
            for split, specs in plan.items():
                (tmp / split).mkdir()
                for spec in specs:
                    n_empty = _write_scan(tmp, split, spec, rows if split == "train" else None)
                    prefix = "" if split == "train" else "test_"
                    stats[prefix + "scans"] += 1
                    stats[prefix + "slices"] += spec.n_slices
                    stats["empty_slices"] += n_empty
                    bar.update(spec.n_slices)
        stats["empty_fraction"] = round(stats["empty_slices"] / stats["slices"], 4)
        (tmp / "sample_submission.csv").write_text(",".join(SUBMISSION_COLUMNS) + "\n")
        record = {
            "generator": "gi_utils.synth",
            "params": {"n_cases": n_cases, "n_test_cases": n_test_cases, "seed": seed,
                       "slices_per_scan": slices_per_scan, "size": list(size) if size else None},
            "stats": stats,
            "scans": {split: [asdict(s) for s in specs] for split, specs in plan.items()},
        }  # fmt: skip
        (tmp / MARKER).write_text(json.dumps(record, indent=1) + "\n")
        with open(tmp / "train.csv", "w", newline="") as f:  # last: marks completion
            f.write(",".join(TRAIN_CSV_COLUMNS) + "\n")
            f.writelines(rows)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# --------------------------------------------------------------------------- CLI
def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        msg = f"size {text!r} is not WIDTHxHEIGHT (e.g. 360x310)"
        raise argparse.ArgumentTypeError(msg) from None
    return w, h


def main(argv: list[str] | None = None) -> int:
    """``python -m gi_utils.synth OUT --cases N [--test-cases M] [--seed S] [--slices K]``."""
    parser = argparse.ArgumentParser(
        prog="gi-synth", description="Write a synthetic GI-tract MRI dataset in the Kaggle layout."
    )
    parser.add_argument("out", type=Path, help="output folder (replaced if it is a synth output)")
    parser.add_argument("--cases", type=int, default=20, help="train cases (default 20)")
    parser.add_argument("--test-cases", type=int, default=2, help="test cases (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--slices", type=int, default=None,
                        help="slices per scan (default: real, 144 or 80 for 276x276)")  # fmt: skip
    parser.add_argument("--size", type=_parse_size, default=None,
                        help="force every scan to WIDTHxHEIGHT, e.g. 360x310")  # fmt: skip
    parser.add_argument("--force", action="store_true", help="replace a non-empty OUT")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        out = generate_dataset(
            args.out, args.cases, args.test_cases, args.seed, slices_per_scan=args.slices,
            size=args.size, overwrite=args.force, progress=not args.quiet,
        )  # fmt: skip
    except (FileExistsError, ValueError) as err:
        parser.error(str(err))
    s = json.loads((out / MARKER).read_text())["stats"]
    mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    print(
        f"wrote {out}: {args.cases} train cases, {s['scans']} scans, {s['slices']} slices "
        f"({s['empty_fraction']:.1%} empty) + {s['test_scans']} test scans, {s['test_slices']} "
        f"slices; {mb:.0f} MiB in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
