"""Benchmark: the costs of the pipeline at the competition's full size, as a user meets them.

Synthetic data in the real size mix (266x266, 360x310, 276x276, 234x234 scans of 144 or
80 slices) at several fractions of the real 38,496 training slices; for each, every step
in a process of its own (so each peak resident memory is its own, worker processes
included):

* ``write``: the synthetic dataset in the Kaggle layout;
* ``cache128`` / ``cache320``: the memory-mapped cache (float16 images, packed masks), and
  ``cache320u8``: the compact mode (uint8 images, masks decoded from the RLE), time and
  size on disk;
* ``loader``: training-style samples/s at 320 px with augmentation, 2 workers, from the
  compact cache, and without augmentation (what it costs);
* ``score``: the competition score of every case-day at 320 px (exact metric; the
  prediction is the truth shifted by 2 pixels and thinned), one volume at a time;
* ``train`` (``--train``): a training run at 320 px on the compact cache (one short epoch,
  validation of the whole fold 0 with its out-of-fold files).

It prints each figure with its target, the cost per 1,000 slices (a least-squares slope)
and the extrapolation to 38,496 slices where a size was not run, and whether any peak
memory grows faster than the number of slices.

Peak memory is given twice: ``peak_rss`` (``ru_maxrss``: it also counts the pages of
memory-mapped files once read, which the kernel can reclaim) and ``peak_anon`` (sampled:
the RSS less file-backed and shared pages of the process and its workers, the memory
that cannot be reclaimed; the 8 GB target is about this one; pages the workers share
copy-on-write with their parent count once per process, so it is an upper bound).

Run: ``make bench-scale`` (``--fractions 0.0625,0.25 --train``, extrapolated to the full
set; ``make bench-scale FRACTIONS=0.0625,0.25,1`` also runs the full size: about 25 GB of
disk). ``--steps loader,score,train`` repeats steps on data a run with ``--work`` kept.
``--smoke``: every step, training included, on 4 cases of 16-slice scans, in one process
of its own (a check that it runs: its figures and extrapolations mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from _common import parse_args, result  # noqa: E402

from gi_utils.constants import REAL_TRAIN_SLICES  # noqa: E402

SLICES_PER_CASE = 290  # 1-3 scans of mostly 144 slices: what plan_dataset draws on average
KAGGLE_DISK_GB = 20.0


def _peak_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + kids) / 1024  # a bound: own peak + the largest child's


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class _AnonPeak:
    """Peak of the anonymous memory (RSS less file-backed and shared pages) of this process
    and its children, sampled every 0.1 s: what cannot be reclaimed, unlike the pages of
    memory-mapped files that ``ru_maxrss`` also counts once they are read."""

    def __init__(self) -> None:
        import threading

        import psutil

        self.me, self.peak, self.stop = psutil.Process(), 0.0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _sample(self) -> float:
        total = 0
        for p in [self.me, *self.me.children(recursive=True)]:
            try:
                m = p.memory_info()
                total += m.rss - m.shared
            except Exception:  # a worker that just exited
                pass
        return total / 2**20

    def _run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self._sample())
            self.stop.wait(0.1)

    def close(self) -> float:
        self.stop.set()
        self.thread.join()
        return max(self.peak, self._sample())


def step(name: str, data: Path, work: Path, smoke: bool = False) -> dict:
    """One step, in this process; returns its figures. ``smoke``: the smallest sizes (scans
    of 16 slices, 4 loader batches, one training step at 64 px with 2 folds)."""
    from gi_utils.data import VolumeCache, build_metadata

    t0 = time.perf_counter()
    anon = _AnonPeak()
    out: dict = {}
    if name == "count":
        out["slices"] = len(build_metadata(data))
    if name == "write":
        from gi_utils.synthetic import generate_dataset

        cases = int(work.name.split("_")[1])
        generate_dataset(data, cases, 0, seed=11, slices_per_scan=16 if smoke else None)
        out["slices"] = len(build_metadata(data))
        out["disk_gb"] = _du(data) / 1e9
    elif name.startswith("cache"):
        size = 128 if name == "cache128" else 320
        compact = name.endswith("u8")
        meta = build_metadata(data)
        cache = VolumeCache(meta, size, work / "cache", progress=False,
                            dtype="uint8" if compact else "float16", with_masks=not compact)  # fmt: skip
        out["disk_gb"] = _du(cache.path) / 1e9
    elif name == "loader":
        import torch
        from torch.utils.data import DataLoader

        from gi_utils.data import SliceDataset, build_transforms

        meta = build_metadata(data)
        cache = VolumeCache(meta, 320, work / "cache", progress=False, dtype="uint8", with_masks=False)
        ds = SliceDataset(meta, 320, cache=cache, transform=build_transforms(320, train=True))
        loader = DataLoader(ds, batch_size=16, shuffle=True, num_workers=2, generator=torch.Generator().manual_seed(0),
                            persistent_workers=False)  # fmt: skip
        for key in ("samples_per_s", "samples_per_s_no_aug"):  # the second: what the augmentation costs
            it = iter(loader)
            next(it)  # workers started, first batch made
            t1, n = time.perf_counter(), 0
            for _ in range(4 if smoke else 40):
                images, _ = next(it)
                n += len(images)
            out[key] = n / (time.perf_counter() - t1)
            del it
            ds.transform = None
    elif name == "score":
        from gi_utils.data import iter_volumes
        from gi_utils.evaluation import ScoreAccumulator

        meta = build_metadata(data)
        cache = VolumeCache(meta, 320, work / "cache", progress=False)  # the float16 cache with masks
        acc = ScoreAccumulator()
        for case_day, _ in iter_volumes(meta):
            true = np.moveaxis(cache.mask(case_day), 1, -1)
            pred = np.roll(true, 2, axis=2) & (np.random.default_rng(0).random(true.shape, np.float32) > 0.05)
            acc.add(case_day, pred, true)
        out["score"] = acc.result().score
    elif name == "train":
        from gi_utils.training import TrainConfig, train

        small = {"img_size": 64, "max_steps_per_epoch": 1, "batch_size": 2, "n_folds": 2} if smoke else {}
        cfg = TrainConfig(data_dir=str(data), out_dir=str(work / "runs" / "unet"), img_size=320, epochs=1,
                          max_steps_per_epoch=4, batch_size=8, num_workers=2, cache="disk", cache_dtype="uint8",
                          cache_masks=False, model_kwargs={"decoder_channels": [64, 32, 16, 16, 16]},
                          progress=False, device="cpu").replace(**small)  # fmt: skip
        history = train(cfg)
        out["val_score"] = float(history["val_score"].iloc[-1])
        out["oof_gb"] = _du(work / "runs" / "unet" / "oof") / 1e9
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_mb"] = _peak_mb()
    out["peak_anon_mb"] = anon.close()
    return out


def _run_steps(names: list[str], data: Path, work: Path, smoke: bool) -> dict[str, dict]:
    """Run ``names`` one after the other in a new process; their figures by name."""
    done = subprocess.run([sys.executable, __file__, "--step", ",".join(names), "--data", str(data), "--work",
                           str(work), *(["--smoke"] if smoke else [])], capture_output=True, text=True)  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"step(s) {', '.join(names)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _slope(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares line ``y = a + b x``: (a, b)."""
    if len(xs) < 2:
        return 0.0, ys[0] / xs[0]
    b, a = np.polyfit(xs, ys, 1)
    return float(a), float(b)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fractions", default="0.0625,0.25", help="fractions of the real 38,496 slices")
    p.add_argument("--train", action="store_true", help="also measure a training run (slow at full size)")
    p.add_argument("--work", default="", help="working folder (default: a temporary one, removed after)")
    p.add_argument("--steps", default="", help="only these steps, comma-separated (on data written before in --work)")
    p.add_argument("--step", default="", help=argparse.SUPPRESS)
    p.add_argument("--data", default="", help=argparse.SUPPRESS)
    args = parse_args(p, argv, {"fractions": "0.03", "train": True})  # and each step at its smallest
    if args.step:
        data, work = Path(args.data), Path(args.work)
        print(json.dumps({name: step(name, data, work, args.smoke) for name in args.step.split(",")}))
        return 0
    root = Path(args.work or tempfile.mkdtemp(prefix="gi_fullsize_"))
    steps = ["write", "cache128", "cache320", "cache320u8", "loader", "score"] + (["train"] if args.train else [])
    if args.steps:
        steps = ["count" if "write" not in args.steps else "write"] + [s for s in args.steps.split(",") if s != "write"]
    rows = []
    for fraction in (float(f) for f in args.fractions.split(",")):
        cases = max(2, round(REAL_TRAIN_SLICES * fraction / SLICES_PER_CASE))
        work = root / f"cases_{cases}"
        work.mkdir(parents=True, exist_ok=True)
        data = work / "data"
        row = {"fraction": fraction}
        for group in [steps] if args.smoke else [[name] for name in steps]:  # smoke: one process, one import
            for name, figures in _run_steps(group, data, work, args.smoke).items():
                row[name] = figures
                print(f"  {cases} cases, {name}: {figures}", flush=True)
        row["slices"] = row[steps[0]]["slices"]
        rows.append(row)
        shutil.rmtree(work / "cache", ignore_errors=True)
    xs = [r["slices"] / 1000 for r in rows]
    full = REAL_TRAIN_SLICES / 1000
    print(f"\nsizes run: {[r['slices'] for r in rows]} slices (the real training set: {REAL_TRAIN_SLICES})")
    for name in steps:
        for key in ("seconds", "peak_rss_mb", "peak_anon_mb", "disk_gb"):
            if key not in rows[0][name]:
                continue
            ys = [r[name][key] for r in rows]
            a, b = _slope(xs, ys)
            at_full = rows[-1][name][key] if rows[-1]["slices"] >= REAL_TRAIN_SLICES else a + b * full
            tag = "measured" if rows[-1]["slices"] >= REAL_TRAIN_SLICES else "extrapolated"
            print(f"  {name} {key}: {', '.join(f'{y:.3g}' for y in ys)}; {b:.3g} per 1,000 slices; "
                  f"{at_full:.3g} at {REAL_TRAIN_SLICES} slices ({tag})")
    last = rows[-1]
    slices_ratio = last["slices"] / rows[0]["slices"]
    for name in steps:
        for key in ("peak_rss_mb", "peak_anon_mb"):
            ratio = last[name][key] / rows[0][name][key]
            print(f"  {key} of {name}: x{ratio:.2f} for x{slices_ratio:.2f} the slices"
                  f" ({'faster than linear' if ratio > slices_ratio * 1.1 else 'at most linear'})")
    scale = REAL_TRAIN_SLICES / last["slices"]

    def at_full(name: str, key: str) -> float:
        a, b = _slope(xs, [r[name][key] for r in rows])
        return last[name][key] if last["slices"] >= REAL_TRAIN_SLICES else a + b * full

    if "cache320" in steps:
        result("cache320_disk_gb_full", last["cache320"]["disk_gb"] * scale, "GB",
                f"<= {0.25 * KAGGLE_DISK_GB:g} GB, 25% of Kaggle's {KAGGLE_DISK_GB:g} GB")  # fmt: skip
    if "cache320u8" in steps:
        result("cache320_compact_disk_gb_full", last["cache320u8"]["disk_gb"] * scale, "GB",
                f"<= {0.25 * KAGGLE_DISK_GB:g} GB")  # fmt: skip
    if "loader" in steps:
        result("loader_320px_aug_2workers", last["loader"]["samples_per_s"], "samples/s", ">= 200 (feeds a T4)")
        result("loader_320px_no_aug_2workers", last["loader"]["samples_per_s_no_aug"], "samples/s",
                "report: the same loader without augmentation (what the augmentation costs)")  # fmt: skip
    if "score" in steps:
        result("score_all_case_days_seconds_full", last["score"]["seconds"] * scale, "s", "report")
    if "train" in steps:
        where = f"at {last['slices']} slices, linear extrapolation to {REAL_TRAIN_SLICES}"
        result("train_peak_rss_gb_full", at_full("train", "peak_rss_mb") / 1024, "GB",
                f"report: counts the pages of memory-mapped files read ({where})")  # fmt: skip
        result("train_peak_anon_gb_full", at_full("train", "peak_anon_mb") / 1024, "GB", f"< 8 GB ({where})")
    if not args.work:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    sys.exit(main())
