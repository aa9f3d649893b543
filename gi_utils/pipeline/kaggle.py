"""``make kaggle``: everything a Kaggle notebook needs offline, in the formats of the
official ``kaggle`` CLI, under ``dist/kaggle/``:

* ``dataset/`` -> ``kaggle datasets create -p dist/kaggle/dataset``. **Flat**: the CLI
  uploads only the top-level files of the folder (its default ``--dir-mode skip`` skips
  sub-folders) and not ``dataset-metadata.json``. It holds the wheels the Kaggle image
  lacks (gi_utils itself and :data:`KAGGLE_MISSING`: segmentation-models-pytorch and
  MONAI; torch, timm, albumentations, accelerate, safetensors, papermill... ship with the
  image), ``gi_setup.py`` (what the notebooks' first cell runs) and, once ``03_compare``
  chose them, the models (``NN_<run>.safetensors`` with their ``.json``) and
  ``best_config.json`` naming them relative to itself. Attached to any notebook, its first
  cell runs ``gi_setup.py``, which installs gi_utils from these wheels with ``--no-index``;
  a wheels-only dataset (no ``best_config.json`` yet) is what the training notebooks need.
* ``kernel/`` (written when there are models) -> ``kaggle kernels push -p
  dist/kaggle/kernel``: ``04_submission.ipynb`` with ``best_config`` set to
  ``../input/<slug>/best_config.json`` (relative to ``/kaggle/working``, the kernel's
  working folder) and ``kernel-metadata.json`` (internet off, the dataset and the
  competition attached).

How the missing wheels were decided: the package's dependencies, each looked up in the
Kaggle Python image's package list (Kaggle/docker-python); what is not there is bundled.
The bundled versions are the ones installed here (what the project was tested with).

An image may also ship a dependency older than gi_utils needs: an albumentations before
1.4.21 (``Compose(seed=)``) fails the offline install with ``No matching distribution found
for albumentations>=1.4.21``. The bundle therefore also carries :data:`KAGGLE_FALLBACK`
(albumentations and what it needs beyond the image's numpy, scipy, PyYAML and OpenCV:
:func:`fallback_requirements`, at the versions installed here); pip's default
``only-if-needed`` strategy installs them from the bundle **only** where the image's own
do not satisfy gi_utils (an image with albumentations 1.4.21 or later keeps its own). The
compiled ones (simsimd, stringzilla, pydantic-core) are the wheels for the Python that runs
``make kaggle``: run it with the image's Python version (3.11 in the 2026 image) for them
to install there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement  # accelerate's dependency
from packaging.utils import canonicalize_name

from gi_utils.atomic import atomic_write_json
from gi_utils.constants import KAGGLE_COMPETITION
from gi_utils.paths import REPO_ROOT
from gi_utils.pipeline.notebook_files import NOTEBOOKS_DIR, SETUP_SCRIPT
from gi_utils.report.selection import BEST_CONFIG_NAME, read_best_config

__all__ = [
    "KAGGLE_MISSING",
    "KAGGLE_FALLBACK",
    "KAGGLE_IMAGE_BASE",
    "KAGGLE_BUNDLE_SLUG",
    "KAGGLE_DIR",
    "bundle_requirements",
    "fallback_requirements",
    "build_wheels",
    "kernel_best_config",
    "build_kaggle_bundle",
]

#: Distributions the notebooks need that the Kaggle Python image does not ship.
KAGGLE_MISSING: tuple[str, ...] = ("segmentation-models-pytorch", "monai")
#: Distributions the image ships, perhaps older than gi_utils needs: bundled with what they
#: need (:func:`fallback_requirements`), installed from the bundle only where the image's are too old.
KAGGLE_FALLBACK: tuple[str, ...] = ("albumentations",)
#: What every Kaggle image ships at versions gi_utils works with (never bundled: large,
#: compiled, and required by gi_utils itself).
KAGGLE_IMAGE_BASE: tuple[str, ...] = ("numpy", "scipy", "pyyaml", "opencv-python-headless", "torch", "torchvision")
#: The dataset's name on Kaggle (``<user>/<slug>``), mounted at ``/kaggle/input/<slug>``.
KAGGLE_BUNDLE_SLUG = "gi-tract-segmentation-bundle"
#: Where ``make kaggle`` writes (relative to the working folder: the checkout for make).
KAGGLE_DIR = Path("dist") / "kaggle"


def bundle_requirements(extra: tuple[str, ...] = KAGGLE_MISSING) -> list[str]:
    """``extra`` pinned to the versions installed here (``name==version``); a name that
    is not installed stays unpinned."""
    pins = []
    for name in extra:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def fallback_requirements(roots: tuple[str, ...] = KAGGLE_FALLBACK,
                          base: tuple[str, ...] = KAGGLE_IMAGE_BASE) -> list[str]:  # fmt: skip
    """``roots`` and the installed distributions they need (their requirements followed,
    markers evaluated here; ``base`` not followed), pinned ``name==version`` as installed."""
    skip = {canonicalize_name(n) for n in base}
    todo, seen = [Requirement(r) for r in roots], {}
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in skip or name in seen:
            continue
        try:
            seen[name] = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue  # not installed here: nothing to bundle
        todo += [r for r in map(Requirement, seen[name].requires or []) if not r.marker or r.marker.evaluate()]
    return sorted(f"{d.metadata['Name']}=={d.version}" for d in seen.values())


def build_wheels(out_dir: str | os.PathLike, extra: tuple[str, ...] = KAGGLE_MISSING,
                 fallback: tuple[str, ...] = KAGGLE_FALLBACK) -> list[Path]:  # fmt: skip
    """``pip wheel --no-deps`` of this project, of ``extra`` (at the versions installed
    here, :func:`bundle_requirements`) and of ``fallback`` with what it needs
    (:func:`fallback_requirements`) into ``out_dir``, flat, with ``gi_setup.py`` beside them
    (:data:`~gi_utils.pipeline.notebook_files.SETUP_SCRIPT`: the steps the notebooks' first
    cell finds there and runs, before gi_utils is installed).

    Raises:
        RuntimeError: pip failed (its command and output are in the message).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(out), str(REPO_ROOT),
           *bundle_requirements(extra), *(fallback_requirements(fallback) if fallback else [])]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    shutil.copyfile(SETUP_SCRIPT, out / SETUP_SCRIPT.name)
    return sorted(out.glob("*.whl"))


def kernel_best_config(slug: str = KAGGLE_BUNDLE_SLUG) -> str:
    """04's ``best_config`` in the kernel: the bundle's file, relative to the kernel's
    working folder ``/kaggle/working`` (so ``/kaggle/input/<slug>/best_config.json``)."""
    return f"../input/{slug}/{BEST_CONFIG_NAME}"


def _copy_models(record: dict[str, Any], dataset: Path) -> list[str]:
    """Copy the chosen models (and their ``.json``) to the top of ``dataset``; their names."""
    names = []
    for k, path in enumerate(record["model_paths"]):
        name = f"{k:02d}_{Path(path).parent.name}.safetensors"
        shutil.copyfile(path, dataset / name)
        if Path(path).with_suffix(".json").is_file():
            shutil.copyfile(Path(path).with_suffix(".json"), (dataset / name).with_suffix(".json"))
        names.append(name)
    return names


def _write_kernel(kernel: Path, user: str, slug: str) -> None:
    kernel.mkdir(parents=True)
    import papermill as pm  # here: papermill -> nbformat -> jsonschema costs about 1.3 s at import, which every notebook kernel importing gi_utils.pipeline would pay

    pm.execute_notebook(str(NOTEBOOKS_DIR / "04_submission.ipynb"), str(kernel / "04_submission.ipynb"),
                        parameters={"best_config": kernel_best_config(slug)}, prepare_only=True,
                        progress_bar=False)  # fmt: skip
    atomic_write_json(kernel / "kernel-metadata.json", {
        "id": f"{user}/{slug}-submission", "title": "GI tract segmentation submission",
        "code_file": "04_submission.ipynb", "language": "python", "kernel_type": "notebook",
        "is_private": "true", "enable_gpu": "true", "enable_internet": "false",
        "dataset_sources": [f"{user}/{slug}"], "competition_sources": [KAGGLE_COMPETITION],
        "kernel_sources": [], "model_sources": [],
    })  # fmt: skip


def build_kaggle_bundle(
    runs_root: str | os.PathLike, out_dir: str | os.PathLike = KAGGLE_DIR, *, user: str = "your-kaggle-name",
    slug: str = KAGGLE_BUNDLE_SLUG, best_config: str | os.PathLike | None = None, wheels: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Write ``out_dir/dataset`` and, when there are models, ``out_dir/kernel`` (see the
    module docstring). Both are built in ``<out_dir>.partial`` and then moved into place,
    so an interrupted call leaves the previous bundle whole.

    Args:
        runs_root: the runs folder; its ``best_config.json`` (written by ``03_compare``)
            names the models. Without it the dataset holds the wheels only.
        out_dir: the output folder (replaced).
        user, slug: the Kaggle owner and dataset name (``user/slug``).
        best_config: another best configuration file (must exist).
        wheels: build the wheels (tests of the layout alone pass False).

    Returns:
        ``{"dataset": path, "kernel": path or None, "wheels": [...], "models": [...]}``
        (wheel paths inside ``out_dir``, model file names).

    Raises:
        FileNotFoundError: ``best_config`` was given and does not exist, or names a
            model file that does not exist (named).
        RuntimeError: building a wheel failed.
    """
    config_path = Path(best_config) if best_config else Path(runs_root) / BEST_CONFIG_NAME
    if best_config and not config_path.is_file():
        raise FileNotFoundError(f"no best configuration at {config_path}: run 03_compare first, or pass another file")
    out = Path(out_dir)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    dataset, kernel = staging / "dataset", staging / "kernel"
    dataset.mkdir(parents=True)
    names: list[str] = []
    if config_path.is_file():
        record = read_best_config(config_path)
        names = _copy_models(record, dataset)
        atomic_write_json(dataset / BEST_CONFIG_NAME, {
            **{k: v for k, v in record.items() if k not in ("post", "default_post")}, "model_paths": names,
            "post": record["post"].to_dict(), "default_post": record["default_post"].to_dict(),
        })  # fmt: skip
    built = build_wheels(dataset) if wheels else []
    atomic_write_json(dataset / "dataset-metadata.json", {
        "title": "GI tract segmentation bundle", "id": f"{user}/{slug}", "licenses": [{"name": "CC0-1.0"}],
        "subtitle": "gi_utils wheels (and the chosen models) for the notebooks, offline",
    })  # fmt: skip
    if names:
        _write_kernel(kernel, user, slug)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return {"dataset": out / "dataset", "kernel": out / "kernel" if names else None,
            "wheels": [out / "dataset" / p.name for p in built], "models": names}  # fmt: skip
