"""Synthetic phantom of the competition data, written in the Kaggle layout.

Every project path (data layer, training, inference, notebooks, tests) can run end to
end without the real data: :func:`generate_dataset` writes ::

    OUT/train.csv                 id,class,segmentation (3 rows per slice, CLASSES order)
    OUT/train/case12/case12_day3/scans/slice_0001_266_266_1.50_1.50.png   (16-bit)
    OUT/test/...                  same layout, no labels
    OUT/sample_submission.csv     header ``id,class,predicted`` only, as on Kaggle
    OUT/synth.json                parameters and figures (marks OUT as a synth output)
    OUT_solution.csv              the test split's truth, beside OUT (a scored hold-out)

:mod:`gi_utils.synthetic.spec` plans the dataset (cases, days, sizes, slice counts as
:class:`~gi_utils.synthetic.spec.ScanSpec`) and this module writes it; each scan is drawn
by :mod:`gi_utils.synthetic.phantom` (body, distractor organs and the three labelled
organs, coherent across slices; about half of all slices carry no label, as in the real
data).

Everything is deterministic in ``seed``: the same call writes byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import cv2
from tqdm import tqdm

from gi_utils.atomic import atomic_write_text
from gi_utils.constants import CLASSES, SUBMISSION_COLUMNS, TRAIN_CSV_COLUMNS
from gi_utils.data.holdout import solution_path
from gi_utils.data.names import make_id
from gi_utils.data.rle import encode_rle
from gi_utils.synthetic.phantom import render_label_map
from gi_utils.synthetic.spec import ScanSpec, plan_dataset

__all__ = ["MARKER", "generate_dataset"]

#: File that marks a folder as written by this module (may be overwritten without force).
MARKER = "synth.json"
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, 2]  # Huffman only


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


def _write_scan(root: Path, split: str, spec: ScanSpec, rows: list[str]) -> int:
    """Render and write one scan; append its train.csv lines to rows. Returns empty slices."""
    image, classes = render_label_map(spec)
    folder = root / spec.folder(split)
    folder.mkdir(parents=True)
    n_empty = 0
    for k in range(spec.n_slices):
        if not cv2.imwrite(str(folder / spec.filename(k + 1)), image[k], PNG_PARAMS):
            raise OSError(f"could not write {folder / spec.filename(k + 1)}")
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
        rows: dict[str, list[str]] = {"train": [], "test": []}
        stats = {"scans": 0, "slices": 0, "empty_slices": 0, "test_scans": 0, "test_slices": 0}
        total = sum(s.n_slices for specs in plan.values() for s in specs)
        with tqdm(total=total, unit="slice", disable=not progress, desc="synth") as bar:
            for split, specs in plan.items():
                (tmp / split).mkdir()
                for spec in specs:
                    n_empty = _write_scan(tmp, split, spec, rows[split])
                    prefix = "" if split == "train" else "test_"
                    stats[prefix + "scans"] += 1
                    stats[prefix + "slices"] += spec.n_slices
                    stats["empty_slices"] += n_empty if split == "train" else 0
                    bar.update(spec.n_slices)
        stats["empty_fraction"] = round(stats["empty_slices"] / stats["slices"], 4)
        (tmp / "sample_submission.csv").write_text(",".join(SUBMISSION_COLUMNS) + "\n")
        record = {
            "generator": "gi_utils.synthetic",
            "params": {"n_cases": n_cases, "n_test_cases": n_test_cases, "seed": seed,
                       "slices_per_scan": slices_per_scan, "size": list(size) if size else None},
            "stats": stats,
            "scans": {split: [asdict(s) for s in specs] for split, specs in plan.items()},
        }  # fmt: skip
        (tmp / MARKER).write_text(json.dumps(record, indent=1) + "\n")
        with open(tmp / "train.csv", "w", newline="") as f:  # last: marks completion
            f.write(",".join(TRAIN_CSV_COLUMNS) + "\n")
            f.writelines(rows["train"])
        _replace(tmp, out)
        # the test split's truth, outside the data folder, as Kaggle keeps its solution
        atomic_write_text(solution_path(out), ",".join(TRAIN_CSV_COLUMNS) + "\n" + "".join(rows["test"]))
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
