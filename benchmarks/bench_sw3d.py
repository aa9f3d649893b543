"""Benchmark: sliding-window inference of a 3-D model over one full-size scan on the CPU.

A scan of the competition's most common size, 144 slices of 266x266 (uint16, random
values: the cost does not depend on them), predicted by :func:`gi_utils.inference.predict_volume`
as ``04_submission`` does: per-scan normalisation, in-plane resize to the model's size,
MONAI sliding windows along the slice axis (Gaussian blending), probabilities back to
266x266. Random SegResNet weights (MONAI's, ``init_filters`` as the demo preset).
Reported: slices/s without and with flip TTA, the peak resident memory, and the same scan
with the windows' sum kept on the model's device instead of the CPU (the two must agree).

Run: ``.venv/bin/python benchmarks/bench_sw3d.py [--size 160] [--depth 32] [--filters 8]
[--scan 144x266x266] [--smoke]``
(``--smoke``: a scan of 16x64x64 at 32 px, windows of 8 slices: a check that it runs).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import parse_args, peak_rss_mb, result, shape  # noqa: E402

from gi_utils.inference import SlidingWindow, predict_volume  # noqa: E402
from gi_utils.models import build_model, model_config  # noqa: E402

SCAN = (144, 266, 266)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=160, help="model in-plane size (1st place: 160)")
    parser.add_argument("--depth", type=int, default=32, help="slices per window")
    parser.add_argument("--filters", type=int, default=8, help="SegResNet init_filters")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--scan", type=shape, default=SCAN, help="slices x height x width")
    args = parse_args(parser, argv, {"scan": (16, 64, 64), "size": 32, "depth": 8})
    scan = args.scan
    torch.manual_seed(0)
    kwargs = {"init_filters": args.filters}
    model = build_model("segresnet3d", in_channels=1, classes=3, **kwargs).eval()
    config = model_config("segresnet3d", "resnet18", 1, 3, model_kwargs=kwargs, img_size=args.size,
                          slice_offsets=[0], resize_mode="resize", patch_depth=args.depth,
                          sw_overlap=args.overlap)  # fmt: skip
    vol = np.random.default_rng(0).integers(0, 4000, scan, dtype=np.uint16)
    print(f"scan {scan}, model {args.size} px, windows of {args.depth} slices, overlap {args.overlap}, "
          f"SegResNet init_filters {args.filters}, {torch.get_num_threads()} threads", flush=True)  # fmt: skip
    rss0 = peak_rss_mb()
    figures = {}
    for name, tta in (("no_tta", False), ("hflip_tta", True)):
        predict_volume([(model, config)], vol[: args.depth], tta=tta)  # warm-up
        t0 = time.perf_counter()
        probs, _ = predict_volume([(model, config)], vol, tta=tta)
        figures[name] = scan[0] / (time.perf_counter() - t0)
        print(f"  {name}: {figures[name]:.2f} slices/s (peak RSS {peak_rss_mb():.0f} MiB)", flush=True)
    on_device, _ = predict_volume([(model, config)], vol, sliding=SlidingWindow(args.overlap, device=None))
    base, _ = predict_volume([(model, config)], vol)
    diff = float(np.abs(on_device - base).max())
    assert probs.shape == (*scan, 3)
    where = f"reported: one {'x'.join(map(str, scan))} scan on this CPU"
    result("sw3d_slices_per_s", figures["no_tta"], "slices/s", where)
    result("sw3d_slices_per_s_tta", figures["hflip_tta"], "slices/s", "about half of no TTA")
    result("sw3d_peak_rss", peak_rss_mb(), "MiB", f"bounded: the scan's probabilities, not the dataset "
           f"(started at {rss0:.0f} MiB)")  # fmt: skip
    result("sw3d_device_vs_cpu_sum", diff, "max |p| difference", "< 1e-5")
    return 0 if diff < 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
