# Setup: make gi_utils importable. Does nothing where it already is (a checkout after
# `make venv`); otherwise tries, in order: the checkout this notebook sits in (pip -e),
# the wheels of `make kaggle` attached as a Kaggle dataset (internet off), then the
# project's repository, GI_REPO_URL (set it to where the project is published).
# One source for every notebook: notebooks/setup_cell.py (`make notebooks` copies it).
import glob
import importlib
import importlib.util
import os
import site
import subprocess
import sys

GI_REPO_URL = os.environ.get("GI_REPO_URL", "git+https://github.com/gi-tract-segmentation/gi-tract-segmentation")
if importlib.util.find_spec("gi_utils") is None or os.environ.get("GI_SETUP_FORCE") == "1":
    here = os.path.abspath(os.getcwd())
    checkouts = [d for d in (here, os.path.dirname(here)) if os.path.isfile(os.path.join(d, "pyproject.toml")) and os.path.isdir(os.path.join(d, "gi_utils"))]
    wheel_dirs = sorted({os.path.dirname(w) for w in glob.glob(os.environ.get("GI_KAGGLE_INPUT", "/kaggle/input") + "/*/*.whl")})
    attempts = [(f"the checkout {d}", ["-e", d]) for d in checkouts[:1]]
    if wheel_dirs:
        attempts.append((f"the wheels in {', '.join(wheel_dirs)}", ["--no-index", *(f"--find-links={d}" for d in wheel_dirs), "gi-utils"]))
    attempts.append((f"the repository {GI_REPO_URL}", [GI_REPO_URL]))
    tried = []
    for what, args in attempts:
        command = [sys.executable, "-m", "pip", "install", "-q", *args]
        if os.environ.get("GI_SETUP_DRY_RUN") == "1":
            print("gi_utils would be installed from", what, "with:", " ".join(command[1:]))
            break
        if subprocess.run(command).returncode == 0:
            for packages in site.getsitepackages():
                site.addsitedir(packages)  # activates an editable install in this kernel
            importlib.invalidate_caches()
            print("gi_utils installed from", what)
            break
        tried.append(what)
    else:
        raise RuntimeError("could not install gi_utils; tried: " + "; ".join(tried) + ". Attach the `make kaggle` dataset, turn the internet on, or set GI_REPO_URL")
