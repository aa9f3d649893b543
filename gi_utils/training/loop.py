"""Train one segmentation model on one fold: ``train(TrainConfig(...)) -> history``.

A plain PyTorch loop; Hugging Face ``accelerate`` supplies the device, mixed precision,
gradient accumulation and multi-process data parallelism, so the same code runs on a
laptop CPU, one Kaggle GPU, or ``accelerate launch -m gi_utils.training ...`` / torchrun.

Per epoch: AdamW steps under a warm-up + cosine schedule (with an exponential moving
average of the weights when ``ema_decay`` > 0), then validation on whole volumes
(:func:`gi_utils.training.validation.validate`): per-slice probabilities are gathered from
all processes into the run's out-of-fold set and scored once per volume with the
competition metric. The steps and the files of a run: :mod:`gi_utils.training.session`.

Resuming: calling :func:`train` again with the same config continues from ``last.pt``
and ends with the same numbers as an uninterrupted run (bit-identical on CPU). A run keeps
to its session's ``time_limit`` (:mod:`gi_utils.training.timed_run`): at the limit it saves
``last.pt`` and returns what it trained; called again (in the next session) it continues. The data
order of an epoch depends only on ``(seed, epoch)`` and each sample's augmentation only
on ``(seed, epoch, sample)``, not on workers, processes or where the run stopped.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from gi_utils.paths import resolve_data_dir, shown_path
from gi_utils.training.config import TrainConfig
from gi_utils.training.time_limit import platform_time_limit, session_start
from gi_utils.training.timed_run import TimedRun

__all__ = ["train", "resolve_config"]


def resolve_config(config: TrainConfig | dict[str, Any]) -> TrainConfig:
    """``config`` as a :class:`TrainConfig` whose ``data_dir`` and ``time_limit`` are
    resolved (a new object; the given one is not changed): the data folder found, the
    platform's limit (:func:`gi_utils.training.time_limit.platform_time_limit`), and the
    session's start fixed (:func:`~gi_utils.training.time_limit.session_start`) before any
    process is launched. Entry points call it once and pass the result down."""
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    if cfg.data_dir is None:
        cfg = cfg.replace(data_dir=str(resolve_data_dir()))
    if cfg.time_limit is None:
        cfg = cfg.replace(time_limit=platform_time_limit())
    if cfg.time_limit:
        session_start()
    return cfg


def train(config: TrainConfig | dict[str, Any]) -> pd.DataFrame:
    """Train ``config.arch`` on fold ``config.fold``; resume from ``last.pt`` if present.

    Returns:
        The history, one row per epoch: ``epoch, step, lr, train_loss, val_loss,
        val_dice, val_hausdorff, val_score, dice_<class>..., epoch_time_s``.

    Raises:
        ValueError: an invalid config value (named), or a ``last.pt`` of another config.
        NonFiniteLossError: the loss became NaN/inf (the last good checkpoint is kept).
    """
    run = TimedRun(resolve_config(config))
    if run.finished:
        run.acc.print(f"{shown_path(run.last_path)}: run already finished; returning its history", flush=True)
        return pd.DataFrame(run.saved["history"])
    with run.lock():  # a second run writing the same folder stops at once
        run.setup()
        run.restore()
        while not run.done:
            row = run.train_epoch()
            if row is None:  # the session's time limit: last.pt is saved, the next session continues
                break
            run.end_epoch(row, run.validate_epoch())
        return run.finish()
