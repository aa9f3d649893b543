"""Training logs through accelerate's trackers: TensorBoard event files in the run folder,
or one named Weights & Biases run per fold.

W&B: the run's name is the run folder's name (``unet_resnet18_320px_fold0``), its group
the model (the name without the fold suffix: ``unet_resnet18_320px``), its project
``TrainConfig.log_project``. The API key is read where the run starts, first from the
Kaggle secret ``WANDB_API_KEY`` (Add-ons > Secrets, when ``kaggle_secrets`` exists), then
from the environment variable ``WANDB_API_KEY``; it goes only into
``wandb.init(settings=wandb.Settings(api_key=...))`` in the main process's memory. This
package never writes it: not into ``config.json``, ``last.pt``, the metrics, the W&B config or the
notebook's output, not into ``os.environ`` (which child processes inherit), and not
through ``wandb.login(key=...)``, which stores an explicit key in ``~/.netrc``. Without a
key, an existing ``wandb login`` (``~/.netrc``) or ``WANDB_MODE=offline``/``disabled``
is used; with none of these the run stops before any work, saying what was tried.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from gi_utils.models.run_folder import stem_of_run
from gi_utils.training.config import TrainConfig

__all__ = ["TENSORBOARD_DIR", "WANDB_KEY_NAME", "WandbKeyError", "wandb_key", "tracker_setup", "start_trackers"]

#: The name of the Kaggle secret and of the environment variable holding the W&B API key.
WANDB_KEY_NAME = "WANDB_API_KEY"
#: TensorBoard's folder in the run folder (accelerate's ``project_dir`` / project name).
TENSORBOARD_DIR = "logs"


class WandbKeyError(ValueError):
    """``log_with="wandb"`` and no W&B credentials anywhere (the message lists what was tried)."""


def _kaggle_secret(name: str) -> tuple[str | None, str]:
    """``(value or None, what happened)`` for the Kaggle secret ``name`` (only where the
    ``kaggle_secrets`` module exists, i.e. in a Kaggle notebook)."""
    try:
        from kaggle_secrets import UserSecretsClient
    except ImportError:
        return None, "the Kaggle secret (no kaggle_secrets module: not on Kaggle)"
    try:
        value = UserSecretsClient().get_secret(name)
    except Exception as err:  # noqa: BLE001 - a secret not attached raises a client-specific error
        return None, f"the Kaggle secret {name} (not readable: {type(err).__name__})"
    return (value, "") if value else (None, f"the Kaggle secret {name} (empty)")


def _logged_in() -> bool:
    """An earlier ``wandb login`` (``~/.netrc``) or an offline/disabled W&B mode."""
    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_key() -> str | None:
    """The W&B API key: the Kaggle secret ``WANDB_API_KEY``, else the environment variable.

    Returns:
        The key, or ``None`` when there is none but W&B is usable without it (an earlier
        ``wandb login`` in ``~/.netrc``, or ``WANDB_MODE=offline``/``disabled``).

    Raises:
        WandbKeyError: no key and no login; the message lists what was tried (never a key).
    """
    key, kaggle_note = _kaggle_secret(WANDB_KEY_NAME)
    if key:
        return key
    key = os.environ.get(WANDB_KEY_NAME) or None
    if key or _logged_in():
        return key
    raise WandbKeyError(
        f"log_with='wandb': no W&B API key found; tried {kaggle_note}, the environment variable "
        f"{WANDB_KEY_NAME} (unset), `wandb login` (~/.netrc: no api.wandb.ai entry) and WANDB_MODE "
        "(not offline); on Kaggle add the secret WANDB_API_KEY (Add-ons > Secrets), elsewhere run "
        "`wandb login` or set WANDB_MODE=offline"
    )


def tracker_setup(cfg: TrainConfig, key: str | None = None) -> tuple[str, dict[str, Any]]:
    """``(project_name, init_kwargs)`` for accelerate's ``init_trackers``.

    TensorBoard: the project name is the folder of the event files in the run folder
    (``<out_dir>/logs``). W&B: the project is ``cfg.log_project`` and the run is named
    after the run folder and grouped by model (:func:`gi_utils.models.stem_of_run`);
    ``key`` goes into the run's settings only.
    """
    if cfg.log_with != "wandb":
        return TENSORBOARD_DIR, {}
    import wandb  # installed: TrainConfig checks it

    name = Path(cfg.out_dir).name
    kwargs: dict[str, Any] = {"name": name, "group": stem_of_run(name), "job_type": "train"}
    if key:
        kwargs["settings"] = wandb.Settings(api_key=key)
    return cfg.log_project, {"wandb": kwargs}


def start_trackers(acc: Accelerator, cfg: TrainConfig, key: str | None = None) -> None:
    """Start the run's tracker (``cfg.log_with``) with the config's plain values."""
    if cfg.log_with == "none":
        return
    project, init_kwargs = tracker_setup(cfg, key)
    simple = {k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, bool))}
    acc.init_trackers(project, config=simple, init_kwargs=init_kwargs)
    if cfg.log_with == "wandb" and acc.is_main_process:  # the link a notebook reader follows
        url = getattr(acc.get_tracker("wandb", unwrap=True), "url", None)
        print(f"W&B run: {url}" if url else "W&B run: offline (no link; `wandb sync` uploads it)", flush=True)
