"""2.5D slice dataset and the cache of preprocessed volumes behind it.

Pieces, in the order data flows:

* :mod:`gi_utils.folds` -- :func:`assign_folds` (case-grouped, stratified, persisted).
* :mod:`gi_utils.transforms` -- :func:`preprocess_volume` (per-scan normalisation +
  resize/pad, shared with inference), :func:`restore_size`, :func:`build_transforms`.
* :class:`VolumeCache` -- every scan decoded once, preprocessed, stored as float16
  (N, S, S) images plus bit-packed uint8 (N, S, S) masks (bit c = class c), either in
  memory (small data only: refused above ``max_memory_bytes``) or as ``.npy`` files under
  ``cache_dir`` read back with ``np.load(mmap_mode="r")``. On disk the folder name carries
  a key (data files' names, sizes and mtimes, masks, img_size, mode, normalisation
  version); a matching folder is reused across runs, and a new one is written under a
  temporary name and moved in place with ``os.replace``.
* :class:`SliceDataset` -- one sample per slice: the slice and its neighbours at
  ``slice_offsets`` (clamped at the ends of the scan) as channels.

DataLoader workers: with fork, the memory-mapped files (or in-memory arrays) are shared
by the page cache / copy-on-write, never copied per worker; pickling a disk cache (spawn)
sends only its folder name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from gi_utils.constants import CLASSES
from gi_utils.data import ImageReadError, iter_volumes, read_image, read_volume, slice_mask
from gi_utils.folds import FoldsError, assign_folds, drop_case_days, make_folds, split_fold
from gi_utils.transforms import (
    CLIP_PERCENTILE,
    NORM_VERSION,
    _check_mode,
    _fit_packed,
    _preprocess_f16,
    build_transforms,
    intensity_clip,
    normalize_volume,
    pack_mask,
    preprocess_slice,
    preprocess_volume,
    restore_size,
    unpack_mask,
)

__all__ = [
    "VolumeCache", "SliceDataset", "cache_key", "CACHE_FORMAT", "MAX_MEMORY_BYTES",
    "assign_folds", "make_folds", "split_fold", "drop_case_days", "FoldsError",
    "normalize_volume", "preprocess_volume", "restore_size", "build_transforms",
]  # fmt: skip

CACHE_FORMAT: int = 1
#: An in-memory cache larger than this is refused (use ``cache_dir``).
MAX_MEMORY_BYTES: int = 2 * 1024**3


def _sorted(meta: pd.DataFrame) -> pd.DataFrame:
    return meta.sort_values(["case", "day", "slice"], kind="stable").reset_index(drop=True)


def _has_masks(meta: pd.DataFrame) -> bool:
    return all(c in meta.columns for c in CLASSES)


def cache_key(meta: pd.DataFrame, img_size: int, mode: str, with_masks: bool) -> str:
    """sha256 over the settings, each image file (id, name, size, mtime) and the masks."""
    h = hashlib.sha256()
    settings = {"format": CACHE_FORMAT, "norm": NORM_VERSION, "clip": CLIP_PERCENTILE,
                "img_size": int(img_size), "mode": mode, "masks": bool(with_masks)}  # fmt: skip
    h.update(json.dumps(settings, sort_keys=True).encode())
    for sid, path in zip(meta["id"], meta["path"], strict=True):
        try:
            st = os.stat(path)
        except OSError as err:
            raise ImageReadError(f"image of {sid!r} not found: {path}") from err
        h.update(f"{sid}|{os.path.basename(path)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    if with_masks:
        for name in CLASSES:
            h.update("\n".join(meta[name]).encode())
    return h.hexdigest()


class _NpyWriter:
    """Write an .npy file of known shape front to back (keeps RSS low, unlike a memmap)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: type) -> None:
        m = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        offset = m.offset
        del m
        self._f = open(path, "r+b")  # closed in close()
        self._f.seek(offset)

    def write(self, arr: np.ndarray) -> None:
        self._f.write(np.ascontiguousarray(arr).tobytes())

    def close(self) -> None:
        self._f.close()


class VolumeCache:
    """Preprocessed scans: float16 images (N, S, S) and packed uint8 masks (N, S, S).

    Rows follow ``meta`` sorted by case, day, slice. Built in the constructor (with a
    tqdm bar) unless a matching folder under ``cache_dir`` exists.

    Args:
        meta: :func:`gi_utils.data.build_metadata` table (train or test).
        img_size: S.
        cache_dir: folder for memory-mapped files; ``None`` keeps the arrays in memory.
        mode: ``"resize"`` or ``"pad"`` (see :func:`preprocess_volume`).
        with_masks: store masks; default: when ``meta`` has the class columns.
        max_memory_bytes: refuse an in-memory cache larger than this.
        progress: show the tqdm bar while building.

    Attributes:
        path: the cache folder (``None`` in memory); ``reused``: found on disk.
    """

    def __init__(
        self,
        meta: pd.DataFrame,
        img_size: int = 256,
        cache_dir: str | os.PathLike | None = None,
        *,
        mode: str = "resize",
        with_masks: bool | None = None,
        max_memory_bytes: int = MAX_MEMORY_BYTES,
        progress: bool = True,
    ) -> None:
        _check_mode(mode)
        self.meta = _sorted(meta)
        self.img_size, self.mode = int(img_size), mode
        self.with_masks = _has_masks(self.meta) if with_masks is None else bool(with_masks)
        if self.with_masks and not _has_masks(self.meta):
            raise ValueError(f"with_masks=True but meta lacks the class columns {list(CLASSES)}")
        self._row = pd.Index(self.meta["id"])
        self._images: np.ndarray | None = None
        self._masks: np.ndarray | None = None
        self.clips: dict[str, float] = {}
        self._spans: dict[str, tuple[int, int]] = {}
        n, s = len(self.meta), self.img_size
        self.nbytes = n * s * s * (2 + (1 if self.with_masks else 0))
        self.reused = False
        if cache_dir is None:
            if self.nbytes > max_memory_bytes:
                raise MemoryError(
                    f"an in-memory cache of {n} slices at {s}x{s} needs "
                    f"{self.nbytes / 1024**3:.1f} GiB (> max_memory_bytes="
                    f"{max_memory_bytes / 1024**3:.1f} GiB); pass cache_dir= to use "
                    "memory-mapped files on disk"
                )
            self.path = None
            self._images = np.empty((n, s, s), np.float16)
            self._masks = np.empty((n, s, s), np.uint8) if self.with_masks else None
            put_masks = self._masks.__setitem__ if self.with_masks else None
            self._build(self._images.__setitem__, put_masks, progress)
        else:
            self.key = cache_key(self.meta, s, mode, self.with_masks)
            self.path = Path(cache_dir) / f"gi_cache_s{s}_{mode}_{self.key[:16]}"
            self.reused = self._load_index()
            if not self.reused:
                self._build_on_disk(progress)

    # ---------------------------------------------------------------- building
    def _scans(self):
        for case_day, rows in iter_volumes(self.meta):
            yield case_day, rows, int(rows.index[0])

    def _build(self, put_images, put_masks, progress: bool) -> None:
        """Decode every scan once, in row order; ``put_*(slice, arr)`` store the results."""
        bar = tqdm(total=len(self.meta), desc="caching volumes", unit="slice",
                   disable=not progress)  # fmt: skip
        for case_day, rows, start in self._scans():
            vol = read_volume(rows)
            hi = intensity_clip(vol)
            self.clips[case_day] = hi
            self._spans[case_day] = (start, len(rows))
            put_images(
                slice(start, start + len(rows)), _preprocess_f16(vol, self.img_size, self.mode, hi)
            )
            if put_masks is not None:
                put_masks(slice(start, start + len(rows)), self._packed_masks_of(rows))
            bar.update(len(rows))
        bar.close()

    def _packed_masks_of(self, rows: pd.DataFrame) -> np.ndarray:
        return np.stack([_fit_packed(pack_mask(slice_mask(r)), self.img_size, self.mode)
                         for _, r in rows.iterrows()])  # fmt: skip

    def _build_on_disk(self, progress: bool) -> None:
        n, s = len(self.meta), self.img_size
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        tmp.mkdir(parents=True)
        try:
            img_w = _NpyWriter(tmp / "images.npy", (n, s, s), np.float16)
            mask_w = _NpyWriter(tmp / "masks.npy", (n, s, s), np.uint8) if self.with_masks else None
            self._build(
                lambda _sl, arr: img_w.write(arr),
                (lambda _sl, arr: mask_w.write(arr)) if mask_w else None,
                progress,
            )
            img_w.close()
            if mask_w:
                mask_w.close()
            index = {"key": self.key, "n": n, "img_size": s, "mode": self.mode,
                     "with_masks": self.with_masks, "ids": self.meta["id"].tolist(),
                     "scans": {cd: [st, d, self.clips[cd]] for cd, (st, d) in self._spans.items()}}  # fmt: skip
            (tmp / "index.json").write_text(json.dumps(index))
            try:
                os.replace(tmp, self.path)
            except OSError:  # another process finished first: use its folder
                if not self._load_index():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        self._load_index()

    def _load_index(self) -> bool:
        idx_path = self.path / "index.json"
        if not idx_path.is_file():
            return False
        index = json.loads(idx_path.read_text())
        if index.get("key") != self.key or index.get("ids") != self.meta["id"].tolist():
            return False
        self._spans = {cd: (int(v[0]), int(v[1])) for cd, v in index["scans"].items()}
        self.clips = {cd: float(v[2]) for cd, v in index["scans"].items()}
        return True

    # ---------------------------------------------------------------- access
    @property
    def images(self) -> np.ndarray:
        """float16 (N, S, S) in ``meta`` row order (memory-mapped read-only on disk)."""
        if self._images is None:
            self._images = np.load(self.path / "images.npy", mmap_mode="r")
        return self._images

    @property
    def packed_masks(self) -> np.ndarray:
        """uint8 (N, S, S), bit c = class c of :data:`~gi_utils.constants.CLASSES`."""
        if not self.with_masks:
            raise ValueError("this VolumeCache was built without masks")
        if self._masks is None:
            self._masks = np.load(self.path / "masks.npy", mmap_mode="r")
        return self._masks

    def rows(self, ids) -> np.ndarray:
        """Cache rows of slice ids; ``KeyError`` names the first id not cached."""
        r = self._row.get_indexer(pd.Index(ids))
        if (r < 0).any():
            raise KeyError(
                f"slice id {list(ids)[int(np.flatnonzero(r < 0)[0])]!r} is not in this cache"
            )
        return r

    def _span(self, case_day: str) -> slice:
        if case_day not in self._spans:
            raise KeyError(f"scan {case_day!r} is not in this cache")
        start, depth = self._spans[case_day]
        return slice(start, start + depth)

    def image(self, case_day: str) -> np.ndarray:
        """float16 (D, S, S) of one scan (a view; do not write)."""
        return self.images[self._span(case_day)]

    def mask(self, case_day: str) -> np.ndarray:
        """bool (D, 3, S, S) of one scan, channels in class order."""
        return unpack_mask(np.asarray(self.packed_masks[self._span(case_day)]))

    def __len__(self) -> int:
        return len(self.meta)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if self.path is not None:  # workers re-open the memmaps themselves
            state["_images"] = state["_masks"] = None
        return state


class SliceDataset(Dataset):
    """One 2.5D sample per slice of ``meta``.

    ``dataset[i]`` -> ``(image, mask)``: image float32 (C, S, S) with
    C = ``len(slice_offsets)``, channel k = slice ``i + slice_offsets[k]`` of the same scan
    (positions clamped to the first/last slice present); mask float32 (3, S, S) in
    :data:`~gi_utils.constants.CLASSES` order (zeros when ``with_masks`` is false).

    Args:
        meta: rows to serve (e.g. one fold); sorted by case/day/slice as ``.meta``.
        img_size: S.
        slice_offsets: neighbour offsets, e.g. ``(-2, 0, 2)``; ``(0,)`` for 2D.
        transform: albumentations pipeline of :func:`build_transforms` (or ``None``).
        cache: a :class:`VolumeCache` holding these ids (same img_size and mode); ``None``
            reads the PNGs of every sample (each scan is decoded once per process to get
            its normalisation clip value).
        with_masks: return the masks (needs the class columns).
        mode: ``"resize"`` or ``"pad"``.
        compact: return image float16 and mask uint8 instead of float32: 4x fewer
            bytes through the DataLoader's shared memory (its main cost with a cache)
            and to the GPU; convert there with ``.float()``. Same values.
    """

    def __init__(
        self,
        meta: pd.DataFrame,
        img_size: int = 256,
        slice_offsets: tuple[int, ...] = (-2, 0, 2),
        transform=None,
        cache: VolumeCache | None = None,
        with_masks: bool = True,
        *,
        mode: str = "resize",
        compact: bool = False,
    ) -> None:
        _check_mode(mode)
        if len(slice_offsets) == 0 or not all(
            isinstance(o, (int, np.integer)) for o in slice_offsets
        ):
            raise ValueError(
                f"slice_offsets must be a non-empty tuple of ints, got {slice_offsets!r}"
            )
        self.meta = _sorted(meta)
        self.img_size, self.mode = int(img_size), mode
        self.slice_offsets = tuple(int(o) for o in slice_offsets)
        self.transform, self.cache, self.with_masks = transform, cache, with_masks
        self.compact = compact
        if with_masks and not _has_masks(self.meta):
            raise ValueError(f"with_masks=True but meta lacks the class columns {list(CLASSES)}")
        if cache is not None:
            if (cache.img_size, cache.mode) != (self.img_size, mode):
                raise ValueError(
                    f"cache is for img_size={cache.img_size}, mode={cache.mode!r}; dataset "
                    f"asks img_size={self.img_size}, mode={mode!r}"
                )
            if with_masks and not cache.with_masks:
                raise ValueError("with_masks=True but the cache was built without masks")
            self._cache_rows = cache.rows(self.meta["id"])
        # neighbour table (N, C) of row numbers into self.meta
        scan_codes, scan_names = pd.factorize(self.meta["case_day"], sort=False)
        self._scan = scan_codes
        self._scan_names = list(scan_names)
        start = np.r_[0, np.flatnonzero(np.diff(scan_codes)) + 1]
        depth = np.diff(np.r_[start, len(scan_codes)])
        first, d = start[scan_codes], depth[scan_codes]
        pos = np.arange(len(scan_codes)) - first
        offs = np.asarray(self.slice_offsets)
        self._nbr = first[:, None] + np.clip(pos[:, None] + offs[None, :], 0, (d - 1)[:, None])
        self._paths = self.meta["path"].tolist()
        self._hw = self.meta[["height", "width"]].to_numpy()
        self._clips: dict[int, float] = {}
        self._seeded_for: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.meta)

    @property
    def ids(self) -> list[str]:
        """Slice ids in sample order."""
        return self.meta["id"].tolist()

    def neighbours(self, i: int) -> np.ndarray:
        """Rows of ``.meta`` stacked as the channels of sample ``i``."""
        return self._nbr[i]

    # ---------------------------------------------------------------- reading
    def _clip(self, scan: int) -> float:
        if scan not in self._clips:
            rows = self.meta[self._scan == scan]
            self._clips[scan] = intensity_clip(read_volume(rows))
        return self._clips[scan]

    def _read_image(self, i: int) -> np.ndarray:
        rows = self._nbr[i]
        if self.cache is not None:
            return self.cache.images[self._cache_rows[rows]]
        hi = self._clip(int(self._scan[i]))
        done: dict[int, np.ndarray] = {}
        for r in rows:
            if r not in done:
                img = read_image(self._paths[r], tuple(self._hw[r]))
                done[r] = preprocess_slice(img, self.img_size, hi, self.mode)
        return np.stack([done[r] for r in rows])

    def _read_packed_mask(self, i: int) -> np.ndarray:
        if self.cache is not None:
            return np.asarray(self.cache.packed_masks[self._cache_rows[i]])
        return _fit_packed(pack_mask(slice_mask(self.meta.iloc[i])), self.img_size, self.mode)

    def _reseed(self) -> None:
        """Give each DataLoader worker its own augmentation stream (torch's worker seed)."""
        info = torch.utils.data.get_worker_info()
        if info is None or self._seeded_for == (os.getpid(), info.seed):
            return
        self.transform.set_random_seed(int(info.seed % 2**32))
        self._seeded_for = (os.getpid(), info.seed)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} slices")
        i = int(i) % len(self)
        image = self._read_image(i)  # float16 (C, S, S)
        s = self.img_size
        packed = self._read_packed_mask(i) if self.with_masks else np.zeros((s, s), np.uint8)
        if self.transform is not None:
            self._reseed()
            hwc = np.ascontiguousarray(image.transpose(1, 2, 0), dtype=np.float32)
            out = self.transform(image=hwc, mask=packed)
            image, packed = out["image"].transpose(2, 0, 1), out["mask"]
        dtypes = (np.float16, np.uint8) if self.compact else (np.float32, np.float32)
        image = np.ascontiguousarray(image, dtype=dtypes[0])
        mask = unpack_mask(packed).astype(dtypes[1])
        return torch.from_numpy(image), torch.from_numpy(mask)
