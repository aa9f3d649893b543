"""What the levers of the top solutions do inside a run (the ``TrainConfig`` fields of
``docs/levers.md``), behind the few hooks :class:`~gi_utils.training.session.TrainingRun`
calls: the model built and initialised from an earlier run (:func:`build_run_model`),
the CutMix/MixUp of each batch, the SWA average of the last epochs and its state in
``last.pt`` (:class:`RunLevers`). A lever that is off costs nothing: no mixing function,
no copy of the model."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from gi_utils.constants import CLASSES
from gi_utils.data.mixing import BatchMix, mix_generator
from gi_utils.models.io import read_model_config
from gi_utils.models.registry import build_model
from gi_utils.models.run_folder import SWA_MODEL_FILE
from gi_utils.models.transfer import init_from_weights, init_source
from gi_utils.training.swa import SwaAverage
from gi_utils.training.validation import sync_buffers

__all__ = ["SPLIT_FIELDS", "RunLevers", "build_run_model", "init_path"]

#: The settings that decide which cases a run trains and validates on.
SPLIT_FIELDS: tuple[str, ...] = ("fold", "n_folds", "folds_seed", "drop_bad_cases")


def init_path(cfg: Any) -> str:
    """``cfg.init_from`` with ``{fold}`` replaced by the run's fold (``all`` for -1, as run
    folders are named): one command starts every fold from its own fold's earlier run."""
    return str(cfg.init_from).replace("{fold}", "all" if cfg.fold == -1 else str(cfg.fold))


def _check_same_split(path: Any, cfg: Any) -> None:
    """A validated run may start only from weights trained on its own fold's training cases:
    weights that saw its validation cases would inflate its out-of-fold scores."""
    trained = read_model_config(path).train_config
    if cfg.fold == -1 or trained is None:
        return
    if trained.get("fold") == -1 or any(trained.get(k) != getattr(cfg, k) for k in SPLIT_FIELDS):
        seen = {k: trained.get(k) for k in SPLIT_FIELDS}
        raise ValueError(f"init_from: {path} was trained with {seen}, this run validates fold {cfg.fold} of "
                         f"{cfg.n_folds} (folds_seed {cfg.folds_seed}): its validation cases would be scored by "
                         "weights that trained on them; start each fold from its own fold's run "
                         "(init_from='.../<run>_fold{fold}'), or train with fold=-1")  # fmt: skip


def build_run_model(cfg: Any, resuming: bool = False) -> nn.Module:
    """The model of a run: built from ``cfg``; a new run with ``init_from`` then takes an
    earlier run's weights (all of them when the models match, else the encoder's:
    :func:`gi_utils.models.init_from_weights`; no encoder weights are fetched first),
    from the same fold's run (:func:`init_path`, checked). A resumed run takes its own
    from ``last.pt`` instead."""
    weights = None if resuming or cfg.init_from else cfg.weights
    net = build_model(cfg.arch, cfg.encoder, cfg.in_channels, len(CLASSES), weights=weights, **cfg.build_kwargs)
    if cfg.init_from and not resuming:
        source = init_source(init_path(cfg))
        _check_same_split(source, cfg)
        print(f"initialised {init_from_weights(net, source)} from {source}", flush=True)
    return net


class RunLevers:
    """The per-run state of the levers.

    Args:
        cfg: the run's ``TrainConfig``.
        acc: its Accelerator.
        scored: the model whose weights the run validates (the moving average, else the
            unwrapped network): what SWA averages.
    """

    def __init__(self, cfg: Any, acc: Accelerator, scored: nn.Module) -> None:
        self.cfg, self.acc = cfg, acc
        self.mixer = BatchMix(cfg.mix, cfg.mix_p) if cfg.mix != "none" else None
        self.scored = scored
        self.swa = SwaAverage(scored, cfg.epochs, cfg.swa_epochs) if cfg.swa_epochs else None

    # ------------------------------------------------------------------ CutMix / MixUp
    def mix(self, epoch: int):
        """The step's ``mix(images, masks, b)`` for ``epoch`` (``None`` when off): batch
        ``b`` of this process is global batch ``b * processes + rank``, mixed with draws
        seeded from ``(seed, epoch, global batch)``."""
        if self.mixer is None:
            return None
        rank, world, seed = self.acc.process_index, self.acc.num_processes, self.cfg.seed

        def mix(images: torch.Tensor, masks: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
            return self.mixer(images, masks, mix_generator(seed, epoch, b * world + rank, images.device))[:2]

        return mix

    # ------------------------------------------------------------------ SWA
    def end_epoch(self, run: Any) -> None:
        """After ``run``'s epoch bookkeeping: add the epoch's weights to the SWA average;
        after the last epoch, validate the average as one more row of the history (its
        BatchNorm statistics recomputed first), saved as ``swa.safetensors`` and kept as the
        best when it scores better (always without validation, or without a segmentation
        score: then it is the run's final model)."""
        if self.swa is None:
            return
        st = run.state
        self.swa.collect(self.scored, st["epoch"])
        if not run.done or not self.swa.n_averaged:
            return
        t0 = time.perf_counter()
        run.train_loader.set_epoch(self.cfg.epochs)  # a pass over an epoch no run trains on: the same batches on resume
        self.swa.update_bn(run.train_loader, run.layout, self.acc.autocast)
        if self.acc.num_processes > 1:
            sync_buffers(self.swa.module)
        val = run.validate_epoch(self.swa.module)
        row = {"epoch": st["epoch"], "model": "swa", **val, "epoch_time_s": time.perf_counter() - t0}
        score = val.get("val_score", math.nan) if run.validated and self.cfg.seg_weight > 0 else math.inf
        improved = run.keep_if_best(row, score, self.swa.module)
        run.save_model_file(SWA_MODEL_FILE, row, self.swa.module, what="the weight average")  # the average itself, best or not
        st["history"].append(row)
        figures = " ".join(f"{k} {val[k]:.4f}" for k in ("val_dice", "val_hausdorff", "val_score") if k in val)
        self.acc.print(f"SWA of epochs {self.swa.first}-{self.cfg.epochs} ({self.swa.n_averaged}): {figures}"
                       f"{' *best*' if improved and run.validated else ''}", flush=True)  # fmt: skip

    # ------------------------------------------------------------------ last.pt
    def state_dict(self) -> dict[str, Any]:
        """What ``last.pt`` carries for the levers (nothing when they hold no state)."""
        return {"swa": self.swa.state_dict()} if self.swa is not None else {}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Restore from a ``last.pt``'s dict (:meth:`state_dict`'s keys)."""
        if self.swa is not None:
            self.swa.load_state_dict(saved["swa"])
