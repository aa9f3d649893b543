"""Benchmark: 04_submission's prediction against a slice-by-slice loop like the public
notebooks', on the same synthetic test scans and the same model.

* ours: :func:`gi_utils.inference.make_submission` (whole scans: one PNG read per slice,
  batched 2.5D stacks), without and with flip TTA;
* reference: for each slice, read its 3 PNGs (i-2, i, i+2), preprocess, predict the
  slice alone, resize back, threshold, encode -- the public notebooks' loop (with our
  per-scan normalisation, so both produce the same masks: checked);
* mixed precision: our prediction under bf16 autocast and channels-last against full
  precision: the share of pixels whose mask changes and the Dice between them.

Run: ``.venv/bin/python benchmarks/bench_infer.py [--scans 4] [--size 256] [--smoke]``
(``--smoke``: one test scan of 16 slices at 64 px, a check that it runs).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import parse_args, peak_rss_mb, result  # noqa: E402

from gi_utils.constants import CLASSES  # noqa: E402
from gi_utils.data import (  # noqa: E402
    build_metadata,
    encode_rle,
    intensity_clip,
    iter_volumes,
    preprocess_slice,
    preprocess_volume,
    read_image,
    read_volume,
    restore_size,
)
from gi_utils.inference import (  # noqa: E402
    PostProcess,
    load_models,
    make_submission,
    predict_probs,
    predict_volume,
    stack_slices,
)
from gi_utils.models import build_model, model_config, save_model  # noqa: E402
from gi_utils.synthetic import generate_dataset  # noqa: E402

OFFSETS = (-2, 0, 2)


def reference_loop(model, meta, size: int, post: PostProcess, device: str | torch.device = "cpu") -> list[tuple[str, str, str]]:
    """Slice by slice: 3 PNG reads, one forward pass (on ``device``, where ``model`` is),
    resize, threshold, encode."""
    rows = []
    for _, scan in iter_volumes(meta):
        hi = intensity_clip(read_volume(scan))  # the per-scan clip (our normalisation)
        paths, hw = scan["path"].tolist(), (int(scan["height"].iloc[0]), int(scan["width"].iloc[0]))
        for i, sid in enumerate(scan["id"]):
            idx = [min(max(i + o, 0), len(paths) - 1) for o in OFFSETS]
            x = np.stack([preprocess_slice(read_image(paths[k], hw), size, hi) for k in idx]).astype(np.float32)
            with torch.no_grad():
                p = model(torch.from_numpy(x[None]).to(device)).sigmoid()[0].float().cpu().numpy()
            probs = restore_size(np.moveaxis(p, 0, -1)[None], hw)
            masks = post.apply(probs)[0]
            rows += [(sid, c, encode_rle(masks[..., k])) for k, c in enumerate(CLASSES)]
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scans", type=int, default=4)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--slices", type=int, default=80, help="slices per scan")
    args = parse_args(p, argv, {"scans": 1, "size": 64, "slices": 16})
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        data = generate_dataset(Path(tmp) / "data", 1, args.scans // 2 or 1, seed=3, slices_per_scan=args.slices)
        model = build_model("unet", "resnet18").eval()
        path = save_model(Path(tmp) / "m" / "best.safetensors", model,
                          model_config("unet", "resnet18", img_size=args.size, slice_offsets=list(OFFSETS)))  # fmt: skip
        meta = build_metadata(data, "test", labels=False)
        post = PostProcess(size_ref=args.size)
        n = len(meta)
        print(f"{n} test slices in {meta['case_day'].nunique()} scans, UNet/ResNet18 at {args.size} px, CPU")
        t0 = time.perf_counter()
        ours = make_submission([path], data, "test", None, post=post, progress=False, device="cpu", batch_size=4)
        t_ours = time.perf_counter() - t0
        fast_kw = {"amp": "bf16", "channels_last": True, "batch_size": 4, "progress": False, "device": "cpu"}
        t0 = time.perf_counter()
        fast = make_submission([path], data, "test", None, post=post, **fast_kw)
        t_fast = time.perf_counter() - t0
        t0 = time.perf_counter()
        make_submission([path], data, "test", None, post=post, tta=True, **fast_kw)
        t_tta = time.perf_counter() - t0
        (m, config), = load_models([path], "cpu")
        t0 = time.perf_counter()
        ref = reference_loop(m, meta, args.size, post)
        t_ref = time.perf_counter() - t0
        same = list(map(tuple, ours.itertuples(index=False))) == ref
        agree = float(np.mean(ours["predicted"].to_numpy() == fast["predicted"].to_numpy()))
        print(f"  ours, full precision: {n / t_ours:.1f} slices/s (same masks as the loop: {same}); "
              f"bf16 + channels-last: {n / t_fast:.1f} ({agree:.1%} of the RLE rows identical); with flip TTA: "
              f"{n / t_tta:.1f}; reference loop: {n / t_ref:.1f} (peak RSS {peak_rss_mb():.0f} MiB)")
        # mixed precision and channels-last against full precision, probabilities and masks
        changed, dice = [], []
        for _, scan in iter_volumes(meta):
            vol = read_volume(scan)
            full, _ = predict_volume([(m, config)], vol)
            m_cl = m.to(memory_format=torch.channels_last)
            x = stack_slices(preprocess_volume(vol, args.size), OFFSETS)
            low, _ = predict_probs(m_cl, x, amp="bf16", device="cpu")
            low = restore_size(np.moveaxis(low, 1, -1), vol.shape[1:])
            a, b = post.apply(full), post.apply(low)
            changed.append((a != b).mean())
            inter, total = (a & b).sum(), a.sum() + b.sum()
            dice.append(2 * inter / total if total else 1.0)
            m = m.to(memory_format=torch.contiguous_format)
        print(f"  bf16 + channels-last vs full precision: {np.mean(changed):.2e} of the pixels change, mask Dice "
              f"{np.min(dice):.5f} (worst scan)")
    result("infer_speedup_vs_slice_loop_fp32", t_ref / t_ours, "x", "report: same masks; the forward pass dominates on a CPU")
    result("infer_speedup_vs_slice_loop_bf16", t_ref / t_fast, "x", ">= 3x")
    result("infer_speedup_vs_slice_loop_bf16_tta", t_ref / t_tta, "x", "report (TTA does twice the work)")
    result("infer_bf16_changed_pixels", float(np.mean(changed)), "", "report (tolerance of mixed precision)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
