# Setup: make gi_utils importable. Does nothing where it already is (a checkout after
# `make venv`); otherwise pip-installs it from, in order: the checkout this notebook sits
# in (pip -e); the wheels of `make kaggle`, first offline (--no-index), then with the
# package index for what they lack: on Kaggle the bundle dataset attached to the notebook
# (/kaggle/input/<dataset>/ or one folder below), on Colab MyDrive/gi-tract-segmentation/wheels
# (Drive is mounted first); last GI_REPO_URL, only when you set it (a pip requirement).
# Platform folders are read below $GI_PLATFORM_ROOT (default /), like gi_utils.paths.
# One source for every notebook: notebooks/setup_cell.py (`make notebooks` copies it).
import glob
import importlib
import importlib.util
import os
import site
import subprocess
import sys

if importlib.util.find_spec("gi_utils") is None or os.environ.get("GI_SETUP_FORCE") == "1":
    root = os.environ.get("GI_PLATFORM_ROOT") or "/"
    here = os.path.abspath(os.getcwd())
    checkouts = [d for d in (here, os.path.dirname(here)) if os.path.isfile(os.path.join(d, "pyproject.toml")) and os.path.isdir(os.path.join(d, "gi_utils"))]
    places = [os.path.join(root, "kaggle", "input", "*"), os.path.join(root, "kaggle", "input", "*", "*")]
    if os.environ.get("COLAB_RELEASE_TAG"):
        drive_dir = os.path.join(root, "content", "drive")
        if not os.path.isdir(os.path.join(drive_dir, "MyDrive")):
            try:
                from google.colab import drive

                drive.mount(drive_dir)
            except Exception as err:  # no Drive: the other sources may still work
                print(f"Google Drive not mounted at {drive_dir}: {err}")
        places.append(os.path.join(drive_dir, "MyDrive", "gi-tract-segmentation", "wheels"))
    wheel_dirs = sorted({os.path.dirname(w) for place in places for w in glob.glob(os.path.join(place, "*.whl"))})
    attempts = [(f"the checkout {d}", ["-e", d]) for d in checkouts[:1]]
    if wheel_dirs:
        links = [f"--find-links={d}" for d in wheel_dirs]
        attempts.append((f"the wheels in {', '.join(wheel_dirs)} (offline)", ["--no-index", *links, "gi-utils"]))
        attempts.append((f"the wheels in {', '.join(wheel_dirs)} and the package index", [*links, "gi-utils"]))
    if os.environ.get("GI_REPO_URL"):
        attempts.append((f"the repository {os.environ['GI_REPO_URL']}", [os.environ["GI_REPO_URL"]]))
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
        raise RuntimeError(
            "could not install gi_utils; tried: " + ("; ".join(tried) or "nothing") + f". No usable wheels in {', '.join(places)}."
            " On Kaggle: attach the bundle dataset of `make kaggle` (kaggle datasets create -p dist/kaggle/dataset) to this notebook."
            " On Colab: copy the wheels of `make kaggle` (dist/kaggle/dataset/*.whl) to MyDrive/gi-tract-segmentation/wheels."
            " Or set GI_REPO_URL to a pip requirement of the project (e.g. git+https://...)."
        )
