"""The cache of preprocessed volumes: every scan decoded once, normalised, resized and kept
as float16 (N, S, S) images plus bit-packed uint8 (N, S, S) masks (bit c = class c).

In memory (small data only: refused above ``max_memory_bytes``) or as ``.npy`` files under
``cache_dir`` read back with ``np.load(mmap_mode="r")``. On disk the folder name carries a
key (data files' names, sizes and mtimes, masks, img_size, mode, normalisation version);
a matching folder is reused across runs, and a new one is written under a temporary name
and moved in place with ``os.replace``; before writing, the free space of ``cache_dir`` is
checked against the cache's size (with a 5% margin; the error names the compact settings
or the image size that fit), and a disk that fills anyway raises
:class:`~gi_utils.atomic.DiskFullError` naming the file, after the partial folder is
removed. With fork, DataLoader workers share the
memory-mapped files through the page cache; pickling a disk cache (spawn) sends only its
folder name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from gi_utils.atomic import (
    SPACE_MARGIN,
    DiskFullError,
    check_free_space,
    disk_full_errno,
    disk_full_error,
    format_bytes,
)
from gi_utils.constants import CLASSES
from gi_utils.data.body_crop import Box
from gi_utils.data.errors import ImageReadError
from gi_utils.data.images import iter_volumes, read_volume, slice_mask
from gi_utils.data.layout import has_masks, sort_slices
from gi_utils.data.masks import fit_packed_mask, pack_masks, unpack_masks
from gi_utils.data.preprocess import (
    CLIP_PERCENTILE,
    NORM_VERSION,
    check_mode,
    intensity_clip,
    preprocess_volume_f16,
    scan_box,
)
from gi_utils.progress import progress_bar

__all__ = ["VolumeCache", "cache_key", "cached_as", "scan_packed_masks", "cache_nbytes", "cache_that_fits",
           "CACHE_FORMAT", "CACHE_DTYPES", "MAX_MEMORY_BYTES"]  # fmt: skip

CACHE_FORMAT: int = 1
#: An in-memory cache larger than this is refused (use ``cache_dir``).
MAX_MEMORY_BYTES: int = 2 * 1024**3


#: Storage of the cached images: ``"float16"`` (exact: the values inference computes) or
#: ``"uint8"`` (``round(255 x)``: half the disk, for large sizes; 1/255 steps).
CACHE_DTYPES: tuple[str, ...] = ("float16", "uint8")
_U8_SCALE = np.float32(255)


def cache_nbytes(n_slices: int, img_size: int, dtype: str = "float16", with_masks: bool = True) -> int:
    """Bytes of a cache of ``n_slices`` at ``img_size``: 2 (float16) or 1 (uint8) per pixel
    for the images, 1 for the packed masks. The competition's 38,496 training slices at
    320 px: 11.8 GB by default, 3.9 GB compact (``dtype="uint8"``, no masks)."""
    return n_slices * img_size * img_size * ((2 if dtype == "float16" else 1) + (1 if with_masks else 0))


def cache_that_fits(n_slices: int, img_size: int, dtype: str, with_masks: bool, free: int,
                    margin: float = SPACE_MARGIN) -> str:  # fmt: skip
    """The settings of a cache that fit in ``free`` bytes (with ``margin`` kept free), in
    the words of ``TrainConfig``: the compact cache (``cache_dtype="uint8"``,
    ``cache_masks=False``) at this size, else the largest ``img_size`` (a multiple of 32)
    that fits with these settings and, if larger, compact; or that none does."""

    def fits(size: int, dt: str, masks: bool) -> bool:
        return cache_nbytes(n_slices, size, dt, masks) * (1 + margin) <= free

    compact = ("uint8", False)
    out = []
    if (dtype, with_masks) != compact:
        need = format_bytes(cache_nbytes(n_slices, img_size, *compact))
        if fits(img_size, *compact):
            return f"the compact cache, cache_dtype='uint8' and cache_masks=False ({need} at {img_size} px)"
        out.append(f"not the compact cache (cache_dtype='uint8', cache_masks=False: {need} at {img_size} px)")
    best = 0
    for settings, label in (((dtype, with_masks), "these settings"), (compact, "the compact cache")):
        size = next((z for z in range(img_size - img_size % 32, best, -32) if z < img_size and fits(z, *settings)), 0)
        if size > best:
            best = size
            out.append(f"img_size={size} with {label} ({format_bytes(cache_nbytes(n_slices, size, *settings))})")
    if not best:
        out.append("no img_size from 32 px: a cache_dir on a larger disk")
    return "; ".join(out)


def cached_as(images: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """Cached images as ``dtype`` values in [0, 1]: uint8 storage is divided by 255, float16
    storage only converted (not copied when it is ``dtype`` already)."""
    if images.dtype == np.uint8:
        return (images / _U8_SCALE).astype(dtype)
    return images.astype(dtype, copy=False)


def scan_packed_masks(rows: pd.DataFrame, img_size: int, mode: str, box: Box | None = None) -> np.ndarray:
    """Packed uint8 (len(rows), S, S) masks of ``rows`` decoded from their RLE and fitted to
    (S, S), what the cache stores (and what a cache without masks is read as); ``"crop"``
    mode: the rows of one scan, cut to its body ``box``."""
    return np.stack([fit_packed_mask(pack_masks(slice_mask(r)), img_size, mode, box)
                     for _, r in rows.iterrows()])  # fmt: skip


def cache_key(meta: pd.DataFrame, img_size: int, mode: str, with_masks: bool, dtype: str = "float16") -> str:
    """sha256 over the settings, each image file (id, name, size, mtime) and the masks."""
    h = hashlib.sha256()
    settings = {"format": CACHE_FORMAT, "norm": NORM_VERSION, "clip": CLIP_PERCENTILE,
                "img_size": int(img_size), "mode": mode, "masks": bool(with_masks)}  # fmt: skip
    if dtype != "float16":
        settings["dtype"] = dtype
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


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Give an ``OSError`` raised inside the file name it was writing."""
    try:
        yield
    except OSError as err:
        if err.filename is None:
            err.filename = os.fspath(path)
        raise


class _NpyWriter:
    """Write an .npy file of known shape front to back (keeps RSS low, unlike a memmap)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: type) -> None:
        self.path = path
        with _naming(path):
            m = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
            offset = m.offset
            del m
            self._f = open(path, "r+b")  # closed in close()
            self._f.seek(offset)

    def write(self, arr: np.ndarray) -> None:
        with _naming(self.path):
            self._f.write(np.ascontiguousarray(arr).tobytes())

    def close(self) -> None:
        with _naming(self.path):
            self._f.close()


class VolumeCache:
    """Preprocessed scans: float16 images (N, S, S) and packed uint8 masks (N, S, S).

    Rows follow ``meta`` sorted by case, day, slice. Built in the constructor (with a
    tqdm bar) unless a matching folder under ``cache_dir`` exists.

    Args:
        meta: :func:`gi_utils.data.build_metadata` table (train or test).
        img_size: S.
        cache_dir: folder for memory-mapped files; ``None`` keeps the arrays in memory.
        mode: ``"resize"``, ``"pad"`` or ``"crop"`` (see :func:`preprocess_volume`; the
            body box of each scan is kept in :attr:`boxes`).
        with_masks: store masks; default: when ``meta`` has the class columns. Without
            them a dataset decodes each sample's masks from ``meta``'s RLE (cheap; not in
            ``"crop"`` mode, whose masks are cut to the box here).
        dtype: ``"float16"`` or ``"uint8"`` (:data:`CACHE_DTYPES`).
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
        dtype: str = "float16",
        max_memory_bytes: int = MAX_MEMORY_BYTES,
        progress: bool = True,
    ) -> None:
        check_mode(mode)
        self.meta = sort_slices(meta)
        self.img_size, self.mode = int(img_size), mode
        self.with_masks = has_masks(self.meta) if with_masks is None else bool(with_masks)
        if dtype not in CACHE_DTYPES:
            raise ValueError(f"cache dtype={dtype!r} is not valid; choose one of {', '.join(CACHE_DTYPES)}")
        self.dtype = dtype
        if self.with_masks and not has_masks(self.meta):
            raise ValueError(f"with_masks=True but meta lacks the class columns {list(CLASSES)}")
        self._row = pd.Index(self.meta["id"])
        self._images: np.ndarray | None = None
        self._masks: np.ndarray | None = None
        self.clips: dict[str, float] = {}
        self.boxes: dict[str, Box] = {}  # "crop" mode: each scan's body box
        self._spans: dict[str, tuple[int, int]] = {}
        n, s = len(self.meta), self.img_size
        self.nbytes = cache_nbytes(n, s, dtype, self.with_masks)
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
            self._images = np.empty((n, s, s), np.dtype(dtype))
            self._masks = np.empty((n, s, s), np.uint8) if self.with_masks else None
            put_masks = self._masks.__setitem__ if self.with_masks else None
            self._build(self._images.__setitem__, put_masks, progress)
        else:
            self.key = cache_key(self.meta, s, mode, self.with_masks, dtype)
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
        bar = progress_bar(None, "caching volumes", progress, total=len(self.meta), unit="slice")
        for case_day, rows, start in self._scans():
            vol = read_volume(rows)
            hi = intensity_clip(vol)
            self.clips[case_day] = hi
            self._spans[case_day] = (start, len(rows))
            box = scan_box(vol, self.mode, hi)
            if box is not None:
                self.boxes[case_day] = box
            images = preprocess_volume_f16(vol, self.img_size, self.mode, hi, box)
            if self.dtype == "uint8":
                images = np.round(images.astype(np.float32) * _U8_SCALE).astype(np.uint8)
            put_images(slice(start, start + len(rows)), images)
            if put_masks is not None:
                put_masks(slice(start, start + len(rows)), scan_packed_masks(rows, self.img_size, self.mode, box))
            bar.update(len(rows))
        bar.close()

    def _build_on_disk(self, progress: bool) -> None:
        n, s = len(self.meta), self.img_size
        check_free_space(self.path.parent, self.nbytes, f"a cache of {n} slices at {s}x{s}", margin=SPACE_MARGIN,
                         fits=lambda free: cache_that_fits(n, s, self.dtype, self.with_masks, free))  # fmt: skip
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            self._write_folder(tmp, progress)
        except Exception as err:
            code = None if isinstance(err, DiskFullError) else disk_full_errno(err)
            if code is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # first: the message gives the free space left
            name = getattr(err, "filename", None)
            target = self.path / Path(name).name if name else self.path
            raise disk_full_error(
                target, code, needed=self.nbytes,
                note="the partial cache folder was removed; or pass another cache_dir",
            ) from err  # fmt: skip
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        self._load_index()

    def _write_folder(self, tmp: Path, progress: bool) -> None:
        """Write the cache into the new folder ``tmp`` and move it to :attr:`path`."""
        n, s = len(self.meta), self.img_size
        with _naming(tmp):
            tmp.mkdir(parents=True)
        writers = [_NpyWriter(tmp / "images.npy", (n, s, s), np.dtype(self.dtype))]
        try:
            if self.with_masks:
                writers.append(_NpyWriter(tmp / "masks.npy", (n, s, s), np.uint8))
            img_w, mask_w = writers[0], (writers[1] if self.with_masks else None)
            self._build(
                lambda _sl, arr: img_w.write(arr),
                (lambda _sl, arr: mask_w.write(arr)) if mask_w else None,
                progress,
            )
        except BaseException:
            for w in writers:
                with contextlib.suppress(OSError):
                    w.close()
            raise
        for w in writers:  # closing flushes: a full disk may show only here
            w.close()
        index = {"key": self.key, "n": n, "img_size": s, "mode": self.mode,
                 "with_masks": self.with_masks, "ids": self.meta["id"].tolist(),
                 "scans": {cd: [st, d, self.clips[cd]] for cd, (st, d) in self._spans.items()},
                 **({"boxes": self.boxes} if self.boxes else {})}  # fmt: skip
        with _naming(tmp / "index.json"):
            (tmp / "index.json").write_text(json.dumps(index))
        try:
            os.replace(tmp, self.path)
        except OSError:  # another process finished first: use its folder
            if not self._load_index():
                raise

    def _load_index(self) -> bool:
        idx_path = self.path / "index.json"
        if not idx_path.is_file():
            return False
        index = json.loads(idx_path.read_text())
        if index.get("key") != self.key or index.get("ids") != self.meta["id"].tolist():
            return False
        self._spans = {cd: (int(v[0]), int(v[1])) for cd, v in index["scans"].items()}
        self.clips = {cd: float(v[2]) for cd, v in index["scans"].items()}
        self.boxes = {cd: tuple(int(x) for x in b) for cd, b in index.get("boxes", {}).items()}
        return True

    # ---------------------------------------------------------------- access
    @property
    def images(self) -> np.ndarray:
        """float16 (or uint8, ``round(255 x)``) (N, S, S) in ``meta`` row order
        (memory-mapped read-only on disk)."""
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
        return unpack_masks(np.asarray(self.packed_masks[self._span(case_day)]), axis=1)

    def __len__(self) -> int:
        return len(self.meta)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if self.path is not None:  # workers re-open the memmaps themselves
            state["_images"] = state["_masks"] = None
        return state
