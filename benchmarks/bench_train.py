"""Overhead of gi_utils.training's loop over a bare PyTorch loop.

Both loops train the same model (UNet/ResNet-18, 128x128, batch 8, 3 input channels)
with AdamW and the same loss on the same in-memory batches, so the difference is the
loop itself: accelerate's wrappers, gradient-accumulation context, scheduler step,
loss read-back and non-finite check, progress bar (enabled) and the update of the weight
average after every step (``ema_decay`` is on by default). Rounds alternate
bare/loop and the fastest round of each counts, which damps noise from other processes.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import time  # noqa: E402

import _common  # noqa: E402,F401 - sets the offline environment variables first
import torch  # noqa: E402
from _common import peak_rss_mb, result  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from timm.utils import ModelEmaV3  # noqa: E402

from gi_utils.losses import build_loss
from gi_utils.models import build_model
from gi_utils.training import WarmupCosine, train_one_epoch

STEPS, BATCH, SIZE, ROUNDS = 12, 8, 128, 3


def make_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (
            torch.rand(BATCH, 3, SIZE, SIZE, generator=g),
            (torch.rand(BATCH, 3, SIZE, SIZE, generator=g) > 0.8).float(),
        )
        for _ in range(STEPS)
    ]


def bare_loop(model, optimizer, loss_fn, batches) -> float:
    model.train()
    for images, masks in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), masks)
        loss.backward()
        optimizer.step()
    return float(loss)


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    batches = make_batches()
    loss_fn = build_loss("bce_dice")

    bare_model = build_model("unet", "resnet18")
    bare_opt = torch.optim.AdamW(bare_model.parameters(), lr=1e-3)

    acc = Accelerator(cpu=True)
    net = build_model("unet", "resnet18")
    net.load_state_dict(bare_model.state_dict())
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    model, opt = acc.prepare(net, opt)
    sched = torch.optim.lr_scheduler.LambdaLR(opt.optimizer, WarmupCosine(2, 10 * STEPS))
    ema = ModelEmaV3(net, decay=0.99, use_warmup=True)

    def on_step(loss_sum: float, n_batches: int) -> None:  # what train() does after a step
        ema.update(net, step=int(sched.last_epoch))

    bare_loop(bare_model, bare_opt, loss_fn, batches[:2])  # warm-up (allocator, kernels)
    train_one_epoch(acc, model, batches[:2], opt, sched, loss_fn, progress=False)
    bare_t, loop_t = [], []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        bare_loop(bare_model, bare_opt, loss_fn, batches)
        bare_t.append((time.perf_counter() - t0) / STEPS)
        t0 = time.perf_counter()
        train_one_epoch(acc, model, batches, opt, sched, loss_fn, progress=True, desc="bench",
                        on_step=on_step)
        loop_t.append((time.perf_counter() - t0) / STEPS)
    bare, loop = min(bare_t), min(loop_t)
    print(f"bare PyTorch loop: {bare:.4f} s/step (rounds: {', '.join(f'{t:.4f}' for t in bare_t)})")
    print(
        f"gi_utils.training loop: {loop:.4f} s/step (rounds: {', '.join(f'{t:.4f}' for t in loop_t)})"
    )
    print(
        f"model unet/resnet18, batch {BATCH}, {SIZE}x{SIZE}, {STEPS} steps x {ROUNDS} rounds, 1 thread, CPU"
    )
    print(f"peak RSS: {peak_rss_mb():.0f} MiB")
    result("train_loop_overhead", round(100.0 * (loop / bare - 1.0), 1), "%", "<= 10 %")


if __name__ == "__main__":
    main()
