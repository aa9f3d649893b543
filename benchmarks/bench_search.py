"""Benchmark: the post-processing search on out-of-fold predictions.

Times :func:`gi_utils.evaluation.search_postprocess` (all settings of all classes,
coordinate descent, two passes) and its cross-validated variant on the OOF sets of the
last ``make demo`` (every fold of UNet: every training case-day once), and reports the
time per 1,000 slices. Without a demo's runs it builds OOF sets of the same size from the
synthetic truth with noisy probabilities, so it runs anywhere.

Run: ``.venv/bin/python benchmarks/bench_search.py [--runs-dir runs] [--cases N] [--smoke]``
(``--cases 3``, as ``--smoke``: synthetic OOF sets at 64 px of 3 cases written for the run,
whatever the runs).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from _common import parse_args, peak_rss_mb, result  # noqa: E402

from gi_utils.data import build_metadata, pack_masks, preprocess_mask, read_volume_mask, sort_slices  # noqa: E402
from gi_utils.evaluation import (  # noqa: E402
    OOFCollection,
    OOFSet,
    OOFWriter,
    cross_validated_search,
    search_postprocess,
)
from gi_utils.inference import PostProcess  # noqa: E402
from gi_utils.paths import default_runs_dir  # noqa: E402
from gi_utils.pipeline import ensure_data  # noqa: E402
from gi_utils.report import find_runs, group_runs  # noqa: E402
from gi_utils.synthetic import generate_dataset  # noqa: E402


def _demo_collection(runs_dir: Path) -> OOFCollection | None:
    try:
        groups = group_runs(find_runs(runs_dir))
    except FileNotFoundError:
        return None
    best = max(groups.values(), key=len, default=None)
    if not best or len(best) < 2:
        return None
    return OOFCollection([OOFSet(r.oof_path) for r in best], best[0].name)


def _synthetic_collection(tmp: Path, size: int = 128, folds: int = 3, data: Path | None = None) -> OOFCollection:
    """OOF sets from the truth of ``data`` (``None``: the demo's synthetic dataset):
    blurred masks plus noise, a few false blobs (seeded)."""
    meta = sort_slices(build_metadata(data or ensure_data("")))
    rng = np.random.default_rng(0)
    case_days = list(dict.fromkeys(meta["case_day"]))
    sets = []
    for k in range(folds):
        part = meta[meta["case_day"].isin(case_days[k::folds])].reset_index(drop=True)
        codes = part["case_day"].to_numpy()
        volumes = {cd: np.flatnonzero(codes == cd) for cd in dict.fromkeys(codes)}
        w = OOFWriter(tmp / f"fold{k}", part, volumes, size, {"fold": k})
        for rows in volumes.values():
            masks = preprocess_mask(read_volume_mask(part.iloc[rows]), size)  # (D, 3, S, S)
            probs = np.stack([cv2.GaussianBlur(m.astype(np.float32), (0, 0), 2.0) for m in masks.reshape(-1, size, size)])
            probs = probs.reshape(masks.shape) * rng.uniform(0.6, 1.0) + rng.normal(0, 0.08, masks.shape)
            probs[rng.random(len(probs)) < 0.05, :, 10:20, 10:20] += 0.6  # false blobs on a few slices
            w.write(rows, np.clip(np.round(probs * 255), 0, 255).astype(np.uint8), pack_masks(masks, axis=1))
        w.close()
        sets.append(OOFSet(tmp / f"fold{k}"))
    return OOFCollection(sets, "synthetic")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs-dir", default=None)
    p.add_argument("--cases", type=int, default=0,
                   help="synthetic OOF sets at 64 px of this many cases (scans of 16 slices); 0: the demo's")
    args = parse_args(p, argv, {"cases": 3})
    with tempfile.TemporaryDirectory() as tmp:
        if args.cases:
            data = generate_dataset(Path(tmp) / "data", args.cases, 0, seed=0, slices_per_scan=16, size=(80, 64))
            col, where = _synthetic_collection(Path(tmp), 64, data=data), f"synthetic OOF sets of {args.cases} cases"
        else:
            col = _demo_collection(default_runs_dir(args.runs_dir))
            where = "the demo's OOF sets"
        if col is None:
            col, where = _synthetic_collection(Path(tmp)), "synthetic OOF sets (no demo runs found)"
        n_slices = sum(len(s) for s in col.sets)
        start = PostProcess(size_ref=col.img_size)
        print(f"{where}: {len(col.sets)} folds, {len(col.case_days)} case-days, {n_slices} slices at {col.img_size} px")
        t0 = time.perf_counter()
        res = search_postprocess(col.source, col.case_days, start)
        search_s = time.perf_counter() - t0
        print(f"  search: {search_s:.1f} s, {res.evaluations} masks scored, score {res.default_score:.4f} -> "
              f"{res.score:.4f} (peak RSS {peak_rss_mb():.0f} MiB)")
        t0 = time.perf_counter()
        cv = cross_validated_search(col.source, col.folds, start)
        cv_s = time.perf_counter() - t0
        print(f"  cross-validated search ({len(col.folds)} rotations): {cv_s:.1f} s, held-out "
              f"{cv['default_held_out']:.4f} -> {cv['tuned_held_out']:.4f} (peak RSS {peak_rss_mb():.0f} MiB)")
    result("search_seconds", search_s, "s", "report")
    result("search_seconds_per_1000_slices", search_s / n_slices * 1000, "s", "report")
    result("cv_search_seconds", cv_s, "s", "report")
    return 0


if __name__ == "__main__":
    sys.exit(main())
