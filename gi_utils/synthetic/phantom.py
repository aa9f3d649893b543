"""Phantom of an abdominal MRI scan: geometry, label map and image of every slice.

:func:`render_scan` turns one :class:`~gi_utils.synthetic.spec.ScanSpec` into arrays;
:mod:`gi_utils.synthetic.generate` writes them in the Kaggle layout.

Each scan is a 3-D phantom of an abdominal MRI: a body outline (superellipse with a
subcutaneous fat layer), spine, muscles, kidneys and liver as unlabelled distractors, and
the three labelled organs, coherent across slices:

- **stomach**: a smooth bright sac, upper left of the image, in the upper slices;
- **large bowel**: a thick tube along the body edge with haustra (bright wall, dark
  mottled lumen): two side limbs low down that join over the top (transverse colon);
- **small bowel**: a central cluster of small loops (bright wall, mid-grey lumen).

Organ intensities overlap the background tissue; texture, shape and position tell them
apart. Slice numbers grow towards the head; organs occupy a middle range of slices, so
about half of all slices carry no label, as in the real data. A smooth multiplicative
bias field, Rician-like noise and a per-scan intensity range (max 1000..30000) are
applied. Masks are taken from the very label map that is drawn, so they line up exactly.

Everything is deterministic in the spec (its ``seed``, case and day): the same spec
renders identical arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from gi_utils.constants import CLASSES
from gi_utils.synthetic.spec import ScanSpec

__all__ = ["render_scan", "render_label_map"]

# Labels of the drawn map, and the class (index + 1 into CLASSES, 0 = none) of each.
(AIR, FAT, TISSUE, MUSCLE, BONE, MARROW, KIDNEY, LIVER,
 LB_WALL, LB_LUMEN, SB_WALL, SB_LUMEN, ST_WALL, ST_LUMEN) = range(14)  # fmt: skip
_CLASS_LUT = np.zeros(256, np.uint8)
for _labels, _cls in (((LB_WALL, LB_LUMEN), "large_bowel"), ((SB_WALL, SB_LUMEN), "small_bowel"),
                      ((ST_WALL, ST_LUMEN), "stomach")):  # fmt: skip
    _CLASS_LUT[list(_labels)] = CLASSES.index(_cls) + 1
# Per label: base intensity, amplitude of fine (mottled) texture, of smooth texture.
_TONES = np.array(
    [[0.015, 0.0, 0.0], [0.78, 0.02, 0.06], [0.42, 0.04, 0.12], [0.26, 0.03, 0.04],
     [0.10, 0.02, 0.0], [0.50, 0.05, 0.0], [0.58, 0.03, 0.03], [0.48, 0.02, 0.05],
     [0.70, 0.04, 0.0], [0.22, 0.14, 0.0], [0.80, 0.03, 0.0], [0.52, 0.05, 0.0],
     [0.50, 0.02, 0.0], [0.88, 0.015, 0.02]], np.float32,
)  # fmt: skip


# --------------------------------------------------------------------------- drawing
_SHIFT = 4  # cv2 sub-pixel bits
_ONE = 1 << _SHIFT


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x * _ONE)), int(round(y * _ONE))


def _ellipse(lab: np.ndarray, x: float, y: float, a: float, b: float, angle: float, value: int):
    """Fill a rotated ellipse (centre x, y; semi-axes a, b in pixels) with ``value``."""
    if a >= 0.5 and b >= 0.5:
        cv2.ellipse(lab, _pt(x, y), _pt(a, b), angle, 0, 360, value, -1, cv2.LINE_8, _SHIFT)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Gaussian-ish random field (float32, std 1) with features ~``scale`` pixels."""
    h, w = shape
    small = rng.standard_normal((int(h / scale) + 3, int(w / scale) + 3)).astype(np.float32)
    field = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return (field - field.mean()) / (field.std() + 1e-6)


class _Frame(NamedTuple):
    """Body centre and half-axes (pixels) of one slice."""

    cx: float
    cy: float
    ax: float
    ay: float


@dataclass
class _Phantom:
    """Geometry of one scan, in pixels; z is the slice position in [0, 1] (up = head)."""

    cx: float
    cy: float
    ax: float
    ay: float
    power: float
    fat: float
    body_phase: float
    lb: tuple[float, float]
    sb: tuple[float, float]
    st: tuple[float, float]
    kidney: tuple[float, float]
    lb_param: dict
    st_param: dict
    loops: np.ndarray  # (n, 11): zc hz ox oy vx vy a b angle spin wall


def _sample_phantom(spec: ScanSpec) -> _Phantom:
    crng = np.random.default_rng([spec.seed, spec.case, 0])  # the patient
    rng = np.random.default_rng([spec.seed, spec.case, spec.day, 1])  # this day
    ax = min(crng.uniform(135, 180) / spec.spacing, 0.45 * spec.width)
    ay = min(ax * crng.uniform(0.68, 0.84), 0.42 * spec.height)
    lb = (rng.uniform(0.18, 0.24), rng.uniform(0.60, 0.66))
    sb = (lb[0] + rng.uniform(0.02, 0.06), rng.uniform(0.50, 0.56))
    radius = crng.uniform(0.11, 0.14) * ax
    meet = rng.uniform(0.50, 0.60)
    lb_param = dict(
        r=radius, wall=max(2.0, 0.2 * radius), haustra=rng.uniform(0.12, 0.22),
        wavelength=rng.uniform(2.0, 2.8) * radius, phase=rng.uniform(0, 2 * np.pi),
        kx=crng.uniform(0.72, 0.76), ky=crng.uniform(0.66, 0.72), w0=rng.uniform(5, 9),
        meet=meet, joined=meet + rng.uniform(0.12, 0.18), shrink=rng.uniform(0.85, 0.90),
        rectum_dx=rng.uniform(-0.1, 0.1),
    )  # fmt: skip
    st_param = dict(
        a=0.36 * crng.uniform(0.85, 1.1) * rng.uniform(0.85, 1.15),
        b=0.32 * crng.uniform(0.85, 1.1) * rng.uniform(0.85, 1.15),
        dx=rng.uniform(-0.05, 0.05), dy=rng.uniform(-0.04, 0.04), angle=rng.uniform(10, 35),
    )  # fmt: skip
    n = int(rng.integers(20, 28))
    edges = np.linspace(sb[0], sb[1], n + 1)
    zc = rng.uniform(edges[:-1], edges[1:])
    r, t = np.sqrt(rng.uniform(0, 1, n)), rng.uniform(0, 2 * np.pi, n)
    centre = (rng.uniform(-0.08, 0.12), rng.uniform(-0.05, 0.12))
    speed, heading = rng.uniform(0.3, 0.8, n), rng.uniform(0, 2 * np.pi, n)
    a = rng.uniform(0.09, 0.13, n) * ax
    loops = np.stack(
        [zc, rng.uniform(0.05, 0.09, n),
         (centre[0] + 0.46 * r * np.cos(t)) * ax, (centre[1] + 0.42 * r * np.sin(t)) * ay,
         speed * np.cos(heading) * ax, speed * np.sin(heading) * ax,
         a, a * rng.uniform(0.55, 1.0, n), rng.uniform(0, 180, n), rng.uniform(-300, 300, n),
         np.maximum(1.6, rng.uniform(0.18, 0.26, n) * a)], axis=1,
    )[rng.permutation(n)]  # fmt: skip
    return _Phantom(
        cx=spec.width / 2 + rng.normal(0, 0.015 * spec.width),
        cy=spec.height / 2 + rng.normal(0, 0.015 * spec.height),
        ax=ax, ay=ay, power=crng.uniform(2.1, 2.8), fat=crng.uniform(6, 15) / spec.spacing,
        body_phase=crng.uniform(0, 1), lb=lb, sb=sb,
        st=(rng.uniform(0.44, 0.50), rng.uniform(0.66, 0.72)),
        kidney=(rng.uniform(0.40, 0.45), rng.uniform(0.62, 0.68)),
        lb_param=lb_param, st_param=st_param, loops=loops,
    )  # fmt: skip


def _unit(z: float, span: tuple[float, float]) -> float | None:
    """Position of z inside ``span`` in [0, 1], None outside."""
    u = (z - span[0]) / (span[1] - span[0])
    return u if 0.0 <= u <= 1.0 else None


def _draw_body(lab: np.ndarray, p: _Phantom, z: float, f: _Frame) -> None:
    cx, cy, ax, ay = f
    t = np.linspace(0, 2 * np.pi, 120, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    ex = np.sign(c) * np.abs(c) ** (2 / p.power)
    ey = np.sign(s) * np.abs(s) ** (2 / p.power) * np.where(s > 0, 0.94, 1.0)  # flatter back
    for half_w, half_h, value in ((ax, ay, FAT), (ax - p.fat, ay - p.fat, TISSUE)):
        pts = np.stack([cx + half_w * ex, cy + half_h * ey], axis=1) * _ONE
        cv2.fillPoly(lab, [np.round(pts).astype(np.int32)], value, cv2.LINE_8, _SHIFT)
    for side in (-1, 1):  # paraspinal muscles, psoas low down, kidneys mid-way
        _ellipse(lab, cx + side * 0.2 * ax, cy + 0.76 * ay, 0.15 * ax, 0.12 * ay, 0, MUSCLE)
        if z < 0.5:
            grow = 0.6 + (0.5 - z)
            x, a, b = cx + side * 0.25 * ax, 0.08 * ax * grow, 0.09 * ay * grow
            _ellipse(lab, x, cy + 0.42 * ay, a, b, 0, MUSCLE)
        u = _unit(z, p.kidney)
        if u is not None:
            k = math.sin(math.pi * u) ** 0.5
            x, a, b = cx + side * 0.45 * ax, 0.12 * ax * k, 0.19 * ay * k
            _ellipse(lab, x, cy + 0.4 * ay, a, b, side * 20, KIDNEY)
    rv = 0.13 * ax
    _ellipse(lab, cx, cy + 0.58 * ay, rv, rv, 0, BONE)
    _ellipse(lab, cx, cy + 0.58 * ay, rv - 2.5, rv - 2.5, 0, MARROW)
    if z > 0.5:  # liver, patient's right = image right
        k = min(1.0, (z - 0.5) / 0.15) ** 0.5
        _ellipse(lab, cx + 0.38 * ax, cy - 0.12 * ay, 0.45 * ax * k, 0.55 * ay * k, -15, LIVER)


def _lb_arcs(u: float, q: dict) -> list[tuple[float, float, float]]:
    """Large-bowel arcs at u: (from, to) in degrees (0 = image right, 90 = top), radius factor.

    Going up: the right limb (caecum, ascending colon) grows in at u = 0.15, the left limb
    (descending colon) takes over from the sigmoid at u = 0.18; both extend over the top
    until they join (transverse colon), then the arc withdraws to the left (splenic) end.
    """
    w0 = q["w0"]
    if u <= q["meet"]:
        arcs = [(-w0, w0, min(1.0, (u - 0.15) / 0.05) ** 0.5)] if u >= 0.15 else []
        return arcs + ([(180 - w0, 180 + w0, 1.0)] if u >= 0.18 else [])
    if u < q["joined"]:
        e = w0 + (90 - w0) * (u - q["meet"]) / (q["joined"] - q["meet"])
        return [(-w0, e, 1.0), (180 - e, 180 + w0, 1.0)]
    lo = -w0 + (130 + w0) * max(0.0, u - q["shrink"]) / (1 - q["shrink"])
    return [(lo, 180 + w0, 1.0)]


def _draw_large_bowel(lab: np.ndarray, p: _Phantom, u: float, f: _Frame) -> None:
    cx, cy, ax, ay = f
    q = p.lb_param
    r0 = q["r"] * max(min(1.0, u / 0.03, (1 - u) / 0.04) ** 0.5, 0.5)
    xs, ys, rs = [], [], []

    def tube(x: np.ndarray, y: np.ndarray, s: np.ndarray, r: float) -> None:
        # s: arc length from a fixed origin, so the haustra stay put from slice to slice
        xs.append(x)
        ys.append(y)
        wave = np.sin(2 * np.pi * (s / q["wavelength"] + 6 * u) + q["phase"])
        rs.append(r * (1 + q["haustra"] * wave))

    rect = np.array([cx + q["rectum_dx"] * ax, cy + 0.3 * ay])
    left = np.array([cx - q["kx"] * ax * (1 + 0.04 * math.sin(q["phase"])), cy])
    if u < 0.18:  # rectum
        tube(rect[:1], rect[1:], np.zeros(1), 0.9 * r0)
    if 0.06 <= u < 0.28:  # sigmoid: grows from the rectum to the left limb, then withdraws into it
        length = float(np.hypot(*(left - rect)))
        n = max(2, int(length / 1.5))
        s = np.linspace(max(0.0, (u - 0.18) / 0.1), min(1.0, (u - 0.06) / 0.12), n)
        tube(rect[0] + s * (left[0] - rect[0]), rect[1] + s * (left[1] - rect[1]), s * length, r0)
    mean_r = 0.5 * (q["kx"] * ax + q["ky"] * ay)
    for lo, hi, grow in _lb_arcs(u, q):
        phi = np.radians(np.linspace(lo, hi, max(2, int(math.radians(hi - lo) * mean_r / 1.5))))
        wobble = 1 + 0.04 * np.sin(2 * phi + q["phase"])
        tube(cx + q["kx"] * ax * wobble * np.cos(phi), cy - q["ky"] * ay * wobble * np.sin(phi),
             phi * mean_r, r0 * max(grow, 0.3))  # fmt: skip
    if not xs:
        return
    x, y, r = (np.concatenate(v).tolist() for v in (xs, ys, rs))
    for value, inset in ((LB_WALL, 0.0), (LB_LUMEN, q["wall"])):
        for xi, yi, ri in zip(x, y, r, strict=True):
            if ri - inset >= 0.5:
                radius = int(round((ri - inset) * _ONE))
                cv2.circle(lab, _pt(xi, yi), radius, value, -1, cv2.LINE_8, _SHIFT)


def _draw_small_bowel(lab: np.ndarray, p: _Phantom, z: float, f: _Frame, scale: float) -> None:
    cx, cy = f.cx, f.cy
    zc, hz, ox, oy, vx, vy, a, b, ang, spin, wall = p.loops.T
    d = (z - zc) / hz
    for i in np.flatnonzero(np.abs(d) < 1):
        k = (1 - d[i] ** 4) ** 0.5
        x = cx + scale * (ox[i] + vx[i] * (z - zc[i]))
        y = cy + scale * (oy[i] + vy[i] * (z - zc[i]))
        angle = ang[i] + spin[i] * (z - zc[i])
        _ellipse(lab, x, y, a[i] * k * scale, b[i] * k * scale, angle, SB_WALL)
        _ellipse(lab, x, y, a[i] * k * scale - wall[i], b[i] * k * scale - wall[i], angle, SB_LUMEN)


def _draw_stomach(lab: np.ndarray, p: _Phantom, u: float, f: _Frame) -> None:
    cx, cy, ax, ay = f
    q = p.st_param
    k = max(0.3, math.sin(math.pi * u**1.36) ** 0.7)  # widest in the upper part (fundus)
    x = cx + (q["dx"] - 0.42 + 0.2 * (1 - u)) * ax
    y = cy + (q["dy"] - 0.25 - 0.08 * (1 - u)) * ay
    angle = q["angle"] + 25 * (1 - u)
    parts = [(x, y, q["a"] * ax * k, q["b"] * ay * k, angle)]
    if u < 0.45:  # antrum, reaching towards the midline
        m = max(0.3, math.sin(math.pi * u / 0.45) ** 0.5)
        parts.append((x + 0.28 * ax, y + 0.06 * ay, 0.2 * ax * m, 0.09 * ay * m, -10.0))
    wall = max(1.6, 0.015 * ax)
    for value, inset in ((ST_WALL, 0.0), (ST_LUMEN, wall)):
        for px, py, a, b, ang in parts:
            _ellipse(lab, px, py, a - inset, b - inset, ang, value)


def _draw_slice(lab: np.ndarray, p: _Phantom, z: float) -> None:
    """Draw the label map of slice position z (0 = feet end, 1 = head end) into lab."""
    scale = 1 + 0.035 * math.sin(2 * math.pi * (1.1 * z + p.body_phase)) + 0.04 * (z - 0.5)
    f = _Frame(p.cx, p.cy, p.ax * scale, p.ay * scale)
    lab.fill(AIR)
    _draw_body(lab, p, z, f)
    body = lab != AIR
    u = _unit(z, p.lb)
    if u is not None:
        _draw_large_bowel(lab, p, u, f)
    if _unit(z, p.sb) is not None:
        _draw_small_bowel(lab, p, z, f, scale)
    u = _unit(z, p.st)
    if u is not None:
        _draw_stomach(lab, p, u, f)
    lab *= body  # nothing outside the body outline


def render_label_map(spec: ScanSpec) -> tuple[np.ndarray, np.ndarray]:
    """Image uint16 (D, H, W) and class map uint8 (D, H, W) (0 = none, c + 1 = CLASSES[c])."""
    p = _sample_phantom(spec)
    rng = np.random.default_rng([spec.seed, spec.case, spec.day, 2])
    d, h, w = spec.n_slices, spec.height, spec.width
    tones = _TONES * np.exp(rng.normal(0, 0.05, (len(_TONES), 1))).astype(np.float32)
    tones[:, 1:] = _TONES[:, 1:]
    luts = [np.zeros(256, np.float32) for _ in range(3)]
    for j, lut in enumerate(luts):
        lut[: len(tones)] = tones[:, j]
    drift = d // 2 + 2
    fine = _smooth_noise(rng, (h + drift, w + drift), 3.0)
    coarse = _smooth_noise(rng, (h + drift, w + drift), 40.0)
    image = np.empty((d, h, w), np.float32)
    classes = np.empty((d, h, w), np.uint8)
    lab = np.empty((h, w), np.uint8)
    for k in range(d):
        _draw_slice(lab, p, (k + 0.5) / d)
        classes[k] = cv2.LUT(lab, _CLASS_LUT)
        o = k // 2
        img = cv2.LUT(lab, luts[0])
        img += cv2.LUT(lab, luts[1]) * fine[o : o + h, o : o + w]
        img += cv2.LUT(lab, luts[2]) * coarse[o : o + h, o : o + w]
        image[k] = cv2.GaussianBlur(img, (3, 3), 0.6)
    # Smooth multiplicative bias field: in-plane quadratic times a slow drift along z.
    yy, xx = np.mgrid[-1 : 1 : h * 1j, -1 : 1 : w * 1j].astype(np.float32)
    c = rng.normal(0, 0.12, 5).astype(np.float32)
    bias = np.exp(c[0] * xx + c[1] * yy + c[2] * xx * xx + c[3] * yy * yy + c[4] * xx * yy)
    zs = (np.arange(d, dtype=np.float32) + 0.5) / d
    bz = 1 + 0.08 * np.sin(2 * np.pi * (0.8 * zs + rng.uniform())).astype(np.float32)
    image *= bias[None] * bz[:, None, None]
    sigma = np.float32(rng.uniform(0.02, 0.035))
    image += rng.standard_normal(image.shape, dtype=np.float32) * sigma
    np.abs(image, out=image)  # magnitude image: Rician-like background
    image *= np.float32(math.exp(rng.uniform(math.log(1000), math.log(30000))) / 1.1)
    image += 0.5
    np.minimum(image, 65535, out=image)
    return image.astype(np.uint16), classes


def render_scan(spec: ScanSpec) -> tuple[np.ndarray, np.ndarray]:
    """Render one scan exactly as :func:`gi_utils.synthetic.generate.generate_dataset` writes it.

    Returns:
        ``(image, masks)``: uint16 (D, H, W) and bool (D, H, W, 3) in CLASSES order, the
        arrays that ``gi_utils.data.read_volume`` / ``read_volume_mask`` read back.
    """
    image, classes = render_label_map(spec)
    return image, classes[..., None] == np.arange(1, len(CLASSES) + 1, dtype=np.uint8)
