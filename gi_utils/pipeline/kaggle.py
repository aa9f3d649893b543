"""``make kaggle``: everything a Kaggle code-competition submission needs, offline.

Two folders under ``dist/kaggle/`` (the formats of the official ``kaggle`` CLI):

* ``dataset/`` -> ``kaggle datasets create -p dist/kaggle/dataset``: the wheels the Kaggle
  image lacks (:data:`KAGGLE_MISSING`: gi_utils itself, segmentation-models-pytorch and MONAI;
  torch, timm, albumentations, accelerate, safetensors, papermill... ship with the image),
  the chosen models with ``best_config.json`` (paths relative to it) and
  ``dataset-metadata.json``;
* ``kernel/`` -> ``kaggle kernels push -p dist/kaggle/kernel``: ``04_submission.ipynb``
  with its parameters set to the attached dataset, and ``kernel-metadata.json`` (internet
  off, the dataset and the competition attached).

How the missing wheels were decided: the package's dependencies, each looked up in the
Kaggle Python image's package list (Kaggle/docker-python, ``kaggle_requirements.txt`` and
the image's frozen package list); what is not there is bundled.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import papermill as pm

from gi_utils.atomic import atomic_write_json
from gi_utils.constants import KAGGLE_COMPETITION
from gi_utils.paths import REPO_ROOT
from gi_utils.pipeline.notebook_files import NOTEBOOKS_DIR
from gi_utils.report.selection import BEST_CONFIG_NAME, read_best_config

__all__ = ["KAGGLE_MISSING", "KAGGLE_INPUT_DIR", "build_wheels", "build_kaggle_bundle"]

#: Distributions the notebooks need that the Kaggle Python image does not ship.
KAGGLE_MISSING: tuple[str, ...] = ("segmentation-models-pytorch", "monai")
#: Where Kaggle mounts attached datasets (a kernel's parameters point there).
KAGGLE_INPUT_DIR = "/kaggle/input"


def build_wheels(out_dir: str | os.PathLike, extra: tuple[str, ...] = KAGGLE_MISSING) -> list[Path]:
    """``pip wheel --no-deps`` of this project and of ``extra`` into ``out_dir``.

    Raises:
        RuntimeError: pip failed (its output is in the message).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(out), str(REPO_ROOT), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return sorted(out.glob("*.whl"))


def build_kaggle_bundle(
    runs_root: str | os.PathLike, out_dir: str | os.PathLike, *, user: str = "your-kaggle-name",
    slug: str = "gi-tract-segmentation-bundle", best_config: str | os.PathLike | None = None,
    wheels: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Write ``out_dir/dataset`` and ``out_dir/kernel`` (see the module docstring).

    Args:
        runs_root: the runs folder with ``best_config.json`` (written by ``03_compare``).
        user, slug: the Kaggle owner and dataset name (``user/slug``).
        best_config: another best configuration file.
        wheels: build the wheels (tests of the layout alone pass False).

    Returns:
        ``{"dataset": path, "kernel": path, "wheels": [...], "models": [...]}``.

    Raises:
        FileNotFoundError: no best configuration (run ``03_compare`` first), naming it.
    """
    config_path = Path(best_config) if best_config else Path(runs_root) / BEST_CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"no best configuration at {config_path}: run 03_compare (or make demo) first")
    record = read_best_config(config_path)
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    dataset, kernel = out / "dataset", out / "kernel"
    models = dataset / "models"
    models.mkdir(parents=True)
    names = []
    for k, path in enumerate(record["model_paths"]):
        name = f"{k:02d}_{Path(path).parent.name}.safetensors"
        shutil.copyfile(path, models / name)
        if Path(path).with_suffix(".json").is_file():
            shutil.copyfile(Path(path).with_suffix(".json"), (models / name).with_suffix(".json"))
        names.append(f"models/{name}")
    bundled = {**{k: v for k, v in record.items() if k not in ("post", "default_post")},
               "model_paths": names, "post": record["post"].to_dict(),
               "default_post": record["default_post"].to_dict()}  # fmt: skip
    atomic_write_json(dataset / BEST_CONFIG_NAME, bundled)
    wheel_files = build_wheels(dataset / "wheels") if wheels else []
    atomic_write_json(dataset / "dataset-metadata.json", {
        "title": "GI tract segmentation bundle", "id": f"{user}/{slug}", "licenses": [{"name": "CC0-1.0"}],
        "subtitle": "gi_utils wheels and the chosen models for 04_submission (offline)",
    })  # fmt: skip
    kernel.mkdir(parents=True)
    mount = f"{KAGGLE_INPUT_DIR}/{slug}"
    pm.execute_notebook(str(NOTEBOOKS_DIR / "04_submission.ipynb"), str(kernel / "04_submission.ipynb"),
                        parameters={"best_config": f"{mount}/{BEST_CONFIG_NAME}"}, prepare_only=True,
                        progress_bar=False)  # fmt: skip
    atomic_write_json(kernel / "kernel-metadata.json", {
        "id": f"{user}/{slug}-submission", "title": "GI tract segmentation submission",
        "code_file": "04_submission.ipynb", "language": "python", "kernel_type": "notebook",
        "is_private": "true", "enable_gpu": "true", "enable_internet": "false",
        "dataset_sources": [f"{user}/{slug}"], "competition_sources": [KAGGLE_COMPETITION],
        "kernel_sources": [], "model_sources": [],
    })  # fmt: skip
    return {"dataset": dataset, "kernel": kernel, "wheels": wheel_files, "models": names}
