"""The notebook series as a pipeline: data on first use, parameter specs, papermill runs.

``python -m gi_utils.pipeline`` (``make demo``) makes the synthetic dataset if no data is
found, then runs ``01_eda`` → ``02_train`` for each of :data:`DEMO_ARCHS` → ``03_compare``
→ ``04_submission`` through papermill, keeping every executed notebook in
``runs/notebooks/``, and writes the README's results table and pictures.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gi_utils.paths import REPO_ROOT, DataNotFoundError, resolve_data_dir
from gi_utils.runs import default_runs_dir, on_kaggle

__all__ = [
    "SYNTH_CASES",
    "SYNTH_TEST_CASES",
    "SYNTH_SEED",
    "SYNTH_SLICES",
    "DEMO_ARCHS",
    "DEMO_TRAIN",
    "DEMO_ARCH_TRAIN",
    "EDA_PARAMS",
    "TRAIN_NOTEBOOK_PARAMS",
    "COMPARE_PARAMS",
    "SUBMISSION_PARAMS",
    "ensure_data",
    "run_name",
    "split_train_params",
    "run_notebook",
    "demo",
]

#: The synthetic dataset made on first use (and by ``make demo``): 24 cases of 1-3 scans
#: of 80 slices (a real scan length), about 50 scans, 0.5 GB and 20 s to write. Fewer cases
#: generalise worse: with 12, fold 0 validates on 2 patients and models trained on the other
#: 10 mistake plain tissue of unseen patients for bowel (UNet: Dice 0.80 instead of 0.88).
SYNTH_CASES, SYNTH_TEST_CASES, SYNTH_SEED, SYNTH_SLICES = 24, 2, 0, 80
#: Architectures trained by ``make demo``, and their shared settings (papermill -p values);
#: ``amp="auto"`` (bf16 on CPUs that have it: about 2x faster) and ``ema_decay=0.99`` are
#: TrainConfig defaults.
DEMO_ARCHS: tuple[str, ...] = ("unet", "unetplusplus", "deeplabv3plus")
DEMO_TRAIN: dict[str, Any] = {
    "img_size": 128,
    "epochs": 8,
    "batch_size": 16,
    "lr": 3e-3,
    "cache": "disk",
    "sample_empty_fraction": 0.5,
    "max_steps_per_epoch": 80,
    "min_size": 10,
}
#: Per-architecture settings of the demo, so the three runs fit the 15-minute budget on a
#: 2-core CPU: UNet and UNet++ with an encoder depth of 4 instead of 5 (which drops the
#: deepest decoder level: UNet++'s nested decoder otherwise makes it about three times
#: slower per step than UNet) and light decoders; DeepLabV3+, which learns more slowly
#: here, gets more epochs and UNet++, the slowest per step, fewer.
DEMO_ARCH_TRAIN: dict[str, dict[str, Any]] = {
    "unet": {"model_kwargs": {"encoder_depth": 4, "decoder_channels": [64, 32, 16, 16]}},
    "unetplusplus": {"model_kwargs": {"encoder_depth": 4, "decoder_channels": [64, 32, 16, 16]}, "epochs": 7},
    "deeplabv3plus": {"model_kwargs": {"decoder_channels": 128}, "epochs": 10},
}

#: Parameter specs (name -> expected type) of the notebooks' parameters cells.
EDA_PARAMS: dict[str, Any] = {
    "data_dir": str, "synthetic_if_missing": bool, "runs_dir": str, "pictures_dir": str,
    "n_overlays": int, "seed": int,
}  # fmt: skip
#: 02_train parameters that are not TrainConfig fields.
TRAIN_NOTEBOOK_PARAMS: dict[str, Any] = {
    "run_name": str, "runs_dir": str, "pictures_dir": str, "synthetic_if_missing": bool,
    "n_overlays": int, "num_processes": int,
}  # fmt: skip
COMPARE_PARAMS: dict[str, Any] = {
    "runs_dir": str, "runs": str, "data_dir": str, "pictures_dir": str, "n_slices": int,
    "write_readme": bool,
}  # fmt: skip
SUBMISSION_PARAMS: dict[str, Any] = {
    "runs_dir": str, "runs": str, "model_paths": str, "data_dir": str, "split": str,
    "out_csv": str, "tta": bool, "thresholds": (float, list), "min_size": int, "batch_size": int,
}  # fmt: skip


def ensure_data(data_dir: str | os.PathLike | None = "", synthetic_if_missing: bool = True) -> Path:
    """The data root; the synthetic dataset is written first if none is found.

    Synthetic data are made only when no folder was named (argument or ``GI_DATA_DIR``),
    ``synthetic_if_missing`` is on and this is not Kaggle (where a missing competition
    mount means the data were not attached, which should be an error). A synthetic dataset
    that this function wrote earlier with other parameters (an older version of the
    project) is written again, so the demo's figures refer to the data it documents.
    """
    target = _synthetic_target()
    try:
        root = resolve_data_dir(data_dir or None)
    except DataNotFoundError:
        if not synthetic_if_missing or data_dir or os.environ.get("GI_DATA_DIR") or on_kaggle():
            raise
        reason = "No data found"
    else:
        stale = not data_dir and not os.environ.get("GI_DATA_DIR") and synthetic_if_missing
        reason = _stale_synthetic(root) if stale and root.resolve() == target.resolve() else ""
        if not reason:
            return root
    from gi_utils.synth import generate_dataset

    print(f"{reason}: writing the synthetic dataset ({SYNTH_CASES} cases, seed {SYNTH_SEED}) "
          f"to {target.name}/")
    return generate_dataset(target, SYNTH_CASES, SYNTH_TEST_CASES, SYNTH_SEED,
                            slices_per_scan=SYNTH_SLICES, progress=False)  # fmt: skip


def _synthetic_target() -> Path:
    """Where :func:`ensure_data` writes: ``data/`` of the checkout, else of the cwd."""
    in_checkout = (REPO_ROOT / "pyproject.toml").is_file()
    return (REPO_ROOT if in_checkout else Path.cwd()) / "data"


def _synthetic_params() -> dict[str, Any]:
    """The ``params`` record (``synth.json``) of the dataset :func:`ensure_data` writes."""
    return {"n_cases": SYNTH_CASES, "n_test_cases": SYNTH_TEST_CASES, "seed": SYNTH_SEED,
            "slices_per_scan": SYNTH_SLICES, "size": None}  # fmt: skip


def _stale_synthetic(root: Path) -> str:
    """Why the synthetic dataset in ``root`` is not the one :func:`ensure_data` makes ('' if it is)."""
    import json

    from gi_utils.synth import MARKER

    try:
        params = json.loads((root / MARKER).read_text(encoding="utf-8"))["params"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""  # not a synthetic dataset of ours: real data are never touched
    want = _synthetic_params()
    if {k: params.get(k) for k in want} == want:
        return ""
    return f"{root.name}/ holds an older synthetic dataset ({params.get('n_cases')} cases)"


def run_name(arch: str, encoder: str, img_size: int, fold: int) -> str:
    """Default run folder name, e.g. ``unet_resnet18_128px_fold0``."""
    return f"{arch}_{encoder}_{img_size}px_fold{fold}"


def split_train_params(given: Mapping[str, Any]):
    """Split 02_train's parameters into a validated TrainConfig and the notebook's own.

    Fills ``out_dir`` (``<runs_dir>/<run_name>``) and ``data_dir`` when left empty.

    Returns:
        ``(TrainConfig, notebook_params)``.

    Raises:
        ParameterError: an unknown parameter (with the valid names) or a bad value.
    """
    from gi_utils.notebook import ParameterError, check_params
    from gi_utils.train import TrainConfig

    own = {k: v for k, v in given.items() if k in TRAIN_NOTEBOOK_PARAMS}
    rest = {k: v for k, v in given.items() if k not in TRAIN_NOTEBOOK_PARAMS}
    if rest.get("weights") == "":
        rest["weights"] = None  # "" in a parameters cell = random initialisation
    nb = check_params(own, TRAIN_NOTEBOOK_PARAMS)
    try:
        cfg = TrainConfig.from_dict(rest)
        runs = default_runs_dir(nb["runs_dir"])
        name = nb["run_name"] or run_name(cfg.arch, cfg.encoder, cfg.img_size, cfg.fold)
        cfg = TrainConfig.from_dict({**cfg.to_dict(), "out_dir": cfg.out_dir or str(runs / name)})
    except ValueError as err:
        raise ParameterError(f"02_train parameters: {err}") from None
    return cfg, nb


def run_notebook(name: str, out_dir: str | os.PathLike, parameters: Mapping[str, Any] | None = None, tag: str = "") -> Path:
    """Execute ``notebooks/<name>.ipynb`` with papermill into ``out_dir``; return its path."""
    import papermill as pm

    src = REPO_ROOT / "notebooks" / f"{name}.ipynb"
    out = Path(out_dir) / f"{name}{'_' + tag if tag else ''}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"--- {src.name} -> {out} {dict(parameters or {})}", flush=True)
    pm.execute_notebook(str(src), str(out), parameters=dict(parameters or {}), cwd=str(src.parent),
                        kernel_name="python3", progress_bar=False, log_output=False)  # fmt: skip
    print(f"    done in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def demo(runs_dir: str | os.PathLike | None = None, archs: tuple[str, ...] = DEMO_ARCHS, pictures_dir: str | os.PathLike | None = None) -> Path:
    """Run the whole series headlessly (see the module docstring)."""
    t0 = time.perf_counter()
    data_dir = ensure_data("")
    runs = default_runs_dir(runs_dir)
    pictures = Path(pictures_dir) if pictures_dir else REPO_ROOT / "pictures"
    nb_dir = runs / "notebooks"
    common = {"runs_dir": str(runs), "pictures_dir": str(pictures)}
    run_notebook("01_eda", nb_dir, {**common, "data_dir": str(data_dir)})
    names = []
    for arch in archs:
        name = run_name(arch, "resnet18", DEMO_TRAIN["img_size"], 0)
        names.append(name)
        params = {**common, **DEMO_TRAIN, **DEMO_ARCH_TRAIN.get(arch, {}), "arch": arch,
                  "run_name": name, "data_dir": str(data_dir)}  # fmt: skip
        run_notebook("02_train", nb_dir, params, tag=arch)
    listed = ",".join(names)
    run_notebook("03_compare", nb_dir, {**common, "runs": listed, "data_dir": str(data_dir), "write_readme": True})
    run_notebook("04_submission", nb_dir, {"runs_dir": str(runs), "runs": listed, "data_dir": str(data_dir)})
    print(f"demo finished in {(time.perf_counter() - t0) / 60:.1f} min; notebooks in {nb_dir}")
    return nb_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gi_utils.pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("--runs-dir", default=None, help="folder of run folders (default: runs/)")
    parser.add_argument("--archs", nargs="+", default=list(DEMO_ARCHS), help="architectures to train")
    parser.add_argument("--pictures-dir", default=None, help="figures and results table (default: pictures/)")
    parser.add_argument("--data-only", action="store_true", help="only make sure data exist (synthetic if none)")
    args = parser.parse_args(argv)
    if args.data_only:
        print(f"data: {ensure_data('')}")
        return 0
    demo(args.runs_dir, tuple(args.archs), args.pictures_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
