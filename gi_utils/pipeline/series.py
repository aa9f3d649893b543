"""The notebook series as a pipeline: papermill runs that a second call continues.

``python -m gi_utils.pipeline`` (``make demo``) makes the synthetic dataset if no data is
found, then runs ``01_eda`` → ``02_train`` for each demo architecture (every fold of
:data:`DEMO_CV_ARCHS`, fold 0 of the others) → ``03_compare`` (the choice of the
submission on out-of-fold predictions) → ``04_submission`` through papermill, keeping every executed notebook in
``<runs>/notebooks/``. Only the runs folder is written (tables and figures in
``<runs>/pictures``); ``make docs`` publishes them (README, ``docs/``, ``pictures/``).

Every finished notebook leaves a record (``<runs>/notebooks/<name>.done.json`` with its
parameters): running the command again after a crash (a kernel that died, a closed
session) skips the notebooks already done with the same parameters and continues with the
rest, and a training notebook resumes its run from ``last.pt``. The executed notebooks are
also gathered into one report without code, ``<runs>/report.html`` (:func:`demo_report`),
which ``make docs`` publishes under ``docs/demo/`` with each notebook's own page.
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
from gi_utils.pipeline.notebook_files import NOTEBOOKS_DIR, SMOKE_NOTE_TAG, headless_kernel_env
from gi_utils.pipeline.publish import drop_tagged_cells, export_html, report_notebook
from gi_utils.training.presets import preset_config

__all__ = ["DEMO_ARCHS", "DEMO_CV_ARCHS", "REPORT_TITLE", "run_notebook", "demo_notebooks", "demo_report", "demo"]

#: The title of the demo's report.
REPORT_TITLE = "GI tract segmentation: the demo run"

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
    headless_kernel_env()
    import nbformat  # here, not with the module (pipeline/notebook_files.py)
    import papermill as pm

    pm.execute_notebook(str(src), str(out), parameters=params, cwd=str(src.parent),
                        kernel_name="python3", progress_bar=False, log_output=False)  # fmt: skip
    done = nbformat.read(out, as_version=4)  # run for real: the note on the committed smoke outputs goes
    atomic_write_text(out, nbformat.writes(drop_tagged_cells(done, (SMOKE_NOTE_TAG,))))
    seconds = time.perf_counter() - t0
    atomic_write_json(record, {"notebook": src.name, "parameters": params, "seconds": round(seconds, 1)})
    print(f"    done in {seconds:.0f} s", flush=True)
    return out


def demo_notebooks(nb_dir: str | os.PathLike, archs: tuple[str, ...] = DEMO_ARCHS) -> list[Path]:
    """The demo's executed notebooks in reading order: 01, 02 for each of ``archs`` (those
    present), 03, 04.

    Raises:
        FileNotFoundError: 01, 03, 04 or every 02 is missing (run ``make demo`` first).
    """
    folder = Path(nb_dir)
    trains = [folder / f"02_train_{a}.ipynb" for a in archs if (folder / f"02_train_{a}.ipynb").is_file()]
    paths = [folder / "01_eda.ipynb", *trains, folder / "03_compare.ipynb", folder / "04_submission.ipynb"]
    missing = [p.name for p in paths if not p.is_file()] + ([] if trains else ["02_train_<arch>.ipynb"])
    if missing:
        raise FileNotFoundError(f"{folder} lacks {missing}: run `make demo` first")
    return paths


def _report_intro(first: Path) -> str:
    import nbformat

    setup_output = "".join(o.get("text", "") for c in nbformat.read(first, as_version=4).cells
                           for o in c.get("outputs", []) if c.cell_type == "code" and "runpy" in c.source)  # fmt: skip
    data = ("**The data are SYNTHETIC**: phantom scans made by `gi_utils.synthetic`, not patients' MRI. Every score "
            "below measures the pipeline on these made-up scans; none is comparable with the competition's "
            "leaderboard." if "SYNTHETIC DATA" in setup_output else "The data are the competition's scans.")  # fmt: skip
    return (f"{data}\n\nThe notebooks of `make demo`, executed in order, without their code: the data (01), each "
            "training run (02), the choice of the submission on out-of-fold predictions (03) and the submission "
            "itself (04). The code and the notebooks themselves are in the repository.")  # fmt: skip


def demo_report(nb_dir: str | os.PathLike, out: str | os.PathLike, archs: tuple[str, ...] = DEMO_ARCHS) -> Path:
    """``report.html``: the demo's executed notebooks (:func:`demo_notebooks`) as one
    document without code (:func:`gi_utils.pipeline.publish.report_notebook`)."""
    paths = demo_notebooks(nb_dir, archs)
    report = report_notebook(paths, REPORT_TITLE, _report_intro(paths[0]))
    return export_html(report, out, title=REPORT_TITLE)


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
    run_notebook("03_compare", nb_dir, {**common, "runs": listed}, force=force)
    # no runs named: 04 submits the best configuration that 03 chose
    run_notebook("04_submission", nb_dir, {"runs_dir": str(runs), "data_dir": str(data_dir)}, force=force)
    print(f"report: {demo_report(nb_dir, runs / 'report.html', archs)}")
    print(f"demo finished in {(time.perf_counter() - t0) / 60:.1f} min; notebooks in {nb_dir}")
    table = pictures / "results.md"
    if table.is_file():
        print(table.read_text(encoding="utf-8"))
    print(f"results and figures in {pictures}; `make docs` publishes them (README.md, docs/, pictures/)")
    return pictures
