"""The plan of a run's training feed, decided once where the run starts: which path makes
the batches (``TrainConfig.data_path``: the device or loader workers), whether the
training and validation slices stay on the GPU or in host memory (each batch gathered
there and copied), and the figures the decision was taken from.

The decision (:func:`decide_feed`) is a pure function of numbers: the cache's bytes, the
GPU memory seen (:func:`gpu_memory`: what the driver reports free plus what torch's
caching allocator holds reserved but unused, so a second fold trained in the same
process sees the memory the first one freed), the peak of one probe step of the run's
model (:func:`gi_utils.training.probe.probe_step`) and allowances for what that step does
not hold (:func:`allowances`). Of the memory seen, :data:`HEADROOM` may be planned; the
rest is the margin (the caching allocator's fragmentation, cuDNN workspaces that vary by
kernel). A 3-D model's batch and patch depth may come from probe steps too
(:func:`choose_size`, ``TrainConfig.probe_size``).

The plan is printed (:meth:`FeedPlan.summary`), recorded in ``last.pt`` and
``metrics.json`` (:meth:`FeedPlan.to_dict`), and a resumed run takes the recorded plan
instead of deciding again (the batches of the two paths differ; the memory a later
session sees may differ too).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

__all__ = ["DATA_PATHS", "HEADROOM", "AUGMENT_COPIES", "SIZES_3D", "GpuMemory", "FeedPlan", "gpu_memory",
           "allowances", "decide_feed", "choose_size"]  # fmt: skip

#: ``TrainConfig.data_path`` values: auto | device (data and augmentation on the device) |
#: workers (DataLoader workers, albumentations per sample).
DATA_PATHS: tuple[str, ...] = ("auto", "device", "workers")
#: Share of the GPU memory seen that a plan may fill (``benchmarks/memory_3d.py``'s
#: ``--headroom``); the remaining 15% is the margin.
HEADROOM: float = 0.85
#: Float32 copies of a batch (images and masks) the device augmentation holds at once
#: besides its input: sampling grid, distortion fields, resampled images and masks.
AUGMENT_COPIES: int = 4
#: 3-D ``(batch_size, patch_depth)`` candidates of ``probe_size``, tried in this order (the
#: deeper patch first, then the larger batch; depths are multiples of 16, which both 3-D
#: models divide by).
SIZES_3D: tuple[tuple[int, int], ...] = ((8, 64), (4, 64), (2, 64), (4, 32), (2, 32), (2, 16), (1, 16))

_GB = 1e9


@dataclass(frozen=True)
class GpuMemory:
    """The memory of one GPU as a plan sees it, in bytes.

    ``free``: the driver's free memory plus ``cached``, the memory torch's caching
    allocator holds reserved but unused (``mem_get_info().free + memory_reserved() -
    memory_allocated()``); ``total``: the card's.
    """

    name: str
    free: int
    total: int
    cached: int = 0


def gpu_memory(device: torch.device) -> GpuMemory | None:
    """What :class:`GpuMemory` ``device`` has now; ``None`` off CUDA."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    cached = max(0, int(torch.cuda.memory_reserved(device)) - int(torch.cuda.memory_allocated(device)))
    return GpuMemory(torch.cuda.get_device_name(device), int(free) + cached, int(total), cached)


def allowances(
    *, param_bytes: int, ema: bool, batch_numel: int, device_path: bool, val_numel: int = 0
) -> dict[str, int]:
    """Bytes a run needs beside its cache and its probe step, by what they are for.

    Args:
        param_bytes: the model's parameters and buffers (float32).
        ema: a weight average is kept (a float32 copy of them, on the device).
        batch_numel: elements of one training batch's images and float masks together.
        device_path: the augmentation runs on the device (:data:`AUGMENT_COPIES` float32
            copies of the batch, transient).
        val_numel: elements validation keeps on the device beside the model at once:
            2.5D, a validation batch's images, masks, logits and probabilities; 3-D, a
            whole scan's image, masks, window sums and counts. The no-grad forward's
            activations are not added: the training step's, which the probe measured, are
            freed by then.

    The three are summed although they do not coincide (the augmentation's temporaries are
    freed before the step, validation runs between epochs): part of the margin.
    """
    return {"weight_average": param_bytes if ema else 0,
            "augmentation": AUGMENT_COPIES * 4 * batch_numel if device_path else 0,
            "validation": 4 * val_numel}  # fmt: skip


def _gb(n: int | float | None) -> str:
    """Bytes for a reader: GB, or MB below 0.1 GB."""
    if n is None:
        return "?"
    return f"{n / _GB:.2f} GB" if abs(n) >= 0.1 * _GB else f"{n / 1e6:.1f} MB"


@dataclass(frozen=True)
class FeedPlan:
    """How a run's batches are made, and the figures that decided it (bytes).

    Attributes:
        path: ``"device"`` or ``"workers"``.
        asked: ``TrainConfig.data_path`` of the run (auto | device | workers).
        train_resident, val_resident: on the device path, the training (validation)
            slices kept on the GPU; ``False``: in host memory, each batch gathered there and copied.
        reason: why, in words.
        train_bytes, val_bytes: the device path's copies of the training and (2.5D)
            validation slices (:func:`~gi_utils.data.device_batches.device_nbytes`).
        gpu: the card's name (``None`` off CUDA); ``free``, ``total``, ``cached``: its
            :class:`GpuMemory`.
        step_bytes: peak of the probe step (``None``: not probed; a GPU where it ran out
            of memory says so in ``reason``).
        allowance: :func:`allowances`.
        headroom: share of ``free`` planned.
        sizes: 3-D ``{"batch_size", "patch_depth"}`` chosen by probe steps, ``tried``:
            ``[batch, depth, peak bytes or None (out of memory)]`` of each candidate, and
            ``fits`` (False: none fitted, the config's values kept).
        recorded: this plan was read from ``last.pt`` (a resumed run), not decided now.
    """

    path: str
    asked: str = "auto"
    train_resident: bool = False
    val_resident: bool = False
    reason: str = ""
    train_bytes: int = 0
    val_bytes: int = 0
    gpu: str | None = None
    free: int | None = None
    total: int | None = None
    cached: int | None = None
    step_bytes: int | None = None
    allowance: dict[str, int] = field(default_factory=dict)
    headroom: float = HEADROOM
    sizes: dict[str, Any] | None = None
    recorded: bool = False

    @property
    def needed(self) -> int:
        """Bytes the plan puts on the GPU: the resident slices, the step, the allowances."""
        cache = (self.train_bytes if self.train_resident else 0) + (self.val_bytes if self.val_resident else 0)
        return cache * (self.path == "device") + (self.step_bytes or 0) + sum(self.allowance.values())

    @property
    def config_sizes(self) -> dict[str, int]:
        """``{"batch_size", "patch_depth"}`` chosen by probe steps (empty: none were)."""
        if not self.sizes or not self.sizes.get("fits", True):
            return {}
        return {k: int(self.sizes[k]) for k in ("batch_size", "patch_depth")}

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (``last.pt`` is read with ``weights_only=True``; ``metrics.json``)."""
        out = asdict(self)
        out.pop("recorded")
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any], recorded: bool = True) -> FeedPlan:
        """The plan :meth:`to_dict` wrote (``recorded``: read back from a run folder)."""
        names = set(cls.__dataclass_fields__) - {"recorded"}
        return cls(**{k: v for k, v in values.items() if k in names}, recorded=recorded)

    @classmethod
    def from_state(cls, saved: dict[str, Any]) -> FeedPlan:
        """The plan a ``last.pt`` recorded (one written before plans: its ``data_path``,
        slices resident)."""
        if "feed_plan" in saved:
            return cls.from_dict(saved["feed_plan"])
        path = saved.get("data_path", "workers")
        return cls(path, saved["config"].get("data_path", "auto"), path == "device", path == "device",
                   reason="an older last.pt: its path, slices resident", recorded=True)  # fmt: skip

    def summary(self) -> str:
        """A few lines: the decision, the bytes, the GPU memory seen."""
        where = {True: "on the GPU" if self.gpu else "in host memory (no GPU)", False: "in host memory"}
        if self.path == "device":
            head = f"device path (data_path={self.asked!r}): training slices {where[self.train_resident]}"
            if self.val_bytes:
                head += f", validation slices {where[self.val_resident]}"
        else:
            head = f"workers path (data_path={self.asked!r})"
        src = "recorded in last.pt, reused" if self.recorded else self.reason
        lines = [f"feed plan: {head}; {src}"]
        if self.recorded and self.reason:
            lines.append(f"  decided then: {self.reason}")
        lines.append(f"  cache {_gb(self.train_bytes)} training + {_gb(self.val_bytes)} validation slices")
        if self.gpu is not None:
            parts = ", ".join(f"{k.replace('_', ' ')} {_gb(v)}" for k, v in self.allowance.items() if v)
            lines.append(f"  {self.gpu}: {_gb(self.free)} free of {_gb(self.total)} ({_gb(self.cached)} of it "
                         f"cached by torch); probe step {_gb(self.step_bytes)}, allowances "
                         f"{_gb(sum(self.allowance.values()))}{f' ({parts})' if parts else ''}; "
                         f"planned {_gb(self.needed)} of {_gb(self.headroom * self.free)} "
                         f"({self.headroom:.0%} of free)")  # fmt: skip
        if self.sizes:
            tried = ", ".join(f"{b}x{d}: {'out of memory' if p is None else _gb(p)}" for b, d, p in self.sizes["tried"])
            how = "from probe steps" if self.sizes.get("fits", True) else "kept: no probed size fits"
            how += " for the workers path" if self.sizes.get("without_cache") else ""
            lines.append(f"  3-D batch_size {self.sizes['batch_size']}, patch_depth {self.sizes['patch_depth']} "
                         f"{how} (batch x depth: {tried})")  # fmt: skip
        return "\n".join(lines)


def decide_feed(
    asked: str,
    *,
    has_cache: bool,
    train_bytes: int,
    val_bytes: int = 0,
    memory: GpuMemory | None = None,
    step_bytes: int | None = None,
    allowance: dict[str, int] | None = None,
    headroom: float = HEADROOM,
    device_augment: bool = True,
    sizes: dict[str, Any] | None = None,
) -> FeedPlan:
    """The plan of a run from its numbers (bytes); see the module docstring.

    Args:
        asked: ``TrainConfig.data_path``.
        has_cache: the run has a cache (the device path copies it).
        train_bytes, val_bytes: the device path's copies of the training and validation slices.
        memory: the GPU's memory seen, ``None`` off CUDA.
        step_bytes: peak of the probe step (``None`` on a GPU: it ran out of memory).
        allowance: :func:`allowances`.
        device_augment: the device augmentation honours the run's ``augment_kwargs``.
        sizes: 3-D sizes chosen by probe steps, recorded with the plan (``without_cache``:
            chosen for the workers path, none fitting beside the training slices; the
            reason says so).

    ``workers`` is kept; ``device`` is kept, its slices resident where they fit and in
    host memory where they do not; ``auto`` takes the device path only on a GPU,
    with a cache and an augmentation it can run, when the training slices, the probe
    step and the allowances fit in ``headroom`` of the free memory (the validation
    slices then resident too where they also fit), and the workers otherwise. On a GPU
    the reason also says when the step alone does not fit, whatever the path.
    """
    allowance = dict(allowance or {})
    sized = ("3-D sizes chosen for the workers path: none fits beside the "
             f"{_gb(train_bytes)} of training slices") if sizes and sizes.get("without_cache") else ""  # fmt: skip
    plan = {"asked": asked, "train_bytes": int(train_bytes), "val_bytes": int(val_bytes), "allowance": allowance,
            "headroom": headroom, "step_bytes": step_bytes, "sizes": sizes}  # fmt: skip
    room, short = 0.0, ""  # bytes left beside the step and allowances; why there are none
    if memory is not None:
        plan.update(gpu=memory.name, free=memory.free, total=memory.total, cached=memory.cached)
        if step_bytes is None:
            room, short = -1.0, "the probe step ran out of memory: lower batch_size (or img_size)"
        else:
            room = headroom * memory.free - step_bytes - sum(allowance.values())
            short = "" if room >= 0 else "the step and its allowances alone exceed the plannable memory: lower batch_size"
    if asked == "workers" or (asked == "auto" and (not has_cache or not device_augment)):
        why = ("asked" if asked == "workers" else "no cache to copy (cache='none')" if not has_cache
               else "augment_kwargs the device augmentation cannot honour")  # fmt: skip
        return FeedPlan("workers", reason="; ".join(filter(None, (why, short, sized))), **plan)
    if memory is None:
        if asked == "auto":
            return FeedPlan("workers", reason="no GPU; nothing probed", **plan)
        return FeedPlan("device", train_resident=True, val_resident=True,
                        reason="asked; no GPU: host memory is the device's", **plan)  # fmt: skip
    train_fits = 0 <= train_bytes <= room
    val_fits = train_fits and train_bytes + val_bytes <= room
    if asked == "auto" and not train_fits:
        why = short or f"the training slices do not fit beside the step ({_gb(train_bytes)} > {_gb(room)} left)"
        return FeedPlan("workers", reason="; ".join(filter(None, (why, sized))), **plan)
    if train_fits:
        why = "fits" if val_fits or not val_bytes else "the training slices fit, the validation slices do not"
    else:
        why = short or f"asked; the slices do not fit beside the step ({_gb(train_bytes)} > {_gb(room)} left)"
    return FeedPlan("device", train_resident=train_fits, val_resident=val_fits,
                    reason="; ".join(filter(None, (why, sized))), **plan)  # fmt: skip


def choose_size(
    candidates: Sequence[tuple[int, int]],
    peak_of: Callable[[int, int], int | None],
    budget: Callable[[int, int], float],
) -> tuple[tuple[int, int] | None, list[list[Any]]]:
    """The first ``(batch_size, patch_depth)`` of ``candidates`` whose probe step fits.

    Args:
        candidates: tried in order (the preferred first, e.g. :data:`SIZES_3D`).
        peak_of: the probe: peak bytes of one step at ``(batch, depth)``, ``None`` when it
            ran out of memory.
        budget: the bytes a step at ``(batch, depth)`` may take (the plannable memory less
            the allowances at that size).

    Returns:
        ``(chosen or None, tried)``: ``tried`` lists ``[batch, depth, peak or None]`` of
        each candidate probed, in order (probing stops at the first that fits).
    """
    tried: list[list[Any]] = []
    for batch, depth in candidates:
        peak = peak_of(batch, depth)
        tried.append([int(batch), int(depth), None if peak is None else int(peak)])
        if peak is not None and peak <= budget(batch, depth):
            return (int(batch), int(depth)), tried
    return None, tried
