"""The 2.5D training augmentation in batches on the device (kornia + torch), the
counterpart of the albumentations pipeline of :func:`gi_utils.data.augment.build_transforms`.

Same transforms, order, probabilities and ranges, parameters drawn per sample from one
``torch.Generator`` (the caller seeds it per batch, e.g. from ``(seed, epoch, step)``),
masks moved by nearest neighbour and never dropped out. The mapping from the
albumentations names and arguments (:data:`GPU_ARGS`; ``augment_kwargs`` keeps them):

* ``HorizontalFlip(p)``: ``torch.flip`` of the last axis (exact).
* ``Affine(scale, translate_percent, rotate, p)`` (a number is a fixed value, a pair a
  range, as in albumentations; the per-axis dicts are not taken): scale drawn per axis (albumentations'
  ``keep_ratio=False``), shift per axis as a fraction of the side truncated to whole
  pixels (as albumentations does), rotation in degrees, about the image centre; the matrix is kornia's ``get_affine_matrix2d``. Only a constant
  zero border (``border_mode=BORDER_CONSTANT``, ``fill=0``, ``fill_mask=0``) is supported.
* ``GridDistortion(num_steps, distort_limit, p)``: the same separable grid, built as
  albumentations builds it (``num_steps`` cells per axis, each stretched by
  ``1 + U(-limit, limit)``, normalised to the side, a ``linspace`` per cell), linear
  between whole pixels where elastic distortion moves a coordinate off them.
* ``ElasticTransform(alpha, sigma, approximate, p)``: a Gaussian noise field per axis,
  divided by its largest magnitude, blurred by kornia's separable Gaussian (17x17 when
  ``approximate``, as albumentations; replicated borders) and multiplied by ``alpha`` pixels.
* ``RandomBrightnessContrast(brightness_limit, contrast_limit, p)`` (a number ``v`` is
  ``(-v, v)``, as for ``distort_limit``):
  ``clip(x * (1 + c) + b, 0, 1)``, ``c``, ``b`` uniform in the limits.
* ``CoarseDropout(num_holes_range, hole_height_range, hole_width_range, fill, p)``:
  rectangles set to ``fill`` on the image only (pixel sizes, or fractions of the side).

Differences, by design: the three geometric steps are composed into one sampling grid
and resampled once (albumentations resamples three times, so the device images are a
little sharper), and a coordinate that grid or elastic distortion moves off the image is
clamped to its edge (albumentations reflects); borders uncovered by the affine step are
zero in both.

No step waits for the device: every parameter is drawn for the whole batch (the noise
fields of the elastic step too, whether a sample takes it or not: a fixed number of draws
per batch), every step is computed for every sample and kept where the sample takes it
(``torch.where``, never a boolean mask, whose count the host would have to read), and the
blur's kernel is made once per device. On a GPU the next batch is queued while this one
still runs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from kornia.filters import filter2d_separable, get_gaussian_kernel1d
from kornia.geometry.transform import get_affine_matrix2d

from gi_utils.data.augment import default_train_specs

__all__ = ["GPU_ARGS", "GpuAugment"]

#: Arguments of each albumentations transform the device pipeline honours.
GPU_ARGS: dict[str, tuple[str, ...]] = {
    "HorizontalFlip": ("p",),
    "Affine": ("scale", "translate_percent", "rotate", "border_mode", "fill", "fill_mask", "p"),
    "GridDistortion": ("num_steps", "distort_limit", "p"),
    "ElasticTransform": ("alpha", "sigma", "approximate", "p"),
    "RandomBrightnessContrast": ("brightness_limit", "contrast_limit", "p"),
    "CoarseDropout": ("num_holes_range", "hole_height_range", "hole_width_range", "fill", "p"),
}


def _range(value: Any, around: float | None = 0.0, name: str = "") -> tuple[float, float]:
    """An albumentations range: a pair, or a number ``v`` meaning ``(around - v, around + v)``
    (``around=None``: the fixed value ``(v, v)``, as ``Affine`` reads a number)."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return float(value[0]), float(value[1])
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),) * 2 if around is None else (around - float(value), around + float(value))
    raise ValueError(f"{name}={value!r}: the device pipeline takes a number or a (low, high) pair")


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=gen.device)


def _randint(gen: torch.Generator, n: int, lo: torch.Tensor | int, hi: torch.Tensor | int) -> torch.Tensor:
    """Integers uniform in ``[lo, hi]`` (both inclusive, per element)."""
    u = torch.rand(n, generator=gen, device=gen.device)
    return (lo + torch.floor(u * (hi - lo + 1))).long()


class GpuAugment:
    """The training augmentation on a batch already on the device.

    Args:
        img_size: S (hole sizes of the dropout scale with it, as on the worker path).
        overrides: ``TrainConfig.augment_kwargs``: per-transform updates with the
            albumentations names (``{"Affine": {"p": 0.0}}``).

    Raises:
        KeyError: a transform name not in the pipeline (the valid names listed).
        ValueError: an argument with no device equivalent, or a border other than zeros
            (the transform and argument named).
    """

    def __init__(self, img_size: int, overrides: dict[str, dict[str, Any]] | None = None) -> None:
        specs = dict(default_train_specs(img_size))
        for name, given in (overrides or {}).items():
            if name not in specs:
                raise KeyError(f"override for unknown transform {name!r}; valid names: {list(specs)}")
            specs[name] = {**specs[name], **given}
        for name, kwargs in specs.items():
            wrong = [k for k in kwargs if k not in GPU_ARGS[name]]
            if wrong:
                raise ValueError(f"{name}: argument(s) {wrong} have no device equivalent; it takes {GPU_ARGS[name]}")
        aff = specs["Affine"]
        if aff.get("border_mode", 0) != 0 or aff.get("fill", 0) != 0 or aff.get("fill_mask", 0) != 0:
            raise ValueError("Affine: the device pipeline supports only border_mode=BORDER_CONSTANT with fill=0, "
                             "fill_mask=0")  # fmt: skip
        self.size = int(img_size)
        self.p = {name: float(kwargs.get("p", 0.5)) for name, kwargs in specs.items()}
        self.scale = _range(aff["scale"], None, "Affine: scale")
        self.translate = _range(aff["translate_percent"], None, "Affine: translate_percent")
        self.rotate = _range(aff["rotate"], None, "Affine: rotate")
        grid = specs["GridDistortion"]
        self.num_steps = int(grid["num_steps"])
        self.distort = _range(grid["distort_limit"], 0.0, "GridDistortion: distort_limit")
        el = specs["ElasticTransform"]
        self.alpha, self.sigma = float(el["alpha"]), float(el["sigma"])
        k = 17 if el.get("approximate", False) else 2 * math.ceil(4 * self.sigma) + 1
        self.kernel = min(k, 2 * (self.size // 2) - 1)
        self._blur: dict[torch.device, torch.Tensor] = {}  # the blur's (1, kernel) taps, per device
        bc = specs["RandomBrightnessContrast"]
        self.brightness = _range(bc["brightness_limit"], 0.0, "RandomBrightnessContrast: brightness_limit")
        self.contrast = _range(bc["contrast_limit"], 0.0, "RandomBrightnessContrast: contrast_limit")
        drop = specs["CoarseDropout"]
        self.holes = tuple(int(v) for v in drop["num_holes_range"])
        self.hole_h = self._pixels(drop["hole_height_range"])
        self.hole_w = self._pixels(drop["hole_width_range"])
        self.fill = drop.get("fill", 0)
        if not isinstance(self.fill, (int, float)) or isinstance(self.fill, bool):
            raise ValueError(f"CoarseDropout: fill={self.fill!r}: the device pipeline fills holes with a number")
        self.fill = float(self.fill)

    def _pixels(self, rng: Any) -> tuple[int, int]:
        lo, hi = rng
        if isinstance(lo, float) and lo <= 1 and isinstance(hi, float) and hi <= 1:
            return max(1, int(lo * self.size)), max(1, int(hi * self.size))
        return int(lo), int(hi)

    # ---------------------------------------------------------------- parameters
    def draw(self, n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Per-sample parameters of a batch of ``n``, always drawn in the same order and number.

        Returns:
            ``{"flip", "affine", "grid", "elastic", "bc", "dropout"}`` bool (n,) (applied);
            ``scale`` (n, 2), ``translate`` (n, 2) (fractions of S), ``rotate`` (n,) degrees;
            ``grid_steps`` (n, 2, num_steps + 1); ``contrast``, ``brightness`` (n,);
            ``n_holes`` (n,) and ``holes`` (n, max_holes, 4) as (y, x, h, w) pixels;
            ``noise`` (n, 2, S, S) the elastic step's fields (x, y), drawn last.
        """
        s, p = self.size, self.p
        out = {name: torch.rand(n, generator=gen, device=gen.device) < p[key]
               for name, key in (("flip", "HorizontalFlip"), ("affine", "Affine"), ("grid", "GridDistortion"),
                                 ("elastic", "ElasticTransform"), ("bc", "RandomBrightnessContrast"),
                                 ("dropout", "CoarseDropout"))}  # fmt: skip
        out["scale"] = torch.stack([_uniform(gen, n, *self.scale), _uniform(gen, n, *self.scale)], 1)
        shift = torch.stack([_uniform(gen, n, *self.translate), _uniform(gen, n, *self.translate)], 1)
        out["translate"] = torch.trunc(shift * s) / s  # whole pixels, toward zero, as albumentations
        out["rotate"] = _uniform(gen, n, *self.rotate)
        k = self.num_steps + 1
        out["grid_steps"] = 1 + _uniform(gen, n * 2 * k, *self.distort).reshape(n, 2, k)
        out["contrast"] = 1 + _uniform(gen, n, *self.contrast)
        out["brightness"] = _uniform(gen, n, *self.brightness)
        m = self.holes[1]
        out["n_holes"] = _randint(gen, n, *self.holes)
        h = _randint(gen, n * m, *self.hole_h).reshape(n, m)
        w = _randint(gen, n * m, *self.hole_w).reshape(n, m)
        y = _randint(gen, n * m, 0, (s - h).clamp(min=0).flatten()).reshape(n, m)
        x = _randint(gen, n * m, 0, (s - w).clamp(min=0).flatten()).reshape(n, m)
        out["holes"] = torch.stack([y, x, h, w], -1)
        out["noise"] = torch.randn(n, 2, s, s, generator=gen, device=gen.device)
        return out

    # ---------------------------------------------------------------- geometry
    def _grid_table(self, steps: torch.Tensor) -> torch.Tensor:
        """Grid distortion along one axis as albumentations builds it: ``steps`` (m, k + 1)
        stretch factors -> (m, S) source coordinate of each pixel (the last step scaled to
        the last cell, the steps normalised to the side, each cell a ``linspace``)."""
        s, k = self.size, self.num_steps
        cell = s // k
        steps = steps.clone()
        steps[:, -1] *= (min(s, (k + 1) * cell) - k * cell) / cell
        steps = steps * ((s / math.floor(s / k)) / steps.sum(1, keepdim=True))
        i = torch.arange(s, device=steps.device)
        idx = torch.clamp(i // cell, max=k)
        start = idx * cell
        n = torch.clamp(start + cell, max=s) - start
        frac = (i - start) / torch.clamp(n - 1, min=1)
        inc = cell * steps  # (m, k + 1)
        prev = inc.cumsum(1) - inc
        return prev[:, idx] + frac * inc[:, idx]

    def _grid_map(self, u: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """The table of :meth:`_grid_table` at pixel coordinates ``u`` (m, S, S), linear
        between pixels (exact at whole pixels, where albumentations evaluates it)."""
        s = self.size
        table = self._grid_table(steps)
        flat = u.reshape(len(u), -1).clamp(0, s - 1)
        lo = flat.floor().long()
        hi = torch.clamp(lo + 1, max=s - 1)
        w = flat - lo
        return (table.gather(1, lo) * (1 - w) + table.gather(1, hi) * w).reshape(u.shape)

    def _blurred(self, noise: torch.Tensor) -> torch.Tensor:
        """Gaussian blur of (n, 2, S, S) fields, replicated borders (the taps made once per device)."""
        taps = self._blur.get(noise.device)
        if taps is None:
            taps = get_gaussian_kernel1d(self.kernel, self.sigma, device=noise.device, dtype=noise.dtype)
            self._blur[noise.device] = taps
        return filter2d_separable(noise, taps, taps, "replicate")

    def _sampling_grid(self, prm: dict[str, torch.Tensor]) -> torch.Tensor:
        """(n, S, S, 2) normalised source coordinates: elastic, then grid, then affine, each
        computed for every sample and kept where the sample takes it."""
        n, s, dev = len(prm["flip"]), self.size, prm["rotate"].device
        ys, xs = torch.meshgrid(torch.arange(s, device=dev, dtype=torch.float32),
                                torch.arange(s, device=dev, dtype=torch.float32), indexing="ij")  # fmt: skip
        x, y = xs.expand(n, s, s), ys.expand(n, s, s)
        noise = prm["noise"]
        noise = noise / noise.flatten(1).abs().amax(1).clamp(min=1e-6)[:, None, None, None]
        d = self._blurred(noise) * self.alpha
        el = prm["elastic"][:, None, None]
        x, y = torch.where(el, x + d[:, 0], x).clamp(0, s - 1), torch.where(el, y + d[:, 1], y).clamp(0, s - 1)
        g = prm["grid"][:, None, None]
        gx, gy = self._grid_map(x, prm["grid_steps"][:, 0]), self._grid_map(y, prm["grid_steps"][:, 1])
        x, y = torch.where(g, gx, x).clamp(0, s - 1), torch.where(g, gy, y).clamp(0, s - 1)
        c = torch.full((n, 2), (s - 1) / 2, device=dev)
        fwd = get_affine_matrix2d(prm["translate"] * s, c, prm["scale"], prm["rotate"])
        inv = torch.linalg.inv_ex(fwd).inverse[:, :2]  # output -> source (inv_ex: no check read back)
        src = torch.einsum("mij,mhwj->mhwi", inv, torch.stack([x, y, torch.ones_like(x)], -1))  # (n, S, S, 2)
        a = prm["affine"][:, None, None]
        x, y = torch.where(a, src[..., 0], x), torch.where(a, src[..., 1], y)
        return torch.stack([(2 * x + 1) / s - 1, (2 * y + 1) / s - 1], -1)

    # ---------------------------------------------------------------- apply
    def __call__(
        self, images: torch.Tensor, packed: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Augment one batch.

        Args:
            images: float32 (N, C, S, S) in [0, 1].
            packed: uint8 (N, S, S) packed masks (bit c = class c).
            gen: the batch's generator, on the images' device.

        Returns:
            ``(images, packed, params)``: new tensors (the inputs are not changed) and
            the parameters :meth:`draw` drew.
        """
        prm = self.draw(len(images), gen)
        f = prm["flip"]
        images = torch.where(f[:, None, None, None], images.flip(-1), images)
        packed = torch.where(f[:, None, None], packed.flip(-1), packed)
        geo = prm["affine"] | prm["grid"] | prm["elastic"]
        grid = self._sampling_grid(prm)
        warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        images = torch.where(geo[:, None, None, None], warped, images)
        moved = F.grid_sample(packed[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        packed = torch.where(geo[:, None, None], moved[:, 0].round().to(torch.uint8), packed)
        adj = (images * prm["contrast"][:, None, None, None] + prm["brightness"][:, None, None, None]).clamp(0, 1)
        images = torch.where(prm["bc"][:, None, None, None], adj, images)
        s, dev, hl = self.size, images.device, prm["holes"]  # (n, H, 4)
        active = torch.arange(hl.shape[1], device=dev)[None] < prm["n_holes"][:, None]
        r = torch.arange(s, device=dev)
        rows = (r[None, None] >= hl[..., :1]) & (r[None, None] < hl[..., :1] + hl[..., 2:3])  # (n, H, S)
        cols = (r[None, None] >= hl[..., 1:2]) & (r[None, None] < hl[..., 1:2] + hl[..., 3:4])
        hole = ((rows & active[..., None])[..., :, None] & cols[..., None, :]).any(1)  # (n, S, S)
        images = torch.where((hole & prm["dropout"][:, None, None])[:, None], self.fill, images)
        return images, packed, prm
