"""Out-of-fold (OOF) sets: a model's probabilities on the slices it did not train on.

A run writes one at its best epoch (``<run>/oof/``); the sets of the folds of an
architecture together cover every training case-day once. Files, all memory-mapped::

    index.json   ids in row order, case-day -> [first row, slices], img_size, the split
    probs.npy    uint8 (N, 3, S, S): round(255 * probability), model resolution
    truth.npy    uint8 (N, ceil(3 S S / 8)): the true masks, bool (S, S, 3) per slice
                 bit-packed (np.packbits, C order): 3 bits per pixel
    gate.npy     float16 (N, 3): the classifier gate's probabilities (models with a gate)

Rows follow the validation table sorted by case, day and slice, so each case-day is one
contiguous block; nothing reads more than one volume at a time. A slice takes
:func:`oof_bytes_per_slice` bytes (345,600 at 320 px; a run checks the free space before
writing its set). Sets of the first format (``gi-oof-v1``: truth uint8 (N, S, S), bit c =
class c) are still read.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gi_utils.atomic import (
    SPACE_MARGIN,
    atomic_write_json,
    check_free_space,
    format_bytes,
    read_json,
)
from gi_utils.constants import CLASSES, NUM_CLASSES
from gi_utils.data.masks import unpack_masks
from gi_utils.evaluation.metric import ScoreAccumulator, ScoreResult
from gi_utils.inference.postprocessing import PostProcess

__all__ = ["OOF_FORMAT", "OOFWriter", "OOFSet", "OOFVolume", "OOFCollection", "score_oof", "false_positive_slices",
           "oof_bytes_per_slice"]

OOF_FORMAT = "gi-oof-v2"
_OOF_V1 = "gi-oof-v1"  # truth uint8 (N, S, S), bit c = class c; read, no longer written


def oof_bytes_per_slice(img_size: int, gate: bool = False) -> int:
    """Bytes one validation slice takes in an OOF set: 3 S S of probabilities, the truth
    at 3 bits per pixel and, with a gate, 3 float16 (345,600 at 320 px)."""
    s2 = int(img_size) ** 2
    return NUM_CLASSES * s2 + -(-NUM_CLASSES * s2 // 8) + (2 * NUM_CLASSES if gate else 0)


def _pack_truth(truth: np.ndarray) -> np.ndarray:
    """uint8 (n, S, S), bit c = class c -> bit-packed bool (n, S, S, 3): (n, ceil(3 S S / 8))."""
    bits = unpack_masks(np.asarray(truth), axis=-1)
    return np.packbits(bits.reshape(len(bits), -1), axis=1)


def _unpack_truth(packed: np.ndarray, img_size: int) -> np.ndarray:
    """The inverse of :func:`_pack_truth`: bool (n, S, S, 3)."""
    n, s = len(packed), int(img_size)
    bits = np.unpackbits(np.asarray(packed), axis=1, count=s * s * NUM_CLASSES)
    return bits.reshape(n, s, s, NUM_CLASSES).astype(bool)


class OOFWriter:
    """Write an OOF set row by row (rows in any order, e.g. gathered from processes).

    Args:
        out_dir: the set's folder (created; an existing one is replaced).
        meta: the validation rows in row order (``id``, ``case_day``).
        volumes: case_day -> row numbers (contiguous) of ``meta``.
        img_size: S.
        split: the run's split record, kept in ``index.json``.

    Raises:
        NotEnoughSpaceError: the set would not fit on the disk of ``out_dir`` (with a 5%
            margin); checked before anything is written, naming the bytes per slice.
    """

    def __init__(self, out_dir: str | os.PathLike, meta: pd.DataFrame, volumes: Mapping[str, np.ndarray],
                 img_size: int, split: Mapping[str, Any] | None = None) -> None:  # fmt: skip
        self.dir = Path(out_dir)
        if self.dir.exists():
            shutil.rmtree(self.dir)
        n, s = len(meta), int(img_size)
        per_slice = oof_bytes_per_slice(s, gate=True)  # the gate is known only at the first write
        check_free_space(
            self.dir.parent, n * per_slice, f"the out-of-fold set ({n} validation slices at {s} px)",
            margin=SPACE_MARGIN, fits=f"{per_slice:,} bytes per slice ({format_bytes(per_slice)}); a smaller "
            f"img_size needs less (at {s // 2} px: {oof_bytes_per_slice(s // 2, gate=True):,} bytes), or "
            "another out_dir",
        )  # fmt: skip
        self.dir.mkdir(parents=True)
        spans = {}
        for cd, rows in volumes.items():
            rows = np.asarray(rows)
            if len(rows) and not np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
                raise ValueError(f"OOF rows of {cd!r} are not contiguous")
            spans[str(cd)] = [int(rows[0]), len(rows)] if len(rows) else [0, 0]
        self.index = {"format": OOF_FORMAT, "img_size": s, "n": n, "classes": list(CLASSES),
                      "ids": meta["id"].tolist(), "case_days": spans, "gate": False,
                      "split": dict(split or {})}  # fmt: skip
        fmt = np.lib.format
        self.probs = fmt.open_memmap(self.dir / "probs.npy", "w+", np.uint8, (n, NUM_CLASSES, s, s))
        self.truth = fmt.open_memmap(self.dir / "truth.npy", "w+", np.uint8, (n, -(-NUM_CLASSES * s * s // 8)))
        self.gate: np.ndarray | None = None
        self.written = np.zeros(n, bool)

    def write(self, rows: np.ndarray, probs: np.ndarray, truth: np.ndarray, gate: np.ndarray | None = None) -> None:
        """Rows ``rows`` of the set: uint8 probs (n, 3, S, S), packed truth (n, S, S),
        gate probabilities (n, 3) or None."""
        self.probs[rows] = probs
        self.truth[rows] = _pack_truth(truth)
        if gate is not None:
            if self.gate is None:
                self.gate = np.lib.format.open_memmap(
                    self.dir / "gate.npy", "w+", np.float16, (len(self.written), NUM_CLASSES)
                )
                self.index["gate"] = True
            self.gate[rows] = gate
        self.written[rows] = True

    def close(self) -> None:
        """Flush the arrays and write ``index.json`` (the set is complete only then)."""
        if not self.written.all():
            raise ValueError(f"OOF set {self.dir}: {int((~self.written).sum())} rows never written")
        for arr in (self.probs, self.truth, self.gate):
            if arr is not None:
                arr.flush()
        self.probs = self.truth = self.gate = None  # type: ignore[assignment]
        atomic_write_json(self.dir / "index.json", self.index)


@dataclass(frozen=True)
class OOFVolume:
    """One case-day of an OOF set: ``probs`` uint8 (D, S, S, 3) (a view), ``truth`` bool
    (D, S, S, 3), ``gate`` float (D, 3) or None, and the slice ``ids``."""

    case_day: str
    probs: np.ndarray
    truth: np.ndarray
    gate: np.ndarray | None
    ids: list[str]


class OOFSet:
    """Read an OOF set (memory-mapped); ``volumes()`` yields one :class:`OOFVolume` at a time.

    Raises:
        FileNotFoundError: the folder has no complete set (``index.json``), naming it.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.dir = Path(path)
        if not (self.dir / "index.json").is_file():
            raise FileNotFoundError(f"no out-of-fold set at {self.dir} (no index.json)")
        self.index = read_json(self.dir / "index.json")
        self.format = self.index.get("format")
        if self.format not in (OOF_FORMAT, _OOF_V1):
            raise ValueError(f"{self.dir / 'index.json'} is not a {OOF_FORMAT!r} (or {_OOF_V1!r}) set")
        self.img_size = int(self.index["img_size"])
        self.ids: list[str] = self.index["ids"]
        self.spans: dict[str, tuple[int, int]] = {k: (int(a), int(b)) for k, (a, b) in self.index["case_days"].items()}
        self.probs = np.load(self.dir / "probs.npy", mmap_mode="r")
        self.truth = np.load(self.dir / "truth.npy", mmap_mode="r")
        self.gate = np.load(self.dir / "gate.npy", mmap_mode="r") if self.index.get("gate") else None

    @property
    def case_days(self) -> list[str]:
        return list(self.spans)

    def __len__(self) -> int:
        return len(self.ids)

    def volume(self, case_day: str, truth: bool = True) -> OOFVolume:
        """One case-day (``KeyError`` names it when the set does not hold it); ``truth=False``
        leaves the truth out (``None``), for readers that already have it."""
        if case_day not in self.spans:
            raise KeyError(f"case-day {case_day!r} is not in the out-of-fold set {self.dir}")
        a, d = self.spans[case_day]
        rows = slice(a, a + d)
        gate = np.asarray(self.gate[rows], np.float32) if self.gate is not None else None
        true = None
        if truth:
            packed = np.asarray(self.truth[rows])
            true = unpack_masks(packed, axis=-1) if self.format == _OOF_V1 else _unpack_truth(packed, self.img_size)
        return OOFVolume(case_day, np.moveaxis(self.probs[rows], 1, -1), true, gate, self.ids[rows])

    def volumes(self, case_days: list[str] | None = None, truth: bool = True) -> Iterator[OOFVolume]:
        for cd in case_days if case_days is not None else self.case_days:
            yield self.volume(cd, truth)

    def source(self, case_days: list[str] | None = None, truth: bool = True):
        """Volumes as ``(case_day, probs, truth or None, gate)`` (a search's volume source)."""
        for v in self.volumes(case_days, truth):
            yield v.case_day, v.probs, v.truth, v.gate

    @property
    def fold(self) -> int:
        """The fold the set validates (from the run's split)."""
        return int(self.index["split"].get("fold", -1))

    @property
    def train_case_days(self) -> list[str]:
        return list(self.index["split"].get("train_case_days", []))


class OOFCollection:
    """The OOF sets of one architecture's folds, read as one set of volumes.

    Raises:
        ValueError: a case-day in two sets, or a set whose case-days its model trained on
            (a fold leak); the message names the case-day and the sets.
    """

    def __init__(self, sets: list[OOFSet], name: str = "") -> None:
        if not sets:
            raise ValueError("OOFCollection needs at least one out-of-fold set")
        self.sets, self.name = list(sets), name
        self.owner: dict[str, OOFSet] = {}
        for oof in self.sets:
            leak = set(oof.case_days) & set(oof.train_case_days)
            if leak:
                raise ValueError(f"fold leak in {oof.dir}: {sorted(leak)[:3]} are both trained on and validated")
            for cd in oof.case_days:
                if cd in self.owner:
                    raise ValueError(f"case-day {cd!r} is in two out-of-fold sets: {self.owner[cd].dir} and {oof.dir}")
                self.owner[cd] = oof
        sizes = {o.img_size for o in self.sets}
        if len(sizes) > 1:
            raise ValueError(f"the folds of {name or 'one architecture'} differ in img_size: {sorted(sizes)}")
        self.img_size = sizes.pop()

    @property
    def case_days(self) -> list[str]:
        return list(self.owner)

    @property
    def folds(self) -> dict[int, list[str]]:
        """fold -> its case-days."""
        out: dict[int, list[str]] = {}
        for oof in self.sets:
            out.setdefault(oof.fold, []).extend(oof.case_days)
        return out

    @property
    def has_gate(self) -> bool:
        return all(o.gate is not None for o in self.sets)

    def missing(self, case_days: list[str]) -> list[str]:
        """The case-days of ``case_days`` no set covers."""
        return [cd for cd in case_days if cd not in self.owner]

    def volume(self, case_day: str, truth: bool = True) -> OOFVolume:
        if case_day not in self.owner:
            raise KeyError(f"case-day {case_day!r} is in none of the out-of-fold sets of {self.name or 'this collection'}")
        return self.owner[case_day].volume(case_day, truth)

    def source(self, case_days: list[str] | None = None, truth: bool = True):
        """Volumes as ``(case_day, probs, truth or None, gate)`` (a search's volume source)."""
        for cd in case_days if case_days is not None else self.case_days:
            v = self.volume(cd, truth)
            yield cd, v.probs, v.truth, v.gate


def score_oof(oof, post: PostProcess, case_days: list[str] | None = None, **metric: Any) -> ScoreResult:
    """Competition score of OOF volumes under ``post``, one volume at a time.

    Args:
        oof: an :class:`OOFSet` (or its folder), an :class:`OOFCollection`, or anything
            with a ``source(case_days)`` yielding ``(case_day, probs, truth, gate)``.
        case_days: the volumes to score (default: all).
        metric: options of :class:`~gi_utils.evaluation.metric.ScoreAccumulator`.
    """
    oof = OOFSet(oof) if isinstance(oof, (str, os.PathLike)) else oof
    acc = ScoreAccumulator(**metric)
    for cd, probs, truth, gate in oof.source(case_days):
        acc.add(cd, post.apply(probs, gate), truth)
    return acc.result()


def false_positive_slices(oof, post: PostProcess, case_days: list[str] | None = None) -> dict[str, int]:
    """``{"fp_slices": (slice, class) pairs predicted on an empty true slice,
    "empty_slices": true-empty pairs}`` of OOF volumes under ``post`` (the errors a
    classifier gate is there to remove; each one costs a whole Hausdorff term)."""
    fp = empty = 0
    for _, probs, truth, gate in oof.source(case_days):
        pred = post.apply(probs, gate)
        d = len(pred)
        true_any = truth.reshape(d, -1, truth.shape[-1]).any(1)
        pred_any = pred.reshape(d, -1, pred.shape[-1]).any(1)
        fp += int((pred_any & ~true_any).sum())
        empty += int((~true_any).sum())
    return {"fp_slices": fp, "empty_slices": empty}

