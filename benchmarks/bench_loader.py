"""Data-loading throughput: the cached 2.5D dataset vs the naive per-sample PNG reads.

Same run, same synthetic data (:func:`gi_utils.synthetic.generate_dataset`), same outputs:

* naive = what public notebooks do: for every 2.5D sample read its 3 PNGs with OpenCV,
  normalise, resize, decode the 3 RLE masks and resize them (each sample, each epoch).
  To produce the very tensors of the cache it uses the per-scan clip values, which are
  computed beforehand and handed to it for free (so the ratio is conservative);
* cached = :class:`gi_utils.data.VolumeCache` on disk (memory-mapped) +
  :class:`gi_utils.data.SliceDataset`.

Both run through ``DataLoader(num_workers=2, fork, batch_size=32)`` at 256x256. One epoch
of each pair asserts identical tensors (training style too: the augmentation is seeded
from the same worker seeds); then persistent loaders are warmed up and timed in
interleaved rounds (best epoch counts), with their workers' CPU time split into user and
system: with a cache, the system time -- the DataLoader's shared-memory transport of
float32 tensors -- dominates, which ``SliceDataset(compact=True)`` (float16 image, uint8
mask: same values, 3x fewer bytes) cuts; that variant is timed too.

Usage: ``python benchmarks/bench_loader.py [--cases N] [--slices 80] [--epochs 3] [--smoke]``
(``--smoke``: one case of 16-slice scans, one timed epoch: a check that it runs).
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_args, result  # noqa: E402

from gi_utils.constants import CLASSES  # noqa: E402
from gi_utils.data import (  # noqa: E402
    SliceDataset,
    VolumeCache,
    build_metadata,
    build_transforms,
    decode_rle,
    intensity_clip,
    iter_volumes,
    read_volume,
)

IMG_SIZE = 256
OFFSETS = (-2, 0, 2)
BATCH = 32
WORKERS = 2


class NaiveDataset(Dataset):
    """Public-notebook style: 3 ``cv2.imread`` + normalise + resize + RLE per sample."""

    def __init__(self, meta, clips: dict[str, float], transform=None) -> None:
        self.meta = meta.sort_values(["case", "day", "slice"]).reset_index(drop=True)
        self.clips, self.transform = clips, transform
        self._seeded: int | None = None

    def __len__(self) -> int:
        return len(self.meta)

    @staticmethod
    def fit(img: np.ndarray, hi: float) -> np.ndarray:
        """Normalise with the scan's clip value and resize to (S, S), float16."""
        img = np.minimum(img, hi).astype(np.float32) / np.float32(hi)
        h, w = img.shape
        interp = cv2.INTER_AREA if min(h, w) >= IMG_SIZE else cv2.INTER_LINEAR
        return cv2.resize(img, (IMG_SIZE, IMG_SIZE), interpolation=interp).astype(np.float16)

    @staticmethod
    def mask(row) -> np.ndarray:
        """Decode the 3 RLEs and resize them, uint8 (S, S, 3)."""
        shape = (int(row["height"]), int(row["width"]))
        mask = np.stack([decode_rle(row[c], shape) for c in CLASSES], axis=-1).astype(np.uint8)
        return cv2.resize(mask, (IMG_SIZE, IMG_SIZE), interpolation=cv2.INTER_NEAREST_EXACT)

    def __getitem__(self, i: int):
        row = self.meta.iloc[i]
        scan = self.meta.index[self.meta["case_day"] == row["case_day"]]
        lo, last = scan.min(), scan.max()
        hi = self.clips[row["case_day"]]
        paths = [self.meta.at[min(max(i + o, lo), last), "path"] for o in OFFSETS]
        image = np.stack([self.fit(cv2.imread(p, cv2.IMREAD_UNCHANGED), hi) for p in paths], -1)
        image, mask = image.astype(np.float32), self.mask(row)
        if self.transform is not None:
            info = torch.utils.data.get_worker_info()
            if info is not None and self._seeded != info.seed:  # same seeding as SliceDataset
                self.transform.set_random_seed(int(info.seed % 2**32))
                self._seeded = info.seed
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
        return image, torch.from_numpy(np.ascontiguousarray(mask.transpose(2, 0, 1), np.float32))


def _loader(ds: Dataset, seed: int, persistent: bool) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)  # worker seeds (so the augmentation) derive from it
    return DataLoader(ds, batch_size=BATCH, num_workers=WORKERS, shuffle=False, generator=gen,
                      multiprocessing_context="fork", persistent_workers=persistent)  # fmt: skip


def _epoch_rate(loader: DataLoader, n: int) -> float:
    start = time.perf_counter()
    for _ in loader:
        pass
    return n / (time.perf_counter() - start)


def _worker_cpu_s(loader: DataLoader) -> np.ndarray:
    """User and system CPU seconds of a persistent loader's live workers (/proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = np.zeros(2)
    for w in loader._iterator._workers:  # private, but this is a benchmark
        fields = Path(f"/proc/{w.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += np.array([int(fields[11]), int(fields[12])]) / tick
    return total


def assert_identical(naive: Dataset, cached: Dataset, label: str, compact: bool = False) -> None:
    """Both loaders (same worker seeds) give bit-identical batches over one epoch."""
    a, b = _loader(naive, 7, False), _loader(cached, 7, False)
    for k, ((xa, ya), (xb, yb)) in enumerate(zip(a, b, strict=True)):
        if compact:
            xb, yb = xb.float(), yb.float()
        assert torch.equal(xa, xb) and torch.equal(ya, yb), f"{label}: batch {k} differs"


def rates(
    pipelines: dict[str, Dataset], n: int, epochs: int
) -> dict[str, tuple[float, float, float]]:
    """Per pipeline: best samples/s over ``epochs`` timed epochs (rounds interleaved across
    pipelines so that load from other processes hits them alike, after one warm-up epoch
    each), and its workers' user / system CPU ms per sample over all epochs."""
    loaders = {name: _loader(ds, 7, True) for name, ds in pipelines.items()}
    for loader in loaders.values():  # warm-up: fork the workers, fill the page cache
        for _ in loader:
            pass
    best = dict.fromkeys(loaders, 0.0)
    for _ in range(epochs):
        for name, loader in loaders.items():
            best[name] = max(best[name], _epoch_rate(loader, n))
    out = {}
    for name, loader in loaders.items():
        user, system = _worker_cpu_s(loader) * 1e3 / (n * (epochs + 1))
        out[name] = (best[name], user, system)
    del loaders, loader  # joins the workers
    return out


def _ms(fn, reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e3


def breakdown(meta, clips, cached: SliceDataset, transform, reps: int = 50) -> dict[str, float]:
    """Per-sample milliseconds of each step (mean of ``reps`` calls), one process, a slice in
    the middle of a scan."""
    naive = NaiveDataset(meta, clips)
    i = len(meta) // 2
    row = naive.meta.iloc[i]
    hi = clips[row["case_day"]]
    img16 = cv2.imread(row["path"], cv2.IMREAD_UNCHANGED)
    cache = cached.cache
    rows = cache.rows(naive.meta["id"].iloc[cached.neighbours(i)])
    image = np.ascontiguousarray(cache.images[rows].astype(np.float32).transpose(1, 2, 0))
    packed = np.asarray(cache.packed_masks[rows[1]])
    parts = {
        "naive: decode 3 PNGs": 3 * _ms(lambda: cv2.imread(row["path"], cv2.IMREAD_UNCHANGED), reps),
        "naive: normalise + resize 3 slices": 3 * _ms(lambda: naive.fit(img16, hi), reps),
        "naive: decode + resize 3 RLE masks": _ms(lambda: naive.mask(row), reps),
        "naive: whole sample, no aug": _ms(lambda: naive[i], reps),
        "cached: memmap read 3 slices + mask": _ms(lambda: (cache.images[rows], cache.packed_masks[rows[1]]), reps),
        "cached: whole sample, no aug": _ms(lambda: cached[i], reps),
        "default augmentation (expected)": _ms(lambda: transform(image=image, mask=packed), 4 * reps),
    }  # fmt: skip
    for t in transform.transforms:  # each step when applied (p=1), and its probability
        p, t.p = t.p, 1.0
        parts[f"  {type(t).__name__} when applied (p={p:g})"] = _ms(
            lambda t=t: t(image=image, mask=packed), reps
        )
        t.p = p
    return parts


def _peak_rss_mib() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return me, kids


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=2, help="synthetic train cases (1-3 days each)")
    p.add_argument("--slices", type=int, default=80, help="slices per scan")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per loader (best counts)")
    p.add_argument("--workdir", default=None, help="folder for data + cache (default: temp)")
    p.add_argument("--reps", type=int, default=50, help="calls timed per step of the per-sample breakdown")
    args = parse_args(p, argv, {"cases": 1, "slices": 16, "epochs": 1, "reps": 5})
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    from gi_utils.synthetic import generate_dataset

    base_rss = _peak_rss_mib()[0]
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        work = Path(args.workdir or tmp)
        t0 = time.perf_counter()
        data = generate_dataset(work / "data", args.cases, 0, seed=0, slices_per_scan=args.slices,
                                overwrite=True)  # fmt: skip
        meta = build_metadata(data)
        n = len(meta)
        sizes = meta.groupby("case_day")[["width", "height"]].first().value_counts().to_dict()
        print(f"data: {n} slices in {meta['case_day'].nunique()} scans, sizes (W, H): {sizes} "
              f"(synth {time.perf_counter() - t0:.1f} s)")  # fmt: skip
        clips = {cd: intensity_clip(read_volume(rows)) for cd, rows in iter_volumes(meta)}
        t0 = time.perf_counter()
        cache = VolumeCache(meta, IMG_SIZE, work / "cache", progress=False)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = VolumeCache(meta, IMG_SIZE, work / "cache", progress=False)
        reuse_s = time.perf_counter() - t0
        assert again.reused
        print(f"cache: built {n} slices in {build_s:.2f} s ({n / build_s:.0f} slices/s, "
              f"{cache.nbytes / 2**20:.0f} MiB on disk), reopened in {reuse_s * 1e3:.0f} ms")  # fmt: skip

        tf = build_transforms(IMG_SIZE, train=True)
        pipelines = {
            "val naive": NaiveDataset(meta, clips),
            "val cached": SliceDataset(meta, IMG_SIZE, OFFSETS, cache=cache),
            "train naive": NaiveDataset(meta, clips, build_transforms(IMG_SIZE, train=True)),
            "train cached": SliceDataset(meta, IMG_SIZE, OFFSETS, transform=tf, cache=cache),
            "val cached compact": SliceDataset(meta, IMG_SIZE, OFFSETS, cache=cache, compact=True),
        }
        assert_identical(pipelines["val naive"], pipelines["val cached"], "validation")
        assert_identical(pipelines["train naive"], pipelines["train cached"], "training")
        assert_identical(pipelines["val naive"], pipelines["val cached compact"], "compact", True)
        res = rates(pipelines, n, args.epochs)
        cached_val = pipelines["val cached"]
        parts = breakdown(meta, clips, cached_val, build_transforms(IMG_SIZE, train=True, seed=0), args.reps)
        me, kids = _peak_rss_mib()

    print("per-sample time, one process (ms):")
    for name, ms in parts.items():
        print(f"  {name:<46s} {ms:7.2f}")
    print(
        f"DataLoader, {WORKERS} workers (fork), {IMG_SIZE}x{IMG_SIZE}, batch {BATCH}, 2.5D {OFFSETS}, "
        f"best of {args.epochs} epochs; worker CPU per sample (sys = mostly shared-memory transport):"
    )
    for name, (r, user, system) in res.items():
        print(f"  {name:<20s} {r:6.0f} samples/s   user {user:5.2f} ms  sys {system:5.2f} ms")
    print("tensors identical: naive == cached (validation, training with the same seeds, compact)")
    print(
        f"peak RSS: main {me:.0f} MiB ({base_rss:.0f} MiB after imports), "
        f"largest worker {kids:.0f} MiB"
    )
    val = res["val cached"][0] / res["val naive"][0]
    train = res["train cached"][0] / res["train naive"][0]
    compact = res["val cached compact"][0] / res["val naive"][0]
    result("loader_val_cached", res["val cached"][0], "samples/s", "report")
    result("loader_val_cached_compact", res["val cached compact"][0], "samples/s", "report")
    result("loader_val_speedup", val, "x", ">= 5 x")
    result("loader_val_speedup_compact", compact, "x", ">= 5 x")
    result("loader_train_speedup", train, "x", "report")
    result("loader_train_cached", res["train cached"][0], "samples/s", ">= 150 samples/s")


if __name__ == "__main__":
    main()
