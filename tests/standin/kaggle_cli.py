"""What the official ``kaggle`` CLI delivers, replayed on disk for the stand-ins (tests only).

The rules are those of kaggle-api (``src/kaggle/api/kaggle_api_extended.py``,
``KaggleApi.upload_files`` and ``_upload_file_or_folder``, read at commit 1744cda1):
``kaggle datasets create|version -p DIR`` uploads each top-level *file* of ``DIR`` except the
metadata files (``dataset-metadata.json``, ``datapackage.json``, ``kernel-metadata.json``,
...); a sub-folder is skipped ("Skipping folder: ...; use '--dir-mode' to upload folders")
unless ``--dir-mode zip|tar`` uploads it as one archive. Kaggle mounts the dataset read-only
at ``/kaggle/input/<slug>``. ``kaggle kernels push -p DIR`` sends ``code_file`` of
``kernel-metadata.json``; the kernel runs in ``/kaggle/working`` with the datasets and
competitions of its metadata attached.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

#: Files the CLI reads and never uploads.
METADATA_FILES = ("dataset-metadata.json", "datapackage.json", "kernel-metadata.json", "model-metadata.json",
                  "model-instance-metadata.json")  # fmt: skip


def readme_commands(readme: str, marker: str = "kaggle datasets create") -> list[list[str]]:
    """The commands (comments dropped, split like a shell) of the README's code block that
    contains ``marker``.

    Raises:
        LookupError: no code block contains ``marker``.
    """
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, flags=re.S):
        if marker in block:
            lines = (shlex.split(ln, comments=True) for ln in block.splitlines())
            return [ln for ln in lines if ln]
    raise LookupError(f"no code block of the README contains {marker!r}")


def _option(argv: list[str], names: tuple[str, ...], default: str | None = None) -> str | None:
    for k, arg in enumerate(argv):
        if arg in names:
            return argv[k + 1]
        for name in names:
            if arg.startswith(f"{name}="):
                return arg.split("=", 1)[1]
    return default


def upload_dataset(argv: list[str], cwd: Path, input_dir: Path) -> Path:
    """Replay ``kaggle datasets create ...`` (``argv`` without ``kaggle``) run in ``cwd``:
    the mount ``input_dir/<slug>`` as a notebook that attaches the dataset sees it.

    Raises:
        ValueError: ``argv`` is not a dataset upload, or ``--dir-mode`` is unknown.
        FileNotFoundError: the folder has no ``dataset-metadata.json`` (the CLI refuses it too).
    """
    if argv[:2] not in (["datasets", "create"], ["datasets", "version"]):
        raise ValueError(f"not a dataset upload: kaggle {' '.join(argv)}")
    folder = cwd / (_option(argv, ("-p", "--path")) or ".")
    mode = _option(argv, ("-r", "--dir-mode"), "skip")
    if mode not in ("skip", "zip", "tar"):
        raise ValueError(f"--dir-mode {mode!r}: the CLI knows skip, zip and tar")
    meta_path = folder / "dataset-metadata.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: the CLI needs the dataset's metadata")
    slug = json.loads(meta_path.read_text())["id"].split("/", 1)[1]
    mount = input_dir / slug
    mount.mkdir(parents=True)
    for entry in sorted(folder.iterdir()):
        if entry.name in METADATA_FILES:
            continue
        if entry.is_file():
            shutil.copy2(entry, mount / entry.name)
        elif entry.is_dir() and mode != "skip":  # one archive, which Kaggle unpacks into a folder
            shutil.copytree(entry, mount / entry.name)
    return mount


def push_kernel(argv: list[str], cwd: Path, working: Path) -> dict:
    """Replay ``kaggle kernels push -p DIR``: its code file copied alone into ``working``
    (the kernel's working folder). Returns the kernel's metadata.

    Raises:
        ValueError: ``argv`` is not a kernel push.
    """
    if argv[:2] != ["kernels", "push"]:
        raise ValueError(f"not a kernel push: kaggle {' '.join(argv)}")
    folder = cwd / (_option(argv, ("-p", "--path")) or ".")
    meta = json.loads((folder / "kernel-metadata.json").read_text())
    shutil.copy2(folder / meta["code_file"], working / meta["code_file"])
    return meta
