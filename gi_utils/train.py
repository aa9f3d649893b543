"""Train one segmentation model on one fold: ``train(TrainConfig(...)) -> history``.

A plain PyTorch loop; Hugging Face ``accelerate`` supplies the device, mixed precision,
gradient accumulation and multi-process data parallelism, so the same code runs on a
laptop CPU, one Kaggle GPU, or ``accelerate launch -m gi_utils.train ...`` / torchrun.

Per epoch: AdamW steps under a warm-up + cosine schedule (with an exponential moving
average of the weights when ``ema_decay`` > 0), then validation on whole volumes
(:func:`gi_utils.validation.validate`): per-slice predictions are gathered from all
processes, put back into per-case-day volumes at model resolution and scored once with
:func:`gi_utils.metrics.competition_score`.

Files in ``out_dir`` (only the main process writes; every write is atomic):

* ``config.json`` -- the :class:`TrainConfig`;
* ``last.pt`` -- everything needed to resume (model, optimizer, scheduler, scaler,
  weight average, epoch, step, best score, history, RNG states), safe types only (loads with
  ``weights_only=True``); written after every epoch and every ``save_every_steps``;
* ``best.safetensors`` + ``best.json`` -- the model of the best validation score (the
  exponential moving average of the weights when ``ema_decay`` > 0: what is validated), with
  the config :func:`gi_utils.models.load_model` and inference need;
* ``history.csv`` -- one row per epoch; ``metrics.json`` -- the best and final figures.

Resuming: calling :func:`train` again with the same config continues from ``last.pt``
and ends with the same numbers as an uninterrupted run (bit-identical on CPU). The data
order of an epoch depends only on ``(seed, epoch)`` and each sample's augmentation only
on ``(seed, epoch, sample)``, not on workers, processes or where the run stopped.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from timm.utils import ModelEmaV3

from gi_utils.checkpoint import (
    atomic_write_json,
    atomic_write_text,
    load_state,
    remove_stale_temps,
    rng_state,
    save_state,
    set_rng_state,
)
from gi_utils.constants import CLASSES
from gi_utils.distributed import effective_batch_size, effective_lr
from gi_utils.models import (
    build_model,
    model_config,
    save_model,
)
from gi_utils.progress import progress_bar
from gi_utils.train_config import (  # noqa: F401  (re-exported: gi_utils.train.TrainConfig)
    AMP_MODES,
    CACHE_MODES,
    DEVICES,
    TrainConfig,
    config_parser,
    parse_args,
    resolve_amp,
)
from gi_utils.train_data import (  # noqa: F401  (re-exported for tests and tools)
    PACK_BITS,
    EpochSampler,
    SeededSamples,
    TrainData,
    load_train_data,
    unpack_volume,
)
from gi_utils.validation import sync_buffers, validate

__all__ = ["TrainConfig", "NonFiniteLossError", "train", "train_one_epoch", "validate", "WarmupCosine", "main"]

#: Config fields that may differ between a run and its resumption (they do not change
#: the numbers, only where files live and how fast they are read).
RESUME_FREE_FIELDS = frozenset(
    {"out_dir", "data_dir", "num_workers", "cache", "cache_dir", "progress", "resume",
     "save_every_steps", "patience"}
)  # fmt: skip


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the last checkpoint on disk is kept."""


class WarmupCosine:
    """LR factor: linear warm-up from 0 over ``warmup`` steps, then cosine to ``floor``.

    A callable object (not a lambda) so ``LambdaLR.state_dict()`` stores it as plain ints.
    """

    def __init__(self, warmup: int, total: int, floor: float = 0.01) -> None:
        self.warmup, self.total, self.floor = int(warmup), max(int(total), 1), float(floor)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * t))


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; with ``deterministic``, cuDNN picks fixed kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


# --------------------------------------------------------------------------- the loop
def train_one_epoch(
    acc: Accelerator,
    model: torch.nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    loss_fn: torch.nn.Module,
    *,
    desc: str = "train",
    progress: bool = True,
    loss_sum: float = 0.0,
    n_batches: int = 0,
    on_step=None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> tuple[float, int]:
    """One pass over ``loader``: forward, loss, backward, optimizer and scheduler step.

    Args:
        acc: the Accelerator the model, optimizer and loader were prepared with.
        loader: yields ``(image (N, C, S, S), mask (N, 3, S, S))`` batches.
        loss_sum, n_batches: running totals when resuming in the middle of an epoch.
        on_step: called as ``on_step(loss_sum, n_batches)`` after every optimizer step.
        memory_format: layout the images are put in (``torch.channels_last`` to match a
            channels-last model).

    Returns:
        ``(loss_sum, n_batches)``; the epoch's mean loss is their ratio.

    Raises:
        NonFiniteLossError: a batch gave a NaN or infinite loss.
    """
    model.train()
    bar = progress_bar(loader, desc, progress, leave=False)
    for images, masks in bar:
        images = images.contiguous(memory_format=memory_format)
        with acc.accumulate(model):
            logits = model(images)
            loss = loss_fn(logits.float(), masks)
            acc.backward(loss)
            optimizer.step()
            if acc.sync_gradients:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        value = loss.detach()
        if acc.num_processes > 1:  # all ranks see the same value, so all stop together
            value = acc.reduce(value, "mean")
        value = float(value)
        if not math.isfinite(value):
            raise NonFiniteLossError(f"{desc}: loss is {value} at batch {n_batches + 1}")
        loss_sum, n_batches = loss_sum + value, n_batches + 1
        if progress:
            bar.set_postfix(loss=f"{loss_sum / n_batches:.4f}", refresh=False)
        if on_step is not None and acc.sync_gradients:
            on_step(loss_sum, n_batches)
    return loss_sum, n_batches


# --------------------------------------------------------------------------- train()
def train(config: TrainConfig | dict[str, Any]) -> pd.DataFrame:
    """Train ``config.arch`` on fold ``config.fold``; resume from ``last.pt`` if present.

    Returns:
        The history, one row per epoch: ``epoch, step, lr, train_loss, val_loss,
        val_dice, val_hausdorff, val_score, dice_<class>..., epoch_time_s``.

    Raises:
        ValueError: an invalid config value (named), or a ``last.pt`` of another config.
        NonFiniteLossError: the loss became NaN/inf (the last good checkpoint is kept).
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    out_dir = Path(cfg.out_dir)
    acc = _accelerator(cfg)
    seed_everything(cfg.seed, cfg.deterministic)
    last_path = out_dir / "last.pt"
    state = None
    if cfg.resume and last_path.is_file():
        state = load_state(last_path)
        _check_resumable(cfg, state["config"], last_path)
        if state.get("finished"):
            acc.print(f"{last_path}: run already finished; returning its history", flush=True)
            return pd.DataFrame(state["history"])
        if state.get("num_processes", acc.num_processes) != acc.num_processes:
            raise ValueError(
                f"{last_path} was written by {state['num_processes']} process(es), this run has "
                f"{acc.num_processes}: resume with the same number (data order and schedule "
                "depend on it), or pass resume=False to start over"
            )
    if acc.is_main_process:
        remove_stale_temps(out_dir)  # left by a run killed while writing a file
        atomic_write_json(out_dir / "config.json", cfg.to_dict())

    with acc.main_process_first():
        data = load_train_data(cfg, acc.num_processes)
    net = build_model(cfg.arch, cfg.encoder, len(cfg.slice_offsets), len(CLASSES),
                      weights=None if state else cfg.weights, **cfg.model_kwargs)  # fmt: skip
    lr = effective_lr(cfg.lr, acc.num_processes, cfg.grad_accum, cfg.scale_lr)
    if acc.num_processes * cfg.grad_accum > 1:
        acc.print(f"effective batch {effective_batch_size(cfg.batch_size, acc.num_processes, cfg.grad_accum)} "
                  f"({cfg.batch_size} x {acc.num_processes} processes x grad_accum {cfg.grad_accum}); "
                  f"peak lr {lr:.3g} (scale_lr={cfg.scale_lr})", flush=True)  # fmt: skip
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    net = net.to(memory_format=layout)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    loss_fn = _build_loss(cfg)
    model = torch.compile(net) if cfg.compile else net
    model, optimizer, train_loader, val_loader = acc.prepare(
        model, optimizer, data.train_loader, data.val_loader
    )
    batches_per_epoch = len(train_loader)  # per process
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
    schedule = WarmupCosine(
        round(cfg.warmup_epochs * steps_per_epoch), cfg.epochs * steps_per_epoch
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer.optimizer, schedule)
    ema = (ModelEmaV3(net, decay=cfg.ema_decay, use_warmup=True, device=acc.device)
           if cfg.ema_decay else None)  # fmt: skip
    scored = ema.module if ema is not None else model  # the weights validated and kept

    run = {"epoch": 0, "loss_sum": 0.0, "n_batches": 0, "best_score": -math.inf, "best_epoch": -1,
           "bad_epochs": 0, "history": []}  # fmt: skip
    if state is not None:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if acc.scaler is not None and state.get("scaler"):
            acc.scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        acc.step = int(state["accelerator_step"])
        run.update({k: state[k] for k in run})
        set_rng_state(state["rng"])
        acc.print(
            f"resuming {last_path} at epoch {run['epoch'] + 1}, batch {run['n_batches']}",
            flush=True,
        )

    def checkpoint(finished: bool = False) -> None:
        if acc.is_main_process:
            save_state(last_path, {
                **run, "config": cfg.to_dict(), "finished": finished, "model": net.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
                "ema": ema.state_dict() if ema is not None else None,
                "accelerator_step": int(acc.step), "rng": rng_state(), "num_processes": acc.num_processes,
            })  # fmt: skip
            where = (f"epoch {run['epoch'] + 1}, batch {run['n_batches']}" if run["n_batches"]
                     else f"end of epoch {run['epoch']}")  # fmt: skip
            print(f"saved checkpoint {last_path} ({where})", flush=True)
        acc.wait_for_everyone()

    def on_step(loss_sum: float, n_batches: int) -> None:
        run.update(loss_sum=loss_sum, n_batches=n_batches)
        if ema is not None:
            ema.update(net, step=int(scheduler.last_epoch))
        opt_steps = math.ceil(n_batches / cfg.grad_accum)
        if (
            cfg.save_every_steps
            and opt_steps % cfg.save_every_steps == 0
            and n_batches < batches_per_epoch
        ):
            checkpoint()

    t_start = time.perf_counter()
    stopped_early = False
    while run["epoch"] < cfg.epochs:
        epoch, t0 = run["epoch"], time.perf_counter()
        train_loader.set_epoch(epoch)  # accelerate's loader passes it on to the sampler
        # resuming in the middle of an epoch: leave out the batches already trained on
        data.sampler.skip = run["n_batches"] * cfg.batch_size * acc.num_processes
        desc = f"epoch {epoch + 1}/{cfg.epochs}"
        try:
            loss_sum, n = train_one_epoch(acc, model, train_loader, optimizer, scheduler, loss_fn, desc=desc,
                                          progress=cfg.progress, loss_sum=run["loss_sum"],
                                          n_batches=run["n_batches"], on_step=on_step,
                                          memory_format=layout)  # fmt: skip
        except NonFiniteLossError as err:
            raise NonFiniteLossError(
                f"{err}; training stopped, last good checkpoint kept: {last_path}"
            ) from None
        row = {"epoch": epoch + 1, "step": int(scheduler.last_epoch), "lr": float(scheduler.get_last_lr()[0]),
               "train_loss": loss_sum / max(n, 1)}  # fmt: skip
        if ema is not None and acc.num_processes > 1:
            sync_buffers(ema.module)
        row.update(validate(acc, scored, val_loader, loss_fn, data, cfg.threshold, cfg.progress,
                            cfg.min_size, layout))  # fmt: skip
        row = broadcast_object_list([row])[0]  # the metrics are computed on the main process
        row["epoch_time_s"] = time.perf_counter() - t0
        score = row["val_score"]
        improved = math.isfinite(score) and score > run["best_score"]
        if improved:
            run.update(best_score=score, best_epoch=epoch + 1, bad_epochs=0)
            if acc.is_main_process:
                best = ema.module if ema is not None else net
                save_model(out_dir / "best.safetensors", best, _model_config(cfg, row))
        else:
            run["bad_epochs"] += 1
        run["history"].append(row)
        run.update(epoch=epoch + 1, loss_sum=0.0, n_batches=0)
        data.sampler.skip = 0
        stopped_early = bool(cfg.patience) and run["bad_epochs"] >= cfg.patience
        done = stopped_early or run["epoch"] >= cfg.epochs
        if acc.is_main_process:
            atomic_write_text(
                out_dir / "history.csv", pd.DataFrame(run["history"]).to_csv(index=False)
            )
            acc.print(_summary(row, cfg.epochs, improved), flush=True)
        checkpoint(finished=done)
        if stopped_early:
            acc.print(
                f"early stop: no improvement for {cfg.patience} epochs (best epoch {run['best_epoch']})",
                flush=True,
            )
            break
    history = pd.DataFrame(run["history"])
    if acc.is_main_process:
        _write_metrics(
            out_dir, run, history, cfg, acc, stopped_early, time.perf_counter() - t_start
        )
    acc.wait_for_everyone()
    return history


def _accelerator(cfg: TrainConfig) -> Accelerator:
    amp = resolve_amp(cfg.amp, cuda=cfg.device != "cpu" and torch.cuda.is_available())
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # accelerate keeps one global state per process; a notebook that trains several
        # models with other amp/device settings needs a fresh one (single process only)
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(
        mixed_precision=amp, gradient_accumulation_steps=cfg.grad_accum, cpu=cfg.device == "cpu"
    )


def _build_loss(cfg: TrainConfig) -> torch.nn.Module:
    from gi_utils.losses import build_loss

    return build_loss(cfg.loss, **cfg.loss_kwargs)


def _check_resumable(cfg: TrainConfig, saved: dict[str, Any], path: Path) -> None:
    now = cfg.to_dict()
    diff = [k for k in now if k not in RESUME_FREE_FIELDS and now[k] != saved.get(k)]
    if diff:
        details = ", ".join(f"{k}: saved {saved.get(k)!r} != now {now[k]!r}" for k in diff)
        raise ValueError(
            f"{path} belongs to another run ({details}); pass resume=False to start over "
            "there, or choose another out_dir"
        )


def _model_config(cfg: TrainConfig, row: dict[str, Any]) -> dict[str, Any]:
    from gi_utils.transforms import NORM_VERSION

    return model_config(
        cfg.arch, cfg.encoder, len(cfg.slice_offsets), len(CLASSES),
        model_kwargs=cfg.model_kwargs, img_size=cfg.img_size, slice_offsets=list(cfg.slice_offsets),
        resize_mode=cfg.resize_mode, threshold=cfg.threshold, min_size=cfg.min_size,
        norm_version=NORM_VERSION,
        epoch=row["epoch"], val_score=row.get("val_score"), val_dice=row.get("val_dice"),
        train_config=cfg.to_dict(),
    )  # fmt: skip


def _summary(row: dict[str, Any], epochs: int, improved: bool) -> str:
    keys = ("train_loss", "val_loss", "val_dice", "val_hausdorff", "val_score")
    figures = " ".join(f"{k} {row[k]:.4f}" for k in keys if k in row)
    return (f"epoch {row['epoch']}/{epochs} {figures} lr {row['lr']:.2e} "
            f"({row['epoch_time_s']:.1f} s){' *best*' if improved else ''}")  # fmt: skip


def _write_metrics(out_dir, run, history, cfg, acc, stopped_early, seconds) -> None:
    best = (
        history.loc[history["epoch"] == run["best_epoch"]].iloc[0].to_dict()
        if run["best_epoch"] > 0
        else {}
    )
    atomic_write_json(out_dir / "metrics.json", {
        "arch": cfg.arch, "encoder": cfg.encoder, "fold": cfg.fold, "best_epoch": run["best_epoch"],
        "best": best, "final": history.iloc[-1].to_dict() if len(history) else {},
        "epochs_run": len(history), "stopped_early": stopped_early, "train_time_s": seconds,
        "device": str(acc.device), "mixed_precision": acc.mixed_precision, "num_processes": acc.num_processes,
        "effective_batch_size": effective_batch_size(cfg.batch_size, acc.num_processes, cfg.grad_accum),
        "peak_lr": effective_lr(cfg.lr, acc.num_processes, cfg.grad_accum, cfg.scale_lr),
    })  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """``python -m gi_utils.train --arch unet --epochs 2 ...`` (every TrainConfig field)."""
    cfg = parse_args(argv)
    history = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(history.to_string(index=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
