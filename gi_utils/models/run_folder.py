"""The run folder: its name, the names of its files, and the settings that do not change
its numbers.

A *run folder* is what one training run writes (:mod:`gi_utils.training.session`, the
writer) and what the report and the submission read back (:mod:`gi_utils.report.runs`).
Both import this module, so neither reaches into the other. A folder holds
:data:`CONFIG_FILE` (the ``TrainConfig`` as JSON), :data:`SPLIT_FILE` (which case-days
train and validate), :data:`STATE_FILE` (everything to resume), :data:`MODEL_FILE` (the
best weights; :mod:`gi_utils.models.io` writes their configuration beside them, as
``best.json``), :data:`OOF_DIR` (the out-of-fold probabilities), :data:`HISTORY_FILE` and
:data:`METRICS_FILE` (written last: a folder with it is a finished run).

Its default name is the model's stem and the fold: ``unet_resnet18_128px_fold0``
(:func:`run_name`); every fold of one model shares the stem (:func:`model_stem`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from gi_utils.models.registry import find_arch

__all__ = ["CONFIG_FILE", "SPLIT_FILE", "STATE_FILE", "MODEL_FILE", "SWA_MODEL_FILE", "OOF_DIR", "OOF_STAGING_DIR", "HISTORY_FILE", "METRICS_FILE",
           "FINISHED_FILES", "GATE_SUFFIX", "CLS_SUFFIX", "NUMBER_FREE_FIELDS", "RESUME_FREE_FIELDS", "PER_RUN_FIELDS",
           "model_stem", "run_name", "stem_of_run", "resume_differences"]  # fmt: skip

CONFIG_FILE = "config.json"
SPLIT_FILE = "split.json"
STATE_FILE = "last.pt"
MODEL_FILE = "best.safetensors"
#: The SWA average of a run with ``swa_epochs`` (its BatchNorm statistics recomputed), kept
#: whether or not it scored best (then it is also :data:`MODEL_FILE`).
SWA_MODEL_FILE = "swa.safetensors"
OOF_DIR = "oof"
#: Where validation writes the next out-of-fold set, moved to :data:`OOF_DIR` when it is the best.
OOF_STAGING_DIR = f".{OOF_DIR}.tmp"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
#: What a finished run folder holds (the report reads these back).
FINISHED_FILES = (CONFIG_FILE, SPLIT_FILE, METRICS_FILE, HISTORY_FILE, MODEL_FILE)

#: The suffix of a model trained with a classifier gate (in :func:`model_stem`).
GATE_SUFFIX = "_gate"
#: The suffix of a classifier-only run (``seg_weight=0``: the 3rd place's classification model).
CLS_SUFFIX = "_cls"
_FOLD_SUFFIX = re.compile(r"_fold(\d+|all)$")

#: ``TrainConfig`` fields that do not change a run's numbers, only where its files live,
#: how fast they are read and what is logged. The one list: the two below derive from it.
NUMBER_FREE_FIELDS = frozenset(
    {"out_dir", "data_dir", "folds_dir", "num_workers", "cache", "cache_dir", "cache_masks", "progress",
     "resume", "save_every_steps", "log_with", "log_project", "time_limit"}
)  # fmt: skip
#: Fields that may differ between a run and its resumption: the number-free ones and
#: ``patience`` (a resumed run may stop sooner or later; the epochs trained stay as they were).
RESUME_FREE_FIELDS = NUMBER_FREE_FIELDS | {"patience"}
#: Fields that differ between the folds of one model (left out when the report groups
#: runs into models): the number-free ones and ``fold``, which does change the numbers.
PER_RUN_FIELDS = NUMBER_FREE_FIELDS | {"fold"}


def _settings(config: Any) -> Mapping[str, Any]:
    return config if isinstance(config, Mapping) else vars(config)


def model_stem(config: Any) -> str:
    """One model's name, whatever the fold: ``unet_resnet18_128px`` (``_gate`` with a
    classifier gate, ``_gate_cls`` for a classifier-only run; ``segresnet3d_128px`` for a
    3-D model, which has no encoder).

    Args:
        config: a ``TrainConfig`` or its dict (a run's ``config.json``; one written
            before the gate existed has no ``gate``: no gate).
    """
    c = _settings(config)
    spec = find_arch(c["arch"])  # a 3-D model has no encoder to name
    label = c["arch"] if spec is not None and not spec.has_encoder else f"{c['arch']}_{c['encoder']}"
    cls = CLS_SUFFIX if c.get("seg_weight", 1) == 0 else ""
    return f"{label}_{c['img_size']}px{GATE_SUFFIX if c.get('gate') else ''}{cls}"


def run_name(config: Any, fold: int | None = None) -> str:
    """The default run folder name: :func:`model_stem` and the fold, e.g.
    ``unet_resnet18_128px_fold0`` (``foldall`` for fold -1).

    Args:
        config: a ``TrainConfig`` or its dict.
        fold: the fold to name (default: the config's own).
    """
    fold = _settings(config)["fold"] if fold is None else fold
    return f"{model_stem(config)}_fold{'all' if fold == -1 else fold}"


def stem_of_run(name: str) -> str:
    """A run folder's name without its fold suffix: ``unet_resnet18_320px_fold0`` ->
    ``unet_resnet18_320px`` (``_foldall`` too); a name without one is returned as it is."""
    return _FOLD_SUFFIX.sub("", name) or name


def resume_differences(now: Mapping[str, Any], saved: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The settings that keep a run from continuing another's state: ``{field: (saved,
    now)}`` for every field of ``now`` (a config dict) that ``saved`` (the config of a
    ``last.pt`` or ``config.json``) holds otherwise, :data:`RESUME_FREE_FIELDS` left out.
    Empty: the same run."""
    return {k: (saved.get(k), v) for k, v in now.items() if k not in RESUME_FREE_FIELDS and v != saved.get(k)}
