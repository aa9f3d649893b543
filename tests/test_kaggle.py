"""The Kaggle offline path: the bundle of `make kaggle`, installed with --no-index into a
fresh environment, and prediction with the network cut off."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
from importlib import metadata

import nbformat
import pytest
import torch
from packaging.utils import canonicalize_name
from standin.image import new_session
from standin.kaggle_cli import readme_commands, upload_dataset

from gi_utils.atomic import atomic_write_json
from gi_utils.constants import KAGGLE_COMPETITION
from gi_utils.data import build_metadata
from gi_utils.inference import PostProcess, make_submission, validate_submission
from gi_utils.models import build_model, model_config, save_model
from gi_utils.paths import REPO_ROOT
from gi_utils.pipeline import build_kaggle_bundle, fallback_requirements, submission_plan
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
    nb = nbformat.read(out["kernel"] / "04_submission.ipynb", as_version=4)
    injected = [c.source for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected == ['# Parameters\nbest_config = "../input/gi-bundle/best_config.json"\n']  # from /kaggle/working
    best = json.loads((out["dataset"] / BEST_CONFIG_NAME).read_text())
    assert best["model_paths"] == ["00_unet_resnet18_64px_fold0.safetensors"]  # relative, next to it
    assert submission_plan(root, best_config=str(out["dataset"] / BEST_CONFIG_NAME)).model_paths[0].is_file()


def test_bundle_survives_the_documented_upload(runs, tmp_path):
    """`kaggle datasets create -p dist/kaggle/dataset` uploads only top-level files: every
    file of the bundle must be one of them, and what arrives must still resolve."""
    root, _ = runs
    argv = readme_commands((REPO_ROOT / "README.md").read_text())
    create = next(a for a in argv if a[:3] == ["kaggle", "datasets", "create"])
    dataset_dir = tmp_path / create[create.index("-p") + 1]  # where the README says make kaggle wrote it
    out = build_kaggle_bundle(root, dataset_dir.parent, slug="gi-bundle", wheels=False)
    assert out["dataset"] == dataset_dir
    (out["dataset"] / "gi_utils-0.0-py3-none-any.whl").write_bytes(b"")  # what build_wheels adds, flat
    made = {p.relative_to(out["dataset"]).as_posix() for p in out["dataset"].rglob("*") if p.is_file()}
    mount = upload_dataset(create[1:], tmp_path, tmp_path / "input")  # run where make kaggle wrote
    arrived = {p.name for p in mount.iterdir()}
    assert arrived == made - {"dataset-metadata.json"}, sorted(made ^ arrived)
    plan = submission_plan(tmp_path / "nothing", best_config=str(mount / BEST_CONFIG_NAME))
    assert [p.parent for p in plan.model_paths] == [mount]


def test_bundle_without_a_choice_is_wheels_only(tmp_path):
    """Before 03 chose models: a wheels-only dataset (for the training notebooks), no kernel."""
    (tmp_path / "runs").mkdir()
    out = build_kaggle_bundle(tmp_path / "runs", tmp_path / "kaggle", user="me", wheels=False)
    assert out["kernel"] is None and out["models"] == [] and not (tmp_path / "kaggle" / "kernel").exists()
    assert sorted(p.name for p in out["dataset"].iterdir()) == ["dataset-metadata.json"]
    with pytest.raises(FileNotFoundError, match="no best configuration at .*other.json"):
        build_kaggle_bundle(tmp_path / "runs", tmp_path / "kaggle", best_config=tmp_path / "other.json", wheels=False)
    assert out["dataset"].is_dir()  # a failed call leaves the previous bundle


def test_make_kaggle_runs_the_documented_command():
    """The Makefile's kaggle recipe is the README's first command, KAGGLE_USER passed on."""
    recipe = re.search(r"^kaggle:.*\n\t(.+)$", (REPO_ROOT / "Makefile").read_text(), flags=re.M).group(1)
    documented = readme_commands((REPO_ROOT / "README.md").read_text())[0]
    assert shlex.split(recipe.replace("$(PY)", ".venv/bin/python").replace("$(KAGGLE_USER)", "you")) == documented


@pytest.mark.slow
def test_bundle_installs_offline_on_the_kaggle_image(runs, tmp_path, kaggle_image):
    """The bundle, uploaded as documented, installs with --no-index in a fresh session of
    the image stand-in (nothing but its own wheels installed) and predicts offline."""
    root, data = runs
    out = build_kaggle_bundle(root, tmp_path / "kaggle", slug="gi-bundle")
    names = sorted(p.name for p in out["wheels"])
    assert any(n.startswith("gi_utils-") for n in names) and any(n.startswith("segmentation_models_pytorch-") for n in names)
    mount = upload_dataset(["datasets", "create", "-p", str(out["dataset"])], tmp_path, tmp_path / "kaggle" / "input")
    assert (mount / "gi_setup.py").is_file()  # what the notebooks' first cell runs, beside the wheels
    session = new_session(kaggle_image, tmp_path / "session", tmp_path, network=False)
    done = session.run(["-m", "pip", "install", "--no-index", "--find-links", str(mount), "gi-utils"], cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert session.installed() == {"gi-utils", "segmentation-models-pytorch", "monai"}  # the image untouched
    script = textwrap.dedent(f"""
        import gi_utils, segmentation_models_pytorch as smp
        from gi_utils.pipeline import submission_plan
        from gi_utils.inference import make_submission
        plan = submission_plan("{root}", best_config="{mount / BEST_CONFIG_NAME}")
        df = make_submission(plan.model_paths, "{data}", "test", None, post=plan.post, progress=False, device="cpu")
        print(gi_utils.__file__, smp.__file__, len(df), sep="\\n")
    """)
    run = session.run(["-c", script], cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    gi_file, smp_file, rows = run.stdout.split()[-3:]
    assert gi_file.startswith(str(session.site)) and smp_file.startswith(str(session.site))  # from the wheels
    assert int(rows) == 3 * len(build_metadata(data, "test", labels=False))


@pytest.mark.slow
def test_an_image_with_an_older_albumentations_installs_the_bundled_one(bundle_wheels, old_albumentations_image,
                                                                        tmp_path):  # fmt: skip
    """An image with albumentations 1.4.20 (gi_utils needs 1.4.21): without the fallback
    wheels the offline install fails as users saw it; with the bundle's, pip installs them
    there, and only there (the current image keeps its own: the test above)."""
    fallback = {canonicalize_name(r.split("==")[0]) for r in fallback_requirements()}
    assert {"albumentations", "albucore"} <= fallback and not fallback & {"numpy", "scipy", "torch"}
    bare = tmp_path / "without"  # the bundle as it was: gi_utils, smp and MONAI only
    bare.mkdir()
    for wheel in bundle_wheels.glob("*.whl"):
        if canonicalize_name(wheel.name.split("-")[0]) not in fallback:
            shutil.copyfile(wheel, bare / wheel.name)
    install = ["-m", "pip", "install", "-q", "--no-index", "--find-links"]
    session = new_session(old_albumentations_image, tmp_path / "s0", tmp_path, network=False)
    done = session.run([*install, str(bare), "gi-utils"], cwd=tmp_path)
    assert done.returncode != 0 and "No matching distribution found for albumentations>=1.4.21" in done.stderr
    session = new_session(old_albumentations_image, tmp_path / "s1", tmp_path, network=False)
    done = session.run([*install, str(bundle_wheels), "gi-utils"], cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert {"gi-utils", "segmentation-models-pytorch", "monai", "albumentations", "albucore"} <= session.installed()
    done = session.run(["-c", "import albumentations as A; from gi_utils.data import build_transforms; "
                        "build_transforms(64, train=True, seed=0); print(A.__version__)"], cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == metadata.version("albumentations")  # the bundled one


@pytest.mark.slow
def test_augmentation_on_the_images_albumentations(bundle_wheels, kaggle_image, tmp_path):
    """albumentations 1.4 (the image's) builds the same transforms with the same
    probabilities and values as 2.x here, seeds them the same way, and refuses a wrong
    argument name."""
    session = new_session(kaggle_image, tmp_path / "session", tmp_path, network=False)
    done = session.run(["-m", "pip", "install", "-q", "--no-index", "--find-links", str(bundle_wheels), "gi-utils"],
                       cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    done = session.run(["-c", AUGMENT_PROBE], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    image_side = json.loads(done.stdout.splitlines()[-1])
    here = json.loads(subprocess.run([sys.executable, "-c", AUGMENT_PROBE], capture_output=True, text=True,
                                     check=True).stdout.splitlines()[-1])  # fmt: skip
    assert image_side["version"].startswith("1.4.") and here["version"].startswith("2.")
    assert image_side["transforms"] == here["transforms"]
    assert image_side["same_seed_same_output"] and image_side["changed"]
    assert "Affine: no argument(s) ['rotation']" in image_side["wrong_name"]


AUGMENT_PROBE = """
import json, random
import albumentations as A, numpy as np
from gi_utils.data import build_transforms
tf = build_transforms(64, train=True, seed=0)
keys = {"HorizontalFlip": [], "Affine": ["scale", "translate_percent", "rotate", "border_mode", "fill", "fill_mask"],
        "GridDistortion": ["num_steps", "distort_limit"], "ElasticTransform": ["alpha", "sigma", "approximate"],
        "RandomBrightnessContrast": ["brightness_limit", "contrast_limit"],
        "CoarseDropout": ["num_holes_range", "hole_height_range", "hole_width_range", "fill"]}
old = {"fill": ("cval", "fill_value"), "fill_mask": ("cval_mask", "mask_fill_value"), "border_mode": ("mode",)}
def value(t, k):
    for name in (k, *old.get(k, ())):
        if getattr(t, name, None) is not None:
            v = getattr(t, name)
            return list(v) if isinstance(v, tuple) else v.get("x") if isinstance(v, dict) else v
transforms = [[type(t).__name__, t.p, {k: str(value(t, k)) for k in keys[type(t).__name__]}] for t in tf.transforms]
image = np.random.default_rng(0).random((64, 64, 3), dtype=np.float32)
mask = (image[..., 0] > 0.5).astype(np.uint8)
def draw(seed):
    tf.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return tf(image=image, mask=mask)["image"]
try:
    build_transforms(64, train=True, overrides={"Affine": {"rotation": 5}})
    wrong = ""
except ValueError as err:
    wrong = str(err)
print(json.dumps({"version": A.__version__, "transforms": transforms, "wrong_name": wrong,
                  "same_seed_same_output": bool(np.array_equal(draw(3), draw(3))),
                  "changed": any(not np.array_equal(draw(s), image) for s in range(5))}))
"""
