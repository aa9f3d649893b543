"""One training run as an object with readable steps: its state on disk, restoring it,
one epoch, validation, saving.

:func:`gi_utils.training.loop.train` drives a :class:`TrainingRun`::

    run = TrainingRun(cfg)           # accelerator, seeds, last.pt read (not yet applied)
    with run.lock():                 # one writer per run folder
        run.setup()                  # data, model, the feed's plan, optimizer, schedule, ...
        run.restore()                # ... and last.pt applied to them
        while not run.done:
            run.end_epoch(run.train_epoch(), run.validate_epoch())
        run.finish()                 # metrics.json

Files in ``out_dir`` (only the main process writes; every write is atomic; their names:
:mod:`gi_utils.models.run_folder`): ``config.json``,
``split.json`` (which case-days train and validate), ``last.pt`` (everything needed to
resume, safe types only), ``best.safetensors`` + ``best.json`` (the weights of the best
validation score: the moving average when ``ema_decay`` > 0), ``oof/`` (the out-of-fold
probabilities of that epoch), ``history.csv`` and ``metrics.json``.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from accelerate.utils import broadcast_object_list
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader

from gi_utils.atomic import atomic_write_json, atomic_write_text, remove_stale_temps, replace_dir
from gi_utils.checkpoint import check_room_for, load_state, rng_state, save_state, set_rng_state
from gi_utils.constants import CLASSES
from gi_utils.data.preprocess import NORM_VERSION
from gi_utils.device import device_name
from gi_utils.inference.postprocessing import PostProcess
from gi_utils.inference.sliding_window import SlidingWindow
from gi_utils.losses import build_loss
from gi_utils.models.io import ModelConfig, model_config, save_model
from gi_utils.models.run_folder import (
    CONFIG_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    MODEL_FILE,
    OOF_DIR,
    OOF_STAGING_DIR,
    SPLIT_FILE,
    STATE_FILE,
    resume_differences,
)
from gi_utils.paths import shown_path
from gi_utils.runlock import run_lock
from gi_utils.training.accelerator import make_accelerator
from gi_utils.training.config import TrainConfig
from gi_utils.training.determinism import seed_everything
from gi_utils.training.feed_plan import FeedPlan
from gi_utils.training.loaders import load_fold_data, load_train_data
from gi_utils.training.probe import plan_feed
from gi_utils.training.run_levers import RunLevers, build_run_model
from gi_utils.training.scaling import effective_batch_size, effective_lr
from gi_utils.training.schedule import WarmupCosine
from gi_utils.training.step import LossTally, NonFiniteLossError, train_one_epoch
from gi_utils.training.tracking import start_trackers, wandb_key
from gi_utils.training.validation import sync_buffers, validate

__all__ = ["TrainingRun"]


def _check_resumable(cfg: TrainConfig, saved: dict[str, Any], path: Path) -> None:
    diff = resume_differences(cfg.to_dict(), saved)
    if diff:
        details = ", ".join(f"{k}: saved {old!r} != now {new!r}" for k, (old, new) in diff.items())
        raise ValueError(
            f"{path} belongs to another run ({details}); pass resume=False to start over "
            "there, or choose another out_dir"
        )


class TrainingRun:
    """The state of one run and its steps (see the module docstring).

    Attributes:
        state: ``epoch, loss_sum, n_batches, best_score, best_epoch, bad_epochs, history``,
            the counters saved in ``last.pt``.
        saved: the ``last.pt`` read at start (``None`` for a new run).
    """

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.out_dir = Path(cfg.out_dir)
        self.last_path = self.out_dir / STATE_FILE
        seed_everything(cfg.seed, cfg.deterministic)  # before CUDA starts (cuBLAS's workspace setting)
        self.acc = make_accelerator(cfg)
        self.state: dict[str, Any] = {"epoch": 0, "loss_sum": 0.0, "n_batches": 0, "best_score": -math.inf,
                                      "best_epoch": -1, "bad_epochs": 0, "history": []}  # fmt: skip
        self.saved: dict[str, Any] | None = None
        self.tally: LossTally | None = None  # the running loss in the middle of an epoch
        self.stopped_early = False
        self.plan: FeedPlan | None = None  # the feed's plan: a resumed run's is the one it started with
        self.extra_metrics: dict[str, Any] = {}  # more figures for metrics.json (the plan, the time limit)
        if cfg.resume and self.last_path.is_file():
            self.saved = load_state(self.last_path)
            self.plan = FeedPlan.from_state(self.saved)
            cfg = self.cfg = cfg.replace(**self.plan.config_sizes)  # 3-D sizes probed when it started
            _check_resumable(cfg, self.saved["config"], self.last_path)
            n = self.saved.get("num_processes", self.acc.num_processes)
            if not self.saved.get("finished") and n != self.acc.num_processes:
                raise ValueError(
                    f"{self.last_path} was written by {n} process(es), this run has "
                    f"{self.acc.num_processes}: resume with the same number (data order and "
                    "schedule depend on it), or pass resume=False to start over"
                )
        # W&B: the key is looked for now, before any work (not for a finished run), kept in memory only
        self._wandb_key = wandb_key() if cfg.log_with == "wandb" and not self.finished else None
        self.t_start = time.perf_counter()
        # the seconds of the sessions before this one (a resumed run's time is their sum)
        self.seconds_before = float(self.saved.get("train_time_s", 0.0)) if self.saved else 0.0

    @property
    def train_seconds(self) -> float:
        """Seconds this run has trained, the sessions before a resume included."""
        return self.seconds_before + time.perf_counter() - self.t_start

    def lock(self) -> contextlib.AbstractContextManager:
        """The run folder's lock (main process): a second run writing the same folder at
        the same time stops at once, naming the other process (:mod:`gi_utils.runlock`)."""
        return run_lock(self.out_dir) if self.acc.is_main_process else contextlib.nullcontext()

    @property
    def finished(self) -> bool:
        """True when ``last.pt`` says the run ended already."""
        return bool(self.saved and self.saved.get("finished"))

    @property
    def done(self) -> bool:
        return self.stopped_early or self.state["epoch"] >= self.cfg.epochs

    @property
    def validated(self) -> bool:
        """False for ``fold=-1`` (all cases train, nothing is held out)."""
        return self.cfg.fold != -1

    # ------------------------------------------------------------------ state
    def setup(self) -> None:
        """Data, model, the feed's plan, optimizer, schedule and weight average, prepared by accelerate."""
        cfg, acc = self.cfg, self.acc
        if acc.is_main_process:
            remove_stale_temps(self.out_dir)  # left by a run killed while writing a file
        with acc.main_process_first():
            fold = load_fold_data(cfg)
        self.net = build_run_model(cfg, resuming=self.saved is not None)  # init_from an earlier run's weights
        self.loss_fn = build_loss(cfg.loss, **cfg.loss_kwargs)
        self.layout = cfg.spec.memory_format if cfg.channels_last else torch.contiguous_format
        if self.plan is None:  # a new run: planned by the main process (on a GPU: probe steps), shared
            plan = (plan_feed(cfg, fold, self.net, self.loss_fn, acc.device, acc.mixed_precision, self.layout)
                    if acc.is_main_process else None)  # fmt: skip
            self.plan = broadcast_object_list([plan])[0] if acc.num_processes > 1 else plan
            cfg = self.cfg = cfg.replace(**self.plan.config_sizes)
        acc.print(self.plan.summary(), flush=True)
        if acc.is_main_process:
            atomic_write_json(self.out_dir / CONFIG_FILE, cfg.to_dict())
        self.data = load_train_data(cfg, acc.num_processes, acc.device, acc.process_index, plan=self.plan, fold=fold)
        if acc.is_main_process:
            atomic_write_json(self.out_dir / SPLIT_FILE, self.data.split)
        lr = effective_lr(cfg.lr, acc.num_processes, cfg.grad_accum, cfg.scale_lr)
        if acc.num_processes * cfg.grad_accum > 1:
            acc.print(f"effective batch {effective_batch_size(cfg.batch_size, acc.num_processes, cfg.grad_accum)} "
                      f"({cfg.batch_size} x {acc.num_processes} processes x grad_accum {cfg.grad_accum}); "
                      f"peak lr {lr:.3g} (scale_lr={cfg.scale_lr})", flush=True)  # fmt: skip
        self.net = self.net.to(memory_format=self.layout)
        optimizer = torch.optim.AdamW(self.net.parameters(), lr=lr, weight_decay=cfg.weight_decay)
        model = torch.compile(self.net) if cfg.compile else self.net
        on_device = self.data.data_path == "device"  # batches made on the device: nothing to prepare
        val_prepared = self.validated and isinstance(self.data.val_loader, DataLoader)  # a DeviceValLoader: not
        loaders = ([] if on_device else [self.data.train_loader]) + ([self.data.val_loader] if val_prepared else [])
        model, self.optimizer, *prepared = acc.prepare(model, optimizer, *loaders)
        self.model = model
        self.train_loader = self.data.train_loader if on_device else prepared.pop(0)
        self.val_loader = prepared[0] if val_prepared else self.data.val_loader
        self.batches_per_epoch = len(self.train_loader)  # per process
        steps_per_epoch = math.ceil(self.batches_per_epoch / cfg.grad_accum)
        schedule = WarmupCosine(round(cfg.warmup_epochs * steps_per_epoch), cfg.epochs * steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer.optimizer, schedule)
        self.ema = (ModelEmaV3(self.net, decay=cfg.ema_decay, use_warmup=True, device=acc.device)
                    if cfg.ema_decay else None)  # fmt: skip
        self.levers = RunLevers(cfg, self.acc, self.ema.module if self.ema is not None else self.net)
        self.post = PostProcess((cfg.threshold,) * len(CLASSES), (cfg.min_size,) * len(CLASSES), size_ref=cfg.img_size)
        # 3-D validation: whole scans by sliding windows, their sum kept on the device
        self.sliding = (cfg.patch_depth, SlidingWindow(cfg.sw_overlap, device=None)) if cfg.spec.is_3d else None
        # the validation Hausdorff runs on the GPU when the run has one (exact), else on the CPU
        self.hausdorff_device = acc.device if acc.device.type == "cuda" else None
        start_trackers(acc, cfg, self._wandb_key)  # TensorBoard / W&B through accelerate's trackers

    def restore(self) -> None:
        """Apply ``last.pt`` (model, optimizer, schedule, scaler, average, RNG, counters)."""
        s = self.saved
        if s is None:
            return
        self.net.load_state_dict(s["model"])
        self.optimizer.load_state_dict(s["optimizer"])
        self.scheduler.load_state_dict(s["scheduler"])
        if self.acc.scaler is not None and s.get("scaler"):
            self.acc.scaler.load_state_dict(s["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(s["ema"])
        self.levers.load_state_dict(s)
        self.acc.step = int(s["accelerator_step"])
        self.state.update({k: s[k] for k in self.state})
        set_rng_state(s["rng"])
        self.acc.print(f"resuming {shown_path(self.last_path)} at epoch {self.state['epoch'] + 1}, "
                       f"batch {self.state['n_batches']}", flush=True)  # fmt: skip

    def checkpoint(self, finished: bool = False) -> None:
        """Write ``last.pt`` (main process), then let every process go on together."""
        acc, st = self.acc, self.state
        if self.tally is not None:  # every process reads its losses back: a NaN stops all before saving
            st.update(loss_sum=self.tally.loss_sum, n_batches=self.tally.n_batches)
        if acc.is_main_process:
            state = {
                **st, "config": self.cfg.to_dict(), "finished": finished, "model": self.net.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "accelerator_step": int(acc.step), "rng": rng_state(), "num_processes": acc.num_processes,
                "feed_plan": self.plan.to_dict(), "train_time_s": self.train_seconds, **self.levers.state_dict(),
            }  # fmt: skip
            check_room_for(self.last_path, state, "the training state")
            save_state(self.last_path, state)
            if st["n_batches"]:  # inside an epoch (the epoch's own line says when one ends)
                print(f"saved checkpoint {self.last_path.name} (epoch {st['epoch'] + 1}, batch {st['n_batches']})",
                      flush=True)  # fmt: skip
        acc.wait_for_everyone()

    # ------------------------------------------------------------------ one epoch
    def _on_step(self, tally: LossTally, n_batches: int) -> None:
        self.tally, self.state["n_batches"] = tally, n_batches
        if self.ema is not None:
            self.ema.update(self.net, step=int(self.scheduler.last_epoch))
        every = self.cfg.save_every_steps
        opt_steps = math.ceil(n_batches / self.cfg.grad_accum)
        if every and opt_steps % every == 0 and n_batches < self.batches_per_epoch:
            self.checkpoint()

    def train_epoch(self) -> dict[str, Any]:
        """Train one epoch (from where a resumed run stopped); returns the start of its row."""
        cfg, st = self.cfg, self.state
        epoch = st["epoch"]
        self.t_epoch = time.perf_counter()
        self.train_loader.set_epoch(epoch)  # accelerate's loader passes it on to the sampler
        # resuming in the middle of an epoch: leave out the batches already trained on
        self.data.sampler.skip = st["n_batches"] * cfg.batch_size * self.acc.num_processes
        try:
            loss_sum, n = train_one_epoch(
                self.acc, self.model, self.train_loader, self.optimizer, self.scheduler, self.loss_fn,
                desc=f"epoch {epoch + 1}/{cfg.epochs}", progress=cfg.progress, loss_sum=st["loss_sum"],
                n_batches=st["n_batches"], on_step=self._on_step, memory_format=self.layout,
                gate_weight=cfg.gate_weight, mix=self.levers.mix(epoch), seg_weight=cfg.seg_weight,
            )  # fmt: skip
        except NonFiniteLossError as err:
            raise NonFiniteLossError(
                f"{err}; training stopped, last good checkpoint kept: {self.last_path}"
            ) from None
        st.update(loss_sum=loss_sum, n_batches=n)  # read back: a save before validation keeps them
        self.data.sampler.skip, self.tally = 0, None
        return {"epoch": epoch + 1, "step": int(self.scheduler.last_epoch),
                "lr": float(self.scheduler.get_last_lr()[0]), "train_loss": loss_sum / max(n, 1)}  # fmt: skip

    # ------------------------------------------------------------------ validation
    @property
    def scored(self) -> torch.nn.Module:
        """The weights validated and kept: the moving average, else the (prepared) model."""
        return self.ema.module if self.ema is not None else self.model

    def validate_epoch(self, model: torch.nn.Module | None = None) -> dict[str, Any]:
        """Validation figures of the epoch just trained, or of ``model`` (empty for ``fold=-1``)."""
        if not self.validated:
            return {}
        if self.ema is not None and self.acc.num_processes > 1:
            sync_buffers(self.ema.module)
        row = validate(self.acc, self.scored if model is None else model, self.val_loader, self.loss_fn, self.data, self.post,
                       self.out_dir / OOF_STAGING_DIR, progress=self.cfg.progress, memory_format=self.layout,
                       sliding=self.sliding, hausdorff_device=self.hausdorff_device)  # fmt: skip
        return broadcast_object_list([row])[0]  # the metrics are computed on the main process

    # ------------------------------------------------------------------ saving
    def save_best(self, row: dict[str, Any], model: torch.nn.Module | None = None) -> None:
        """Keep this epoch's weights (or ``model``'s) and out-of-fold set as the run's best (main process)."""
        if not self.acc.is_main_process:
            return
        if self.validated:
            replace_dir(self.out_dir / OOF_STAGING_DIR, self.out_dir / OOF_DIR)
        self.save_model_file(MODEL_FILE, row, model, what="the best weights")

    def save_model_file(self, name: str, row: dict[str, Any], model: torch.nn.Module | None = None,
                        what: str = "the weights") -> None:
        """Write ``model``'s weights (default: the validated ones) with ``row``'s figures
        as ``name`` in the run folder (main process); ``what`` names them in a disk-space error."""
        if not self.acc.is_main_process:
            return
        model = model if model is not None else self.ema.module if self.ema is not None else self.net
        check_room_for(self.out_dir / name, model.state_dict(), what)
        save_model(self.out_dir / name, model, self._model_config(row))

    def keep_if_best(self, row: dict[str, Any], score: float, model: torch.nn.Module | None = None) -> bool:
        """Keep ``row``'s weights (or ``model``'s) when ``score`` beats the best; else drop its staged OOF set."""
        improved = math.isfinite(score) and score > self.state["best_score"]
        if improved:
            self.state.update(best_score=score, best_epoch=row["epoch"])
            self.save_best(row, model)
        elif self.acc.is_main_process and self.validated:
            shutil.rmtree(self.out_dir / OOF_STAGING_DIR, ignore_errors=True)
        return improved

    def end_epoch(self, row: dict[str, Any], val: dict[str, Any]) -> None:
        """Bookkeeping after an epoch: best model, history, early stop, ``last.pt``."""
        cfg, st, acc = self.cfg, self.state, self.acc
        row = {**row, **val, "epoch_time_s": time.perf_counter() - self.t_epoch}
        scored = self.validated and cfg.seg_weight > 0  # a classifier-only run keeps its last epoch
        improved = self.keep_if_best(row, row.get("val_score", math.nan) if scored else float(row["epoch"]))
        st["bad_epochs"] = 0 if improved else st["bad_epochs"] + 1
        st["history"].append(row)
        st.update(epoch=row["epoch"], loss_sum=0.0, n_batches=0)
        self.stopped_early = bool(cfg.patience) and st["bad_epochs"] >= cfg.patience
        acc.print(self._summary(row, improved), flush=True)  # main process
        self.levers.end_epoch(self)  # SWA: this epoch's weights into the average; after the last, its row
        if acc.is_main_process:
            atomic_write_text(self.out_dir / HISTORY_FILE, pd.DataFrame(st["history"]).to_csv(index=False))
        if cfg.log_with != "none":
            acc.log({k: float(v) for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))},
                    step=int(row["epoch"]))  # fmt: skip
        self.checkpoint(finished=self.done)
        if self.stopped_early:
            acc.print(f"early stop: no improvement for {cfg.patience} epochs (best epoch "
                      f"{st['best_epoch']})", flush=True)  # fmt: skip

    def finish(self) -> pd.DataFrame:
        """Write ``metrics.json`` (main process); return the history."""
        history = pd.DataFrame(self.state["history"])
        if self.acc.is_main_process:
            self._write_metrics(history, self.train_seconds)
        if self.cfg.log_with != "none":
            self.acc.end_training()
        self.acc.wait_for_everyone()
        return history

    def _model_config(self, row: dict[str, Any]) -> ModelConfig:
        cfg = self.cfg
        return model_config(
            cfg.arch, cfg.encoder, cfg.in_channels, len(CLASSES),
            model_kwargs=cfg.build_kwargs, **({"patch_depth": cfg.patch_depth, "sw_overlap": cfg.sw_overlap}
                                              if cfg.spec.is_3d else {}), gate=cfg.gate, img_size=cfg.img_size, slice_offsets=list(cfg.slice_offsets),
            resize_mode=cfg.resize_mode, threshold=cfg.threshold, min_size=cfg.min_size,
            norm_version=NORM_VERSION, epoch=row["epoch"], val_score=row.get("val_score"),
            val_dice=row.get("val_dice"), train_config=cfg.to_dict(),
        )  # fmt: skip

    def _summary(self, row: dict[str, Any], improved: bool) -> str:
        keys = ("train_loss", "val_loss", "val_dice", "val_hausdorff", "val_score")
        figures = " ".join(f"{k} {row[k]:.4f}" for k in keys if k in row)
        best = " *best*" if improved and self.validated else ""
        return (f"epoch {row['epoch']}/{self.cfg.epochs} {figures} lr {row['lr']:.2e} "
                f"({row['epoch_time_s']:.1f} s){best}")  # fmt: skip

    def _write_metrics(self, history: pd.DataFrame, seconds: float) -> None:
        cfg, acc, st = self.cfg, self.acc, self.state
        rows = history.loc[history["epoch"] == st["best_epoch"]]  # two with SWA: the last epoch, the average
        rows = rows.loc[rows["val_score"] == st["best_score"]] if self.validated and len(rows) > 1 else rows.tail(1)
        best = rows.iloc[0].to_dict() if st["best_epoch"] > 0 else {}
        atomic_write_json(self.out_dir / METRICS_FILE, {
            "arch": cfg.arch, "encoder": cfg.encoder, "fold": cfg.fold, "validated": self.validated,
            "best_epoch": st["best_epoch"], "best": best if self.validated else {},
            "final": history.iloc[-1].to_dict() if len(history) else {},
            "epochs_run": len(history), "stopped_early": self.stopped_early, "train_time_s": seconds,
            "device": str(acc.device), "mixed_precision": acc.mixed_precision, "num_processes": acc.num_processes,
            "effective_batch_size": effective_batch_size(cfg.batch_size, acc.num_processes, cfg.grad_accum),
            "peak_lr": effective_lr(cfg.lr, acc.num_processes, cfg.grad_accum, cfg.scale_lr),
            "samples_per_epoch": self.batches_per_epoch * cfg.batch_size * acc.num_processes,
            "peak_gpu_memory_mb": (torch.cuda.max_memory_allocated(acc.device) / 2**20
                                   if acc.device.type == "cuda" else None),
            "device_name": device_name(acc.device), "feed_plan": self.plan.to_dict(), **self.extra_metrics,
        })  # fmt: skip
