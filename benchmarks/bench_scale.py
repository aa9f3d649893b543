"""Scale of the data layer: a full-size train.csv -> metadata table + every mask decoded.

Builds, in a temporary folder, the real training set's size: 38,496 slices (empty
placeholder PNG files with real names and sizes; the metadata table reads names only)
and a 115,488-row train.csv whose RLE strings come from organ-like ellipses, with about
43% of slices annotated as in the real data. Then times

* ``build_metadata`` (scan the tree, parse names, read and validate train.csv, join),
* decoding every mask with ``gi_utils.data.decode_rle`` (vectorised),
* the same with the loop decoder of public notebooks, on the same strings,

checks both decoders agree, and prints the ratio. Targets: metadata < 5 s, masks < 20 s.
``--every 100`` (``--smoke``) keeps one scan in a hundred (about 385 slices).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_args, peak_rss_mb, result, timed  # noqa: E402

from gi_utils.constants import CLASSES, REAL_SIZES, REAL_TRAIN_SLICES
from gi_utils.data import build_metadata, decode_rle, encode_rle


def loop_decode(mask_rle: str, shape: tuple[int, int]) -> np.ndarray:
    """The decoder of popular public notebooks: a Python loop over runs."""
    s = mask_rle.split()
    starts, lengths = [np.asarray(x, dtype=int) for x in (s[0:][::2], s[1:][::2])]
    starts -= 1
    ends = starts + lengths
    img = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for lo, hi in zip(starts, ends):
        img[lo:hi] = 1
    return img.reshape(shape)


def make_full_size_tree(root: Path, seed: int = 0, every: int = 1) -> int:
    """Write placeholder slices and a realistic train.csv; return the number of rows.
    ``every``: keep one scan in ``every`` (1: the full size)."""
    rng = np.random.default_rng(seed)
    # Scans of 144 slices (and the rest of 80) over the four real sizes, in real proportions.
    scans = []
    for width, height, spacing, n_slices in REAL_SIZES:
        left = n_slices
        while left > 0:
            depth = 144 if left % 144 == 0 else 80
            scans.append((width, height, spacing, depth))
            left -= depth
    assert sum(s[3] for s in scans) == REAL_TRAIN_SLICES
    scans = scans[::every]
    yy_cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    rows = []
    for k, (width, height, spacing, depth) in enumerate(scans):
        case, day = k // 3 + 1, (k % 3) * 7
        folder = root / "train" / f"case{case}" / f"case{case}_day{day}" / "scans"
        folder.mkdir(parents=True)
        if (height, width) not in yy_cache:
            yy_cache[(height, width)] = np.mgrid[0:height, 0:width]
        yy, xx = yy_cache[(height, width)]
        lo, hi = int(depth * 0.3), int(depth * 0.75)  # organs in the middle ~43% of slices
        for s in range(1, depth + 1):
            (folder / f"slice_{s:04d}_{width}_{height}_{spacing:.2f}_{spacing:.2f}.png").touch()
            sid = f"case{case}_day{day}_slice_{s:04d}"
            for c, name in enumerate(CLASSES):
                rle = ""
                if lo <= s < hi and rng.random() < 0.8:
                    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
                    ry, rx = rng.uniform(5, 30, size=2) * (1 + c * 0.3)
                    rle = encode_rle(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1)
                rows.append((sid, name, rle))
    pd.DataFrame(rows, columns=["id", "class", "segmentation"]).to_csv(root / "train.csv", index=False)
    return len(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--every", type=int, default=1, help="keep one scan in EVERY (1: the full size)")
    args = parse_args(p, argv, {"every": 100})
    every = args.every
    print(f"bench_scale: {f'1/{every} of ' if every > 1 else ''}full-size train.csv -> metadata + all masks")
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with timed("write placeholder tree + train.csv", times):
            n_rows = make_full_size_tree(root, every=every)
        with timed("build_metadata", times):
            meta = build_metadata(root)
        assert n_rows == 3 * len(meta) and (every > 1 or len(meta) == REAL_TRAIN_SLICES), (n_rows, len(meta))
        jobs = [
            (rle, (h, w))
            for name in CLASSES
            for rle, h, w in zip(meta[name], meta["height"], meta["width"])
        ]
        n_nonempty = sum(bool(r) for r, _ in jobs)
        print(f"  {len(meta)} slices, {n_rows} rows, {n_nonempty} non-empty masks, "
              f"{meta['empty'].mean():.0%} slices without labels")
        with timed("decode all masks (gi_utils.data)", times):
            fast_px = sum(np.count_nonzero(decode_rle(r, s)) for r, s in jobs)
        with timed("decode all masks (public loop decoder)", times):
            slow_px = sum(np.count_nonzero(loop_decode(r, s)) if r else 0 for r, s in jobs)
        assert fast_px == slow_px, (fast_px, slow_px)
    print(f"  rows per second, metadata: {n_rows / times['build_metadata']:,.0f}")
    print(f"  masks per second, decode: {len(jobs) / times['decode all masks (gi_utils.data)']:,.0f}")
    print(f"  peak RSS: {peak_rss_mb():.0f} MiB")
    result("metadata_seconds", times["build_metadata"], "s", "< 5 s")
    result("decode_all_masks_seconds", times["decode all masks (gi_utils.data)"], "s", "< 20 s")
    ratio = times["decode all masks (public loop decoder)"] / times["decode all masks (gi_utils.data)"]
    result("decode_speedup_vs_loop", ratio, "x", "report; ours validates every string, the loop does not")


if __name__ == "__main__":
    main()
