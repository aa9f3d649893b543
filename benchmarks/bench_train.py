"""Overhead of gi_utils.training's loop over a bare PyTorch loop.

Both loops train the same model (UNet/ResNet-18, 128x128, batch 8, 3 input channels)
with AdamW and the same loss on the same in-memory batches, so the difference is the
loop itself: accelerate's wrappers, gradient-accumulation context, scheduler step,
loss read-back and non-finite check, progress bar (enabled) and the update of the weight
average after every step (``ema_decay`` is on by default). Rounds alternate
bare/loop and the fastest round of each counts, which damps noise from other processes.
Run: ``.venv/bin/python benchmarks/bench_train.py [--steps 12] [--batch 8] [--size 128] [--rounds 3] [--smoke]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import argparse  # noqa: E402
import time  # noqa: E402

import _common  # noqa: E402,F401 - sets the offline environment variables first
import torch  # noqa: E402
from _common import parse_args, peak_rss_mb, result  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from timm.utils import ModelEmaV3  # noqa: E402

from gi_utils.losses import build_loss
from gi_utils.models import build_model
from gi_utils.training import WarmupCosine, train_one_epoch


def make_batches(steps: int, batch: int, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (
            torch.rand(batch, 3, size, size, generator=g),
            (torch.rand(batch, 3, size, size, generator=g) > 0.8).float(),
        )
        for _ in range(steps)
    ]


def bare_loop(model, optimizer, loss_fn, batches) -> float:
    model.train()
    for images, masks in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), masks)
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=12, help="steps per round")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3, help="rounds of each loop (the fastest counts)")
    args = parse_args(p, argv, {"steps": 2, "batch": 2, "size": 64, "rounds": 1})
    steps, batch, size, rounds = args.steps, args.batch, args.size, args.rounds
    torch.set_num_threads(1)
    torch.manual_seed(0)
    batches = make_batches(steps, batch, size)
    loss_fn = build_loss("bce_dice")

    bare_model = build_model("unet", "resnet18")
    bare_opt = torch.optim.AdamW(bare_model.parameters(), lr=1e-3)

    acc = Accelerator(cpu=True)
    net = build_model("unet", "resnet18")
    net.load_state_dict(bare_model.state_dict())
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    model, opt = acc.prepare(net, opt)
    sched = torch.optim.lr_scheduler.LambdaLR(opt.optimizer, WarmupCosine(2, 10 * steps))
    ema = ModelEmaV3(net, decay=0.99, use_warmup=True)

    def on_step(tally, n_batches: int) -> None:  # what train() does after a step
        ema.update(net, step=int(sched.last_epoch))

    bare_loop(bare_model, bare_opt, loss_fn, batches[:2])  # warm-up (allocator, kernels)
    train_one_epoch(acc, model, batches[:2], opt, sched, loss_fn, progress=False)
    bare_t, loop_t = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        bare_loop(bare_model, bare_opt, loss_fn, batches)
        bare_t.append((time.perf_counter() - t0) / steps)
        t0 = time.perf_counter()
        train_one_epoch(acc, model, batches, opt, sched, loss_fn, progress=True, desc="bench",
                        on_step=on_step)
        loop_t.append((time.perf_counter() - t0) / steps)
    bare, loop = min(bare_t), min(loop_t)
    print(f"bare PyTorch loop: {bare:.4f} s/step (rounds: {', '.join(f'{t:.4f}' for t in bare_t)})")
    print(
        f"gi_utils.training loop: {loop:.4f} s/step (rounds: {', '.join(f'{t:.4f}' for t in loop_t)})"
    )
    print(
        f"model unet/resnet18, batch {batch}, {size}x{size}, {steps} steps x {rounds} rounds, 1 thread, CPU"
    )
    print(f"peak RSS: {peak_rss_mb():.0f} MiB")
    result("train_loop_overhead", round(100.0 * (loop / bare - 1.0), 1), "%", "<= 10 %")


if __name__ == "__main__":
    main()
