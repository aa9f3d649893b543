"""Benchmark: fast exact competition score against the brute-force reference.

A validation set of ``N_VOLUMES`` case-days of 144x266x266 with organ-sized structures
(a U-shaped large-bowel tube, a cluster of small-bowel loops, an ellipsoidal stomach) and
imperfect predictions (shifted, rescaled and jittered parts, dropped loops, occasional
false-positive islands, one absent organ) is scored by
``competition_score(method="fast")`` and ``method="reference"`` (per-slice Dice loop +
:func:`scipy.spatial.distance.directed_hausdorff`) in the same process; the values must
agree to 1e-9.

The Hausdorff of every (volume, class) pair is also timed alone by the three exact
methods: the k-d tree (``"fast"``), torch on the CPU as validation runs it on a GPU
(``"torch"``: the brute force over the boundary, or the distance transform where the
brute force would cost more: bounded), and torch's brute force alone (unbounded).
``--noise p`` adds the scattered false positives of an early epoch to every prediction
(each voxel with probability ``p``), where the unbounded brute force is slowest.

Run: ``.venv/bin/python benchmarks/bench_metric.py [--volumes 10] [--repeats 3] [--shape 144x266x266] [--noise 0.0] [--smoke]``
(``--smoke``: 2 volumes of 48x96x96, one run each: a check that it runs and agrees).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_args, peak_rss_mb, result, shape  # noqa: E402

from gi_utils.evaluation import competition_score, hausdorff_3d, max_sq_distance  # noqa: E402

SHAPE = (144, 266, 266)
Blob = tuple[tuple[float, float, float], tuple[float, float, float]]


def _paint(vol: np.ndarray, center, radii) -> None:
    """OR a solid ellipsoid (voxel units) into the 3-D bool ``vol``, within its box."""
    lo = [max(0, int(np.floor(c - r))) for c, r in zip(center, radii, strict=True)]
    hi = [min(n, int(np.ceil(c + r)) + 1) for c, r, n in zip(center, radii, vol.shape, strict=True)]
    if any(h <= low for low, h in zip(lo, hi, strict=True)):
        return
    z, y, x = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    r = ((z - center[0]) / radii[0]) ** 2 + ((y - center[1]) / radii[1]) ** 2
    vol[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] |= (
        r + ((x - center[2]) / radii[2]) ** 2
    ) <= 1.0


def organs(rng: np.random.Generator, shape=SHAPE) -> list[list[Blob]]:
    """Ellipsoids ``(center, radii)`` per class, in class order, for one case-day."""
    d, h, w = shape
    zc = d * rng.uniform(0.4, 0.6)
    t = np.linspace(0.0, np.pi, 40)
    large = [
        (
            (
                zc + 25 * np.cos(2 * s) + rng.normal(0, 1),
                h * (0.55 - 0.25 * np.sin(s)),
                w * (0.5 - 0.32 * np.cos(s)),
            ),
            (6.0, 14.0, 14.0),
        )
        for s in t
    ]
    small = [
        (
            (zc + rng.normal(0, 12), h * 0.6 + rng.normal(0, 22), w * 0.5 + rng.normal(0, 25)),
            (4.0, 10.0, 10.0),
        )
        for _ in range(30)
    ]
    stomach = [((zc - 25 + rng.normal(0, 3), h * 0.4, w * 0.65), (20.0, 35.0, 45.0))]
    return [large, small, stomach]


def imperfect(rng: np.random.Generator, classes: list[list[Blob]], shape=SHAPE) -> list[list[Blob]]:
    """A plausible model output: each organ shifted (sd 0.5 slice, 1.5 px), every part
    jittered and rescaled by up to 10 %, 5 % of the parts dropped, and a false-positive
    island with probability 0.15."""
    out = []
    for blobs in classes:
        shift = rng.normal(0, [0.5, 1.5, 1.5])
        new = [
            (
                tuple(np.add(c, shift + rng.normal(0, [0.3, 1.0, 1.0]))),
                tuple(np.multiply(r, rng.uniform(0.9, 1.1, 3))),
            )
            for c, r in blobs
            if rng.random() >= 0.05
        ]
        if rng.random() < 0.15:
            new.append((tuple(rng.uniform(0, 1, 3) * shape), (2.0, 5.0, 5.0)))
        out.append(new)
    return out


def render(classes: list[list[Blob]], shape=SHAPE) -> np.ndarray:
    """Bool ``(D, H, W, 3)`` volume of the ellipsoids of each class."""
    vol = np.zeros((*shape, len(classes)), dtype=bool)
    for c, blobs in enumerate(classes):
        channel = np.zeros(shape, dtype=bool)
        for center, radii in blobs:
            _paint(channel, center, radii)
        vol[..., c] = channel
    return vol


def validation_set(
    n: int, seed: int = 0, shape: tuple[int, int, int] = SHAPE
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``n`` case-days of true and predicted volumes of ``shape``; in the last one the
    stomach is absent from the truth while the prediction shows a small false positive
    (Hausdorff 1), at (30, 100, 170) in a volume of :data:`SHAPE`."""
    rng = np.random.default_rng(seed)
    pred, true = {}, {}
    spot = tuple(float(c * side / full) for c, side, full in zip((30, 100, 170), shape, SHAPE, strict=True))
    for i in range(n):
        classes = organs(rng, shape)
        guess = imperfect(rng, classes, shape)
        if i == n - 1:
            classes[2], guess[2] = [], [(spot, (2.0, 6.0, 6.0))]
        true[f"case{100 + i}_day0"], pred[f"case{100 + i}_day0"] = render(classes, shape), render(guess, shape)
    return pred, true


def hausdorff_pairs(pred: dict[str, np.ndarray], true: dict[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (prediction, truth) masks ``(D, H, W)`` of every volume and class, both non-empty."""
    return [(pred[k][..., c], true[k][..., c]) for k in true for c in range(true[k].shape[-1])
            if pred[k][..., c].any() and true[k][..., c].any()]  # fmt: skip


def time_hausdorff(pairs, repeats: int) -> dict[str, tuple[float, np.ndarray]]:
    """Seconds (best of ``repeats``) and distances of each exact method over ``pairs``."""

    def torch_hd(bounded: bool):
        def run():
            out = []
            for a, b in pairs:
                sq, scale = max_sq_distance(torch.from_numpy(a), torch.from_numpy(b), bounded=bounded)
                out.append(np.sqrt(sq) / scale / np.sqrt(3.0))
            return np.array(out)

        return run

    methods = {"kd-tree": lambda: np.array([hausdorff_3d(a, b) for a, b in pairs]),
               "torch bounded": torch_hd(True), "torch brute force": torch_hd(False)}  # fmt: skip
    return {name: _timed(fn, repeats)[::-1] for name, fn in methods.items()}


def _timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="fast runs (best is kept)")
    parser.add_argument("--shape", type=shape, default=SHAPE, help="slices x height x width")
    parser.add_argument("--noise", type=float, default=0.0, help="share of voxels predicted at random")
    args = parse_args(parser, argv, {"volumes": 2, "repeats": 1, "shape": (48, 96, 96)})
    torch.set_num_threads(1)

    start = time.perf_counter()
    pred, true = validation_set(args.volumes, shape=args.shape)
    noise = np.random.default_rng(1)
    pred = {k: v | (noise.random(v.shape) < args.noise) for k, v in pred.items()} if args.noise else pred
    n_vox = sum(int(v.sum()) for v in true.values())
    print(
        f"validation set: {args.volumes} volumes of {args.shape} x 3 classes, "
        f"{n_vox / args.volumes / 1e3:.0f}k true voxels per volume, built in {time.perf_counter() - start:.1f} s"
    )

    fast, t_fast = _timed(lambda: competition_score(pred, true), args.repeats)
    print(
        f"fast:      {t_fast:8.3f} s  ({t_fast / args.volumes * 1e3:.1f} ms per volume, best of {args.repeats})"
        f"  peak RSS {peak_rss_mb():.0f} MiB"
    )
    ref, t_ref = _timed(lambda: competition_score(pred, true, method="reference"), 1)
    n_vc = len(ref.table)
    print(
        f"reference: {t_ref:8.3f} s  ({t_ref / n_vc:.2f} s per volume-class)  peak RSS {peak_rss_mb():.0f} MiB"
    )

    cols = ["dice", "hausdorff", "score"]
    diff = max(
        abs(fast.score - ref.score),
        abs(fast.dice - ref.dice),
        abs(fast.hausdorff - ref.hausdorff),
        float(np.nanmax(np.abs(fast.table[cols].to_numpy() - ref.table[cols].to_numpy()))),
    )
    same_nan = bool((fast.table[cols].isna() == ref.table[cols].isna()).all().all())
    print(
        f"score {fast.score:.6f} (dice {fast.dice:.6f}, hausdorff {fast.hausdorff:.6f}); "
        f"reference score {ref.score:.6f}; NaN pattern equal: {same_nan}"
    )
    print(fast.per_class.round(4).to_string())
    pairs = hausdorff_pairs(pred, true)
    hd = time_hausdorff(pairs, args.repeats)
    for name, (seconds, _) in hd.items():
        print(f"hausdorff {name:17s} {seconds:8.3f} s  ({seconds / len(pairs) * 1e3:.1f} ms per volume-class, "
              f"{len(pairs)} pairs)")  # fmt: skip
    hd_diff = max(float(np.max(np.abs(d - hd["kd-tree"][1]))) for _, d in hd.values())
    result("metric_fast_time", t_fast, "s", "-")
    result("metric_reference_time", t_ref, "s", "-")
    result("metric_max_abs_diff", diff, "", "<= 1e-9")
    result("hausdorff_kdtree_time", hd["kd-tree"][0], "s", "-")
    result("hausdorff_torch_bounded_time", hd["torch bounded"][0], "s", "-")
    result("hausdorff_torch_brute_time", hd["torch brute force"][0], "s", "-")
    result("hausdorff_methods_max_abs_diff", hd_diff, "", "<= 1e-9")
    result("metric_peak_rss", peak_rss_mb(), "MiB", "-")
    result("metric_speedup", t_ref / t_fast, "x", ">= 30 x")
    if diff > 1e-9 or not same_nan or hd_diff > 1e-9:
        raise SystemExit("fast and reference metric disagree")


if __name__ == "__main__":
    main()
