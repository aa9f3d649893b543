"""One training step (forward, loss, backward, AdamW) of the demo's models on this machine:
full precision in NCHW, the reference, against ``TrainConfig``'s defaults, the mixed
precision ``amp="auto"`` picks for this device plus ``channels_last``.

Same model (weights copied), same batch of 16 at 128x128 with 3 channels, best of 3 runs
of ``STEPS`` steps after a warm-up. Prints ms/step for each architecture and the ratios.
Target: report (the gain depends on the CPU: bf16 is used only where it is native).
"""

from __future__ import annotations

import copy

import torch
from _common import best_of, peak_rss_mb, result

from gi_utils.device import resolve_amp
from gi_utils.models import build_model
from gi_utils.training import ARCH_PRESETS

STEPS, BATCH, SIZE = 4, 16, 128


def step_time(model: torch.nn.Module, amp: str, channels_last: bool) -> float:
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = copy.deepcopy(model).to(memory_format=layout).train()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=gen).contiguous(memory_format=layout)
    y = (torch.rand(BATCH, 3, SIZE, SIZE, generator=gen) > 0.8).float()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def steps() -> None:
        for _ in range(STEPS):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
                logits = model(x)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    steps()  # warm-up: oneDNN picks its kernels
    return best_of(steps, 3) / STEPS


def main() -> None:
    torch.manual_seed(0)
    amp = resolve_amp("auto", cuda=False)
    print(f"batch {BATCH} x 3 x {SIZE} x {SIZE}, {torch.get_num_threads()} threads; amp='auto' -> {amp!r}")
    ratios = []
    for arch, settings in ARCH_PRESETS["demo"].items():
        model = build_model(arch, "resnet18", 3, 3, weights=None, **settings.get("model_kwargs", {}))
        ref = step_time(model, "no", False)
        fast = step_time(model, amp, True)
        ratios.append(ref / fast)
        print(f"  {arch}: fp32 NCHW {ref * 1e3:.0f} ms/step, {amp} channels_last {fast * 1e3:.0f} ms/step "
              f"({ref / fast:.2f}x; peak RSS {peak_rss_mb():.0f} MiB)", flush=True)
    for arch, r in zip(ARCH_PRESETS["demo"], ratios):
        result(f"step_speedup_{arch}", r, "x", "report")


if __name__ == "__main__":
    main()
