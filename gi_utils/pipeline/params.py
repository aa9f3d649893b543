"""``02_train``'s parameters -> one complete, validated :class:`TrainConfig`.

The notebook's parameters cell holds ``preset`` and the main TrainConfig fields, each
annotated ``Optional[...] = None`` where ``None`` means "the preset's value", plus the
notebook's own parameters. :func:`train_setup` checks the types against the cell's
annotations, resolves the data folder once, and builds the config the notebook passes on
unchanged: defaults, then the preset, then the values given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from gi_utils.data.cache import cache_nbytes
from gi_utils.models.run_folder import run_name
from gi_utils.paths import default_runs_dir, platform_cache_dir
from gi_utils.pipeline.data_root import ensure_data
from gi_utils.pipeline.notebook import ParameterError, check_params, notebook_parameters
from gi_utils.training.config import TrainConfig
from gi_utils.training.launcher import resolve_num_processes
from gi_utils.training.loop import resolve_config
from gi_utils.training.presets import resolve_preset, with_preset
from gi_utils.training.run_plan import training_slices

__all__ = ["CONFIG_FIELDS", "train_setup"]

#: Names of TrainConfig fields (the other parameters of 02_train are the notebook's own).
CONFIG_FIELDS: frozenset[str] = frozenset(f.name for f in fields(TrainConfig))


def train_setup(given: Mapping[str, Any] | None = None,
                annotations: Mapping[str, Any] | None = None) -> tuple[TrainConfig, dict[str, Any]]:  # fmt: skip
    """Split 02_train's parameters into a complete TrainConfig and the notebook's own.

    Args:
        given: the parameters; default: the running notebook's
            (:func:`gi_utils.pipeline.notebook.notebook_parameters`).
        annotations: the parameters cell's ``__annotations__`` (with ``given``).

    ``data_dir`` ("" = search) is resolved here, once.

    Returns:
        ``(config, notebook_params)``: ``config.data_dir`` is resolved (the synthetic
        dataset is written if no data are found and ``synthetic_if_missing``, locally),
        ``config.out_dir`` is ``<runs_dir>/<run_name>``, the disk cache is where the
        platform wants it (:func:`gi_utils.paths.platform_cache_dir`: on Kaggle outside the
        saved output, on Colab on the runtime's local disk), ``time_limit`` is a number (the
        platform's when not given: :func:`gi_utils.training.loop.resolve_config`),
        ``notebook_params["preset"]``
        names the preset applied ("auto" resolved:
        :func:`gi_utils.training.presets.machine_preset`) and
        ``notebook_params["num_processes"]`` is a number ("auto" resolved:
        :func:`gi_utils.training.launcher.resolve_num_processes`; ``train_folds`` prints it
        with the effective batch and the learning-rate rule).

    Raises:
        ParameterError: an unknown parameter (with the valid names, and a close match), a
            value of the wrong type, an invalid setting, or ``out_dir`` (set from
            ``runs_dir`` and ``run_name``, so a value given would be dropped); the message
            names it.
    """
    if given is None:
        given, annotations = notebook_parameters()
    annotations = annotations or {}
    own_types = {k: v for k, v in annotations.items() if k not in CONFIG_FIELDS}
    nb = check_params({k: v for k, v in given.items() if k in own_types}, own_types)
    cell_types = {k: v for k, v in annotations.items() if k in CONFIG_FIELDS}
    given_cfg = {k: v for k, v in given.items() if k in cell_types}
    typed = check_params(given_cfg, {k: cell_types[k] for k in given_cfg})
    extra = {k: v for k, v in given.items() if k not in annotations}  # -p names not in the cell
    values = {k: v for k, v in typed.items() if v is not None} | extra
    if "out_dir" in values:
        raise ParameterError(f"02_train parameters: out_dir={values['out_dir']!r} is not taken: a run's folder is "
                             "<runs_dir>/<run_name>; pass -p runs_dir DIR (and -p run_name NAME)")  # fmt: skip
    data_dir = values.pop("data_dir", "") or ""
    try:
        nb["preset"] = resolve_preset(nb.get("preset", ""))
        values = with_preset(nb["preset"], values)
        if values.get("weights") == "":
            values["weights"] = None  # "" = random initialisation
        probe = TrainConfig.from_dict(values)  # names and values first, before any data are touched
    except ValueError as err:
        raise ParameterError(f"02_train parameters: {err}") from None
    root = ensure_data(data_dir, nb.get("synthetic_if_missing", True))
    name = nb.get("run_name") or run_name(probe)
    out_dir = default_runs_dir(nb.get("runs_dir", "")) / name
    local = {}
    if probe.cache == "disk" and probe.cache_dir is None:
        need = cache_nbytes(training_slices(root), probe.img_size, probe.cache_dtype, probe.cache_masks)
        cache_dir, note = platform_cache_dir(need)
        if cache_dir is not None:
            local["cache_dir"] = str(cache_dir)
        if note:
            print(note, flush=True)
    cfg = resolve_config(probe.replace(data_dir=str(root), out_dir=str(out_dir), **local))  # and time_limit
    if "num_processes" in nb:
        try:
            nb["num_processes"] = resolve_num_processes(nb["num_processes"], cfg)
        except ValueError as err:
            raise ParameterError(f"02_train parameters: {err}") from None
    return cfg, nb
