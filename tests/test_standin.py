"""The platform stand-ins themselves (tests/standin): the Kaggle image layer has the
image's pins and lacks what the bundle brings, sessions over it are fresh and see it, the
network guard refuses the outside and keeps loopback, and the Colab fake mounts Drive."""

from __future__ import annotations

import os
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from standin.image import KAGGLE_ABSENT, KAGGLE_REQUIREMENTS, new_session, site_packages

pytestmark = pytest.mark.slow  # the first run builds the image layer (about a minute)


def _pip_list(session) -> dict[str, str]:
    done = session.run(["-m", "pip", "list", "--format=freeze"], cwd=session.prefix)
    assert done.returncode == 0, done.stderr
    return {Requirement(ln).name.lower().replace("_", "-"): ln.split("==")[1] for ln in done.stdout.split()}


def _tiny_wheel(folder: Path, name: str = "standin_probe") -> Path:
    """A one-module wheel, written by hand."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-0.1-py3-none-any.whl"
    info = f"{name}-0.1.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}.py", "VALUE = 42\n")
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", f"{name}.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")
    return path


def test_image_layer_has_the_pins_and_lacks_the_bundle(kaggle_image, tmp_path):
    session = new_session(kaggle_image, tmp_path / "s", tmp_path / "root")
    installed = _pip_list(session)
    for line in KAGGLE_REQUIREMENTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            name = req.name.lower().replace("_", "-")
            assert name in installed and installed[name] in req.specifier, (line, installed.get(name))
    assert not set(KAGGLE_ABSENT) & set(installed)
    assert installed["torch"] == metadata.version("torch")  # the project's torch, standing for the image's
    # the same files as this environment's torch (hard-linked when the layer was built from
    # it; a layer cached from another checkout's environment holds equal copies)
    linked, own = site_packages(kaggle_image) / "torch" / "__init__.py", Path(torch.__file__)
    assert linked.read_bytes() == own.read_bytes()
    assert (site_packages(kaggle_image) / "torch" / "lib").is_dir()
    assert session.installed() == set()  # the session itself holds nothing yet


def test_sessions_are_fresh_and_see_the_image(kaggle_image, tmp_path):
    wheel = _tiny_wheel(tmp_path / "wheels")
    first = new_session(kaggle_image, tmp_path / "s1", tmp_path / "root")
    done = first.run(["-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheel.parent), "standin-probe"],
                     cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert first.run(["-c", "import standin_probe; print(standin_probe.VALUE)"], cwd=tmp_path).stdout.strip() == "42"
    assert first.installed() == {"standin-probe"}
    assert not list(site_packages(kaggle_image).glob("standin_probe*"))  # the image is untouched
    second = new_session(kaggle_image, tmp_path / "s2", tmp_path / "root")
    again = second.run(["-c", "import standin_probe"], cwd=tmp_path)
    assert again.returncode != 0 and "No module named 'standin_probe'" in again.stderr
    seen = second.run(["-c", "import sklearn, sys; print(sklearn.__version__, sys.prefix)"], cwd=tmp_path)
    assert seen.stdout.split() == ["1.2.2", str(second.prefix)]


def test_network_guard_refuses_the_outside_and_keeps_loopback(kaggle_image, tmp_path):
    session = new_session(kaggle_image, tmp_path / "s", tmp_path / "root", network=False)
    script = """
import socket
server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen(1)
client = socket.create_connection(server.getsockname(), timeout=5)
print("loopback ok")
for what in (lambda: socket.create_connection(("93.184.215.14", 443), timeout=5),
             lambda: socket.getaddrinfo("pypi.org", 443)):
    try:
        what()
    except OSError as err:
        print("refused:", err)
"""
    done = session.run(["-c", script], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "loopback ok"
    assert "network cut off (internet off): connection to 93.184.215.14:443 refused" in lines[1]
    assert "lookup of 'pypi.org' refused" in lines[2]
    online = new_session(kaggle_image, tmp_path / "online", tmp_path / "root")
    assert not (online.site / "sitecustomize.py").exists()


@pytest.mark.parametrize("drive", [True, False])
def test_colab_standin_mounts_drive_under_the_platform_root(kaggle_image, tmp_path, drive):
    root = tmp_path / "root"
    session = new_session(kaggle_image, tmp_path / "s", root, colab=True, drive=drive)
    script = f"""
import os
from google.colab import drive
print(os.environ["COLAB_RELEASE_TAG"])
drive.mount({str(root / "content" / "drive")!r})
"""
    done = session.run(["-c", script], cwd=tmp_path)
    assert done.stdout.splitlines()[0] == "standin"
    if drive:
        assert done.returncode == 0, done.stderr
        assert (root / "content" / "drive" / "MyDrive").is_dir()
    else:
        assert "mount failed" in done.stderr and not (root / "content" / "drive" / "MyDrive").exists()
    assert os.environ.get("COLAB_RELEASE_TAG") is None  # the test process is not Colab
