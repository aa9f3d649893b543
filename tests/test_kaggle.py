"""The Kaggle offline path: the bundle of `make kaggle`, installed with --no-index into a
fresh environment, and prediction with the network cut off."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import textwrap
import venv
from pathlib import Path

import pytest
import torch

from gi_utils.atomic import atomic_write_json
from gi_utils.constants import KAGGLE_COMPETITION
from gi_utils.data import build_metadata
from gi_utils.inference import PostProcess, make_submission, validate_submission
from gi_utils.models import build_model, model_config, save_model
from gi_utils.pipeline import build_kaggle_bundle, submission_plan
from gi_utils.report import BEST_CONFIG_NAME

SMALL = {"decoder_channels": [8, 8, 8, 8, 8]}


@pytest.fixture
def runs(tmp_path, synth_factory):
    """A runs folder with one small model and a best configuration naming it."""
    runs = tmp_path / "runs"
    torch.manual_seed(0)
    model = build_model("unet", "resnet18", **SMALL)
    cfg = model_config("unet", "resnet18", model_kwargs=SMALL, img_size=64, slice_offsets=[-2, 0, 2],
                       threshold=0.5, min_size=0, train_config={"weights": "imagenet"})  # fmt: skip
    path = save_model(runs / "unet_resnet18_64px_fold0" / "best.safetensors", model, cfg)
    post = PostProcess(size_ref=64).to_dict()
    atomic_write_json(runs / BEST_CONFIG_NAME, {"name": "unet", "model_paths": [str(path)], "weights": [1.0],
                                                "post": post, "default_post": post, "scores": {}})  # fmt: skip
    return runs, synth_factory(n_cases=2, n_test_cases=1, seed=1, slices_per_scan=6, size=(80, 72))


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to open a connection or resolve a host fails, as with internet off."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_prediction_needs_no_network(runs, no_network):
    """A model whose training asked for imagenet weights loads and predicts offline: the
    saved config rebuilds the network without fetching any weights."""
    root, data = runs
    plan = submission_plan(root)
    df = make_submission(plan.model_paths, data, "test", None, post=plan.post, progress=False, device="cpu")
    validate_submission(df, build_metadata(data, "test", labels=False))
    with pytest.raises(OSError, match="network disabled"):
        socket.create_connection(("example.org", 80))  # the guard is on


def test_bundle_layout_and_kaggle_metadata(runs, tmp_path):
    root, _ = runs
    out = build_kaggle_bundle(root, tmp_path / "kaggle", user="me", slug="gi-bundle", wheels=False)
    meta = json.loads((out["dataset"] / "dataset-metadata.json").read_text())
    assert meta["id"] == "me/gi-bundle" and meta["licenses"] == [{"name": "CC0-1.0"}]
    kernel = json.loads((out["kernel"] / "kernel-metadata.json").read_text())
    assert kernel["enable_internet"] == "false" and kernel["dataset_sources"] == ["me/gi-bundle"]
    assert kernel["competition_sources"] == [KAGGLE_COMPETITION] and kernel["code_file"] == "04_submission.ipynb"
    assert (out["kernel"] / "04_submission.ipynb").is_file()
    nb = (out["kernel"] / "04_submission.ipynb").read_text()
    assert "/kaggle/input/gi-bundle/best_config.json" in nb  # the injected parameter
    best = json.loads((out["dataset"] / BEST_CONFIG_NAME).read_text())
    assert best["model_paths"] == ["models/00_unet_resnet18_64px_fold0.safetensors"]  # relative
    assert submission_plan(root, best_config=str(out["dataset"] / BEST_CONFIG_NAME)).model_paths[0].is_file()


def _image_without(site: Path, image: Path, hidden: tuple[str, ...]) -> None:
    """A stand-in for the Kaggle image: links to every package of this environment except
    ``hidden`` (what the bundle must bring)."""
    image.mkdir()
    for entry in site.iterdir():
        name = entry.name.lower().replace("-", "_")
        if not any(name.startswith(h) or name.startswith(f"__editable__.{h}") for h in hidden) and entry.suffix != ".pth":
            (image / entry.name).symlink_to(entry)


@pytest.mark.slow
def test_bundle_installs_offline_into_a_fresh_environment(runs, tmp_path):
    root, data = runs
    out = build_kaggle_bundle(root, tmp_path / "kaggle")
    names = sorted(p.name for p in out["wheels"])
    assert any(n.startswith("gi_utils-") for n in names) and any(n.startswith("segmentation_models_pytorch-") for n in names)
    site = Path(torch.__file__).resolve().parents[1]
    image = tmp_path / "image"
    _image_without(site, image, ("gi_utils", "segmentation_models_pytorch"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    own_site = Path(subprocess.check_output([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    (own_site / "kaggle_image.pth").write_text(str(image) + "\n")
    # the image's own setuptools, not the old one ensurepip puts into a new environment
    subprocess.run([py, "-m", "pip", "uninstall", "-y", "-q", "setuptools"], check=True, capture_output=True)
    done = subprocess.run([py, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(out["dataset"] / "wheels"),
                           "gi-utils"], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    script = textwrap.dedent(f"""
        import socket
        def refuse(*a, **k):
            raise OSError("network disabled")
        socket.socket.connect = refuse
        socket.getaddrinfo = refuse
        import gi_utils, segmentation_models_pytorch as smp
        from gi_utils.pipeline import submission_plan
        from gi_utils.inference import make_submission
        plan = submission_plan("{root}", best_config="{out['dataset'] / BEST_CONFIG_NAME}")
        df = make_submission(plan.model_paths, "{data}", "test", None, post=plan.post, progress=False, device="cpu")
        print(gi_utils.__file__, smp.__file__, len(df), sep="\\n")
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run = subprocess.run([py, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                         env={**env, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    gi_file, smp_file, rows = run.stdout.split()[-3:]
    assert gi_file.startswith(str(own_site)) and smp_file.startswith(str(own_site))  # from the wheels
    assert int(rows) == 3 * len(build_metadata(data, "test", labels=False))
