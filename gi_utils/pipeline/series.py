"""The notebook series as a pipeline: papermill runs that a second call continues.

``python -m gi_utils.pipeline`` (``make demo``) makes the synthetic dataset if no data is
found, then runs ``01_eda`` → ``02_train`` for each demo architecture (every fold of
:data:`DEMO_CV_ARCHS`, fold 0 of the others) → ``03_compare`` (the choice of the
submission on out-of-fold predictions) → ``04_submission`` through papermill, keeping every executed notebook in
``<runs>/notebooks/``. Only the runs folder is written (tables and figures in
``<runs>/pictures``); ``make docs`` copies them into the README.

Every finished notebook leaves a record (``<runs>/notebooks/<name>.done.json`` with its
parameters): running the command again after a crash (a kernel that died, a closed
session) skips the notebooks already done with the same parameters and continues with the
rest, and a training notebook resumes its run from ``last.pt``. The executed comparison is
also exported as one self-contained HTML file, ``<runs>/report.html``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gi_utils.atomic import atomic_write_json, atomic_write_text, read_json
from gi_utils.models.run_folder import run_name
from gi_utils.paths import default_runs_dir
from gi_utils.pipeline.data_root import ensure_data
from gi_utils.pipeline.notebook_files import NOTEBOOKS_DIR
from gi_utils.training.presets import preset_config

__all__ = ["DEMO_ARCHS", "DEMO_CV_ARCHS", "run_notebook", "export_html", "demo"]

#: Architectures trained by ``make demo`` (preset ``demo``), and those trained on every fold
#: (cross-validation); the others train on fold 0. UNet++ (the slowest per step on a CPU)
#: is left out of the 15-minute CPU budget: ``python -m gi_utils.pipeline cv --arch
#: unetplusplus --folds 0`` adds it, and ``03_compare`` picks it up.
DEMO_ARCHS: tuple[str, ...] = ("unet", "deeplabv3plus")
DEMO_CV_ARCHS: tuple[str, ...] = ("unet",)


def run_notebook(name: str, out_dir: str | os.PathLike, parameters: Mapping[str, Any] | None = None,
                 tag: str = "", force: bool = False) -> Path:  # fmt: skip
    """Execute ``notebooks/<name>.ipynb`` with papermill into ``out_dir``; return its path.

    A notebook already finished with the same parameters (its ``.done.json`` record) is
    not run again unless ``force``.
    """
    src = NOTEBOOKS_DIR / f"{name}.ipynb"
    out = Path(out_dir) / f"{name}{'_' + tag if tag else ''}.ipynb"
    record = out.with_suffix(".done.json")
    params = dict(parameters or {})
    if not force and out.is_file() and record.is_file() and read_json(record).get("parameters") == params:
        print(f"--- {out.name}: done before with the same parameters; skipped", flush=True)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    record.unlink(missing_ok=True)
    t0 = time.perf_counter()
    print(f"--- {src.name} -> {out} {params}", flush=True)
    os.environ["GI_HEADLESS"] = "1"  # the kernel inherits it: text progress, static viewer
    import papermill as pm  # here, not with the module (pipeline/notebook_files.py)

    pm.execute_notebook(str(src), str(out), parameters=params, cwd=str(src.parent),
                        kernel_name="python3", progress_bar=False, log_output=False)  # fmt: skip
    seconds = time.perf_counter() - t0
    atomic_write_json(record, {"notebook": src.name, "parameters": params, "seconds": round(seconds, 1)})
    print(f"    done in {seconds:.0f} s", flush=True)
    return out


def export_html(notebook: str | os.PathLike, out: str | os.PathLike) -> Path:
    """One self-contained HTML file of an executed notebook (figures embedded), atomically.

    nbconvert (the ``notebooks`` extra) is imported here, not with the module: every other
    part of ``gi_utils`` imports with the base dependencies alone (a Kaggle kernel).

    Raises:
        ImportError: nbconvert is not installed (says what to install).
    """
    try:
        from nbconvert import HTMLExporter
    except ImportError as err:
        raise ImportError(f"export_html({notebook}) needs nbconvert: pip install 'gi-utils[notebooks]'") from err
    import nbformat

    body, _ = HTMLExporter(template_name="lab", embed_images=True).from_notebook_node(nbformat.read(notebook, as_version=4))
    return atomic_write_text(out, body)


def demo(runs_dir: str | os.PathLike | None = None, archs: tuple[str, ...] = DEMO_ARCHS,
         force: bool = False) -> Path:  # fmt: skip
    """Run the whole series headlessly (see the module docstring); returns the folder of
    the results table and figures (``<runs>/pictures``)."""
    t0 = time.perf_counter()
    data_dir = ensure_data("")
    runs = default_runs_dir(runs_dir)
    pictures = runs / "pictures"
    nb_dir = runs / "notebooks"
    common = {"runs_dir": str(runs), "pictures_dir": str(pictures)}
    run_notebook("01_eda", nb_dir, {**common, "data_dir": str(data_dir)}, force=force)
    names = []
    for arch in archs:
        cfg = preset_config("demo", arch=arch)
        folds = list(range(cfg.n_folds)) if arch in DEMO_CV_ARCHS else [cfg.fold]
        names += [run_name(cfg, k) for k in folds]
        params = {**common, "preset": "demo", "arch": arch, "data_dir": str(data_dir),
                  "folds": "all" if arch in DEMO_CV_ARCHS else ""}  # fmt: skip
        run_notebook("02_train", nb_dir, params, tag=arch, force=force)
    listed = ",".join(names)
    compare = run_notebook("03_compare", nb_dir, {**common, "runs": listed}, force=force)
    html = export_html(compare, runs / "report.html")
    print(f"report: {html}")
    # no runs named: 04 submits the best configuration that 03 chose
    run_notebook("04_submission", nb_dir, {"runs_dir": str(runs), "data_dir": str(data_dir)}, force=force)
    print(f"demo finished in {(time.perf_counter() - t0) / 60:.1f} min; notebooks in {nb_dir}")
    table = pictures / "results.md"
    if table.is_file():
        print(table.read_text(encoding="utf-8"))
    print(f"results and figures in {pictures}; `make docs` copies them into README.md and pictures/")
    return pictures
