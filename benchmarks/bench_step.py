"""One training step (forward, loss, backward, AdamW) of the demo's models on this machine:
full precision in the default layout, the reference, against ``TrainConfig``'s defaults,
the mixed precision ``amp="auto"`` picks for this device plus channels-last
(``channels_last_3d`` for a 3-D model).

Each model gets the batch of its ``demo`` preset (:func:`gi_utils.training.preset_config`):
the 2.5D ones 16 stacks of 3 slices at 128x128, the 3-D ones 2 patches of ``patch_depth``
slices, 1 channel. Same model (weights copied), same batch, best of 3 runs of ``STEPS``
steps after a warm-up. Prints ms/step for each architecture and the ratios.
Target: report (the gain depends on the CPU: bf16 is used only where it is native).

Run: ``.venv/bin/python benchmarks/bench_step.py [--smoke]`` (``--smoke``: 32 px, batches
of 2, 3-D patches of 8 slices, one step without warm-up).
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch
from _common import best_of, parse_args, peak_rss_mb, result

from gi_utils.device import resolve_amp
from gi_utils.models import build_model
from gi_utils.training import ARCH_PRESETS, TrainConfig, preset_config


def step_time(model: torch.nn.Module, cfg: TrainConfig, amp: str, channels_last: bool, steps: int,
              repeat: int, warmup: bool = True) -> float:  # fmt: skip
    """Seconds per training step of a copy of ``model`` on a random batch shaped as ``cfg``'s
    (the best of ``repeat`` runs of ``steps`` steps, after a warm-up run when ``warmup``)."""
    layout = cfg.spec.memory_format if channels_last else torch.contiguous_format
    model = copy.deepcopy(model).to(memory_format=layout).train()
    gen = torch.Generator().manual_seed(0)
    depth = (cfg.patch_depth,) if cfg.spec.is_3d else ()
    shape = (cfg.batch_size, *depth, cfg.img_size, cfg.img_size)
    x = torch.randn(shape[0], cfg.in_channels, *shape[1:], generator=gen).contiguous(memory_format=layout)
    y = (torch.rand(shape[0], 3, *shape[1:], generator=gen) > 0.8).float()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def run() -> None:
        for _ in range(steps):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
                logits = model(x)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    if warmup:
        run()  # oneDNN picks its kernels
    return best_of(run, repeat) / steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=4, help="steps per timed run")
    p.add_argument("--repeat", type=int, default=3, help="timed runs (the fastest counts)")
    p.add_argument("--no-warmup", dest="warmup", action="store_false", help="time the first run too")
    for name in ("img_size", "batch_size", "patch_depth"):
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=None, help="default: the preset's")
    args = parse_args(p, argv, {"steps": 1, "repeat": 1, "warmup": False, "img_size": 32, "batch_size": 2,
                                "patch_depth": 8})  # fmt: skip
    torch.manual_seed(0)
    amp = resolve_amp("auto", cuda=False)
    sizes = {k: v for k in ("img_size", "batch_size", "patch_depth") if (v := getattr(args, k)) is not None}
    print(f"{torch.get_num_threads()} threads; amp='auto' -> {amp!r}")
    ratios = {}
    for arch in ARCH_PRESETS["demo"]:
        cfg = preset_config("demo", arch=arch, weights=None, **sizes)  # the preset, then the sizes given
        model = build_model(cfg.arch, cfg.encoder, cfg.in_channels, 3, weights=None, **cfg.build_kwargs)
        ref = step_time(model, cfg, "no", False, args.steps, args.repeat, args.warmup)
        fast = step_time(model, cfg, amp, True, args.steps, args.repeat, args.warmup)
        ratios[arch] = ref / fast
        depth = f"{cfg.patch_depth} x " if cfg.spec.is_3d else ""
        print(f"  {arch}, batch {cfg.batch_size} x {cfg.in_channels} x {depth}{cfg.img_size} x {cfg.img_size}: "
              f"fp32 {ref * 1e3:.0f} ms/step, {amp} channels-last {fast * 1e3:.0f} ms/step "
              f"({ref / fast:.2f}x; peak RSS {peak_rss_mb():.0f} MiB)", flush=True)  # fmt: skip
    for arch, r in ratios.items():
        result(f"step_speedup_{arch}", r, "x", "report")
    return 0


if __name__ == "__main__":
    sys.exit(main())
