"""Platform stand-ins for the tests: the Kaggle Python image, a fresh Kaggle or Colab
session over it, and the internet cut off.

Two levels, like the platform itself:

* an **image layer** (:func:`kaggle_image`, :func:`base_layer`): a virtual environment
  built once and cached under :func:`cache_dir`, keyed by a hash of what it holds. The
  Kaggle layer installs ``kaggle_image.txt`` (the image's pins) with pip; torch and
  torchvision (and the CUDA wheels they require) are not downloaded again but hard-linked,
  with their ``*.dist-info``, from the environment running the tests: they stand for the
  CUDA torch the image ships, and pip sees them as installed.
* a **session** (:func:`new_session`): a new ``venv --without-pip`` whose site-packages
  holds a ``.pth`` that adds the layer's site-packages *after* its own. It costs a few
  milliseconds, pip runs from the layer (``python -m pip``) and installs into the session
  only, so nothing one session installs is seen by the next one, exactly like a new Kaggle
  session. Options: ``network=False`` writes a ``sitecustomize`` that refuses every
  connection to a non-loopback address and every DNS lookup of a non-local name (Jupyter's
  kernels talk over 127.0.0.1 and keep working); ``colab=True`` adds a fake
  ``google.colab`` (see :mod:`colab_fake`) and sets ``COLAB_RELEASE_TAG``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HERE = Path(__file__).resolve().parent
KAGGLE_REQUIREMENTS = HERE / "kaggle_image.txt"
#: Distributions hard-linked from the running environment into the Kaggle layer (with
#: everything they require that ``kaggle_image.txt`` does not pin).
KAGGLE_LINKED = ("torch", "torchvision")
#: What the image does not ship: the bundle of ``make kaggle`` brings them.
KAGGLE_ABSENT = ("gi-utils", "segmentation-models-pytorch", "monai")
CACHE_ENV = "GI_STANDIN_CACHE"
PY_TAG = f"python{sys.version_info.major}.{sys.version_info.minor}"


def cache_dir() -> Path:
    """``$GI_STANDIN_CACHE``, else ``~/.cache/gi-tract-segmentation/standin`` (on the same
    filesystem as the running environment, so that hard links work)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "gi-tract-segmentation" / "standin")


def base_python() -> str:
    """The interpreter the running virtual environment was made from."""
    return getattr(sys, "_base_executable", None) or sys.executable


def site_packages(prefix: Path) -> Path:
    """The ``site-packages`` of the virtual environment at ``prefix``."""
    return prefix / "lib" / PY_TAG / "site-packages"


def _requirements(path: Path) -> list[str]:
    lines = (ln.split("#")[0].strip() for ln in path.read_text().splitlines())
    return [ln for ln in lines if ln]


def dependency_closure(roots: Iterable[str], exclude: Iterable[str] = ()) -> list[metadata.Distribution]:
    """The installed distributions ``roots`` need (themselves included), following
    ``Requires-Dist`` with markers and extras evaluated; ``exclude`` names are not
    followed (their own versions come from elsewhere).

    Raises:
        metadata.PackageNotFoundError: a required distribution is not installed (named).
    """
    skip = {canonicalize_name(n) for n in exclude}
    todo = [Requirement(r) for r in roots]
    seen: dict[str, metadata.Distribution] = {}
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in skip:
            continue
        if name not in seen:
            try:
                seen[name] = metadata.distribution(req.name)
            except metadata.PackageNotFoundError:
                raise metadata.PackageNotFoundError(f"{req.name} (needed for {list(roots)})") from None
            extras = {""}
        else:
            extras = set()
        extras |= set(req.extras)
        for line in seen[name].requires or []:
            dep = Requirement(line)
            if not dep.marker or any(dep.marker.evaluate({"extra": e}) for e in extras):
                todo.append(dep)
    return sorted(seen.values(), key=lambda d: canonicalize_name(d.metadata["Name"]))


def _top_level_entries(dist: metadata.Distribution) -> set[str]:
    """The first path components of a distribution's files in site-packages."""
    tops = set()
    for f in dist.files or []:
        part = f.parts[0]
        if part not in ("..", "__pycache__") and not part.endswith(".pth"):
            tops.add(part)
    return tops


def link_distributions(dists: Iterable[metadata.Distribution], dest_site: Path) -> None:
    """Hard-link (``cp -al``; a copy where links are impossible) each distribution's files
    and ``dist-info`` into ``dest_site``."""
    src_site = Path(sysconfig.get_paths()["purelib"])
    for dist in dists:
        for top in sorted(_top_level_entries(dist)):
            src, dst = src_site / top, dest_site / top
            if dst.exists() or not src.exists():
                continue
            done = subprocess.run(["cp", "-al", str(src), str(dst)], capture_output=True)
            if done.returncode != 0:
                shutil.rmtree(dst, ignore_errors=True) if dst.is_dir() else dst.unlink(missing_ok=True)
                (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)


def _pip(python: Path, *args: str) -> None:
    cmd = [str(python), "-m", "pip", "--disable-pip-version-check", *args]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # a checkout on it would be seen as installed
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def _build_layer(name: str, key_text: str, build) -> Path:
    """Build (once) the layer ``name`` keyed by ``key_text``; ``build(prefix)`` fills it."""
    key = hashlib.sha256(f"{sys.version}\n{key_text}".encode()).hexdigest()[:12]
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    prefix = root / f"{name}-{key}"
    done = prefix / ".standin-complete"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.is_file():
            return prefix
        shutil.rmtree(prefix, ignore_errors=True)
        start = time.perf_counter()
        subprocess.run([base_python(), "-m", "venv", "--without-pip", str(prefix)], check=True)
        build(prefix)
        done.write_text(json.dumps({"build_seconds": round(time.perf_counter() - start, 1)}))
    return prefix


def kaggle_image(pins: dict[str, str] | None = None) -> Path:
    """The Kaggle image layer (built once, then reused): ``kaggle_image.txt`` installed
    with pip over torch and torchvision hard-linked from this environment. ``pins``
    replaces some of its pins (``{"albumentations": "1.4.20"}``: an older image), a layer
    of its own. Returns its prefix (a virtual environment)."""
    pins = {canonicalize_name(k): v for k, v in (pins or {}).items()}
    lines = [f"{Requirement(p).name}=={pins[canonicalize_name(Requirement(p).name)]}"
             if canonicalize_name(Requirement(p).name) in pins else p for p in _requirements(KAGGLE_REQUIREMENTS)]
    pinned = [Requirement(p).name for p in lines]
    linked = dependency_closure(KAGGLE_LINKED, exclude=pinned)
    text = "\n".join(lines) if pins else KAGGLE_REQUIREMENTS.read_text()  # the image's key as it was
    key = "\n".join([text, *(f"{d.metadata['Name']}=={d.version}" for d in linked)])

    def build(prefix: Path) -> None:
        link_distributions([*linked, *dependency_closure(["pip"])], site_packages(prefix))
        requirements = prefix / "kaggle_image.txt"
        requirements.write_text("\n".join(lines) + "\n")
        _pip(prefix / "bin" / "python", "install", "-q", "-r", str(requirements))
        _pip(prefix / "bin" / "python", "check")

    name = "kaggle-image" + "".join(f"-{k}-{v}" for k, v in sorted(pins.items()))
    return _build_layer(name, key, build)


def base_requirements() -> list[str]:
    """The project's ``[project] dependencies`` (no extras), read from ``pyproject.toml``."""
    pyproject = tomllib.loads((HERE.parents[1] / "pyproject.toml").read_text())
    return list(pyproject["project"]["dependencies"])


def base_layer() -> Path:
    """A layer with only the base dependencies of gi_utils (what ``pip install .`` without
    extras installs), hard-linked from this environment at its versions, checked with
    ``pip check``. Returns its prefix."""
    dists = dependency_closure(base_requirements())
    key = "\n".join(f"{d.metadata['Name']}=={d.version}" for d in dists)

    def build(prefix: Path) -> None:
        link_distributions([*dists, *dependency_closure(["pip"])], site_packages(prefix))
        _pip(prefix / "bin" / "python", "check")

    return _build_layer("base", key, build)


@dataclass
class Session:
    """A fresh environment over an image layer; :meth:`env` is its process environment."""

    prefix: Path
    layer: Path
    platform_root: Path
    network: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def python(self) -> Path:
        return self.prefix / "bin" / "python"

    @property
    def site(self) -> Path:
        return site_packages(self.prefix)

    def env(self, **more: str) -> dict[str, str]:
        """This machine's environment without what points into the project (PYTHONPATH,
        ``GI_*``, the virtual environment, pip's configuration), plus the session's. With the
        network cut off, the switches that keep libraries from going online
        (``HF_HUB_OFFLINE``, ``NO_ALBUMENTATIONS_UPDATE``) are dropped too: Kaggle sets neither."""
        drop = ("GI_", "PIP_", "PYTHON", "VIRTUAL_ENV", "JUPYTER", *(() if self.network else ("HF_HUB_OFFLINE", "NO_ALBUMENTATIONS_UPDATE")))
        keep = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        keep["PATH"] = f"{self.prefix / 'bin'}{os.pathsep}{keep.get('PATH', '')}"
        return {**keep, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                "JUPYTER_PATH": str(self.prefix / "share" / "jupyter"), "GI_PLATFORM_ROOT": str(self.platform_root),
                "PYTHONNOUSERSITE": "1", **self.extra_env, **more}  # fmt: skip

    def run(self, args: list[str], cwd: Path, timeout: float = 900, **env: str) -> subprocess.CompletedProcess:
        """``python args...`` in the session (text output captured)."""
        return subprocess.run([str(self.python), *args], cwd=cwd, env=self.env(**env), capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip

    def installed(self) -> set[str]:
        """Canonical names of the distributions installed into the session itself."""
        return {canonicalize_name(p.name.split("-")[0]) for p in self.site.glob("*.dist-info")}


def new_session(
    layer: Path, prefix: Path, platform_root: Path, *, network: bool = True, colab: bool = False,
    drive: bool = True,
) -> Session:  # fmt: skip
    """A fresh session over ``layer`` at ``prefix``.

    Args:
        layer: an image layer's prefix (:func:`kaggle_image`, :func:`base_layer`).
        prefix: the new environment (must not exist).
        platform_root: ``GI_PLATFORM_ROOT`` of the session (``/kaggle/...`` lies below it).
        network: False cuts the internet off (Kaggle's "internet off").
        colab: add the fake ``google.colab`` and set ``COLAB_RELEASE_TAG``.
        drive: with ``colab``, whether ``drive.mount`` succeeds.
    """
    subprocess.run([base_python(), "-m", "venv", "--without-pip", str(prefix)], check=True)
    site = site_packages(prefix)
    (site / "_standin_image_layer.pth").write_text(f"import site; site.addsitedir({str(site_packages(layer))!r})\n")
    kernel = prefix / "share" / "jupyter" / "kernels" / "python3"
    kernel.mkdir(parents=True)
    (kernel / "kernel.json").write_text(json.dumps({
        "argv": [str(prefix / "bin" / "python"), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)", "language": "python"}))  # fmt: skip
    extra: dict[str, str] = {}
    if not network:
        shutil.copyfile(HERE / "network_guard.py", site / "sitecustomize.py")
    if colab:
        shutil.copytree(HERE / "colab_fake" / "google", site / "google", ignore=shutil.ignore_patterns("__pycache__"))
        extra.update(COLAB_RELEASE_TAG="standin", GI_STANDIN_DRIVE="1" if drive else "0")
    return Session(prefix, layer, platform_root, network, extra)
