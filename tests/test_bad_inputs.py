"""The catalogue of bad inputs: each case, the error type, and that the message names the item.

One table-driven test per kind of outcome, so the README's table ("input -> what happens")
maps 1:1 onto the test ids here (``test_rejected[<id>]``, ``test_accepted_with_warning[<id>]``).
Several cases are also tested, in more depth, next to their module (test_data.py,
test_rle.py, test_models.py, test_infer.py, test_notebook_utils.py, test_notebooks.py,
test_train.py); here each is one row, cheap, on tiny hand-made data.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import write_kaggle_tree
from gi_utils.checkpoint import CheckpointError, load_state, save_state
from gi_utils.constants import CLASSES, SUBMISSION_COLUMNS
from gi_utils.data import (
    DataError,
    FoldsError,
    ImageReadError,
    RLEError,
    assign_folds,
    build_metadata,
    decode_rle,
    make_folds,
    read_image,
    read_train_csv,
    slice_mask,
    split_fold,
)
from gi_utils.inference import make_submission, validate_submission
from gi_utils.losses import build_loss
from gi_utils.models import (
    build_model,
    check_img_size,
    load_model,
    load_weights_into,
    model_config,
    read_model_config,
    save_model,
)
from gi_utils.paths import DataNotFoundError, resolve_data_dir
from gi_utils.pipeline import ParameterError, check_params, notebook_annotations, train_setup
from gi_utils.pipeline.notebook_files import NOTEBOOKS_DIR
from gi_utils.training import NonFiniteLossError, TrainConfig, train, train_one_epoch

torch.set_num_threads(1)
SID = "case1_day0_slice_0001"


@dataclass
class Env:
    """What a catalogue case may use: its own tmp folder and a saved model (shared, read-only)."""

    tmp: Path
    model: Path

    def copy_model(self) -> Path:
        """A private copy of the saved model (``best.safetensors``) that a case may damage."""
        out = self.tmp / "best.safetensors"
        out.write_bytes(self.model.read_bytes())
        return out


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = model_config("unet", "resnet18", 3, 3, img_size=64, slice_offsets=[-1, 0, 1])
    return save_model(
        tmp_path_factory.mktemp("model") / "best.safetensors", build_model("unet"), cfg
    )


@pytest.fixture
def env(tmp_path, saved_model) -> Env:
    return Env(tmp_path, saved_model)


# --------------------------------------------------------------------------- builders
def tree(tmp: Path, n: int = 3) -> Path:
    """One scan ``case1_day0`` of ``n`` 16-bit slices of (H, W) = (24, 32), empty masks."""
    return write_kaggle_tree(tmp / "data", {"case1_day0": (n, 32, 24)})


def scans(root: Path) -> Path:
    return root / "train" / "case1" / "case1_day0" / "scans"


def csv(tmp: Path, rows, columns=("id", "class", "segmentation")) -> Path:
    path = tmp / "train.csv"
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return path


OK_ROWS = [(SID, c, "") for c in CLASSES]


def png(tmp: Path, img: np.ndarray, name: str = "slice_0001_4_4_1.50_1.50.png") -> Path:
    path = tmp / name
    cv2.imwrite(str(path), img)
    return path


def jpeg_named_png(tmp: Path) -> Path:
    path = tmp / "slice_0001_4_4_1.50_1.50.png"
    path.write_bytes(cv2.imencode(".jpg", np.full((4, 4), 9, np.uint8))[1].tobytes())
    return path


def truncated_png(tmp: Path) -> Path:
    path = png(tmp, np.arange(16, dtype=np.uint16).reshape(4, 4) * 1000)
    path.write_bytes(path.read_bytes()[:40])
    return path


def rewrite(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def drop_train_csv_rows(root: Path, ids: set[str]) -> Path:
    df = pd.read_csv(root / "train.csv")
    df[~df["id"].isin(ids)].to_csv(root / "train.csv", index=False)
    return root


def add_foreign_files(root: Path) -> Path:
    """What unzipping on macOS or browsing on Windows leaves in a dataset: 9 foreign items
    under train/ (3 AppleDouble slices, an AppleDouble folder twin, .DS_Store, Thumbs.db,
    desktop.ini, two __MACOSX/ folders) and a __MACOSX/ beside train/, which is never read."""
    folder = scans(root)
    for png_file in sorted(folder.glob("slice_*.png")):
        (folder / f"._{png_file.name}").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble magic
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "train" / "._case1").write_bytes(b"\x00\x05\x16\x07")
    (root / "train" / "Thumbs.db").write_bytes(b"")
    (root / "train" / "case1" / "desktop.ini").write_text("[.ShellClassInfo]\n")
    (root / "train" / "__MACOSX" / "case1" / "case1_day0" / "scans").mkdir(parents=True)
    (root / "train" / "case1" / "case1_day0" / "__MACOSX").mkdir()
    (root / "__MACOSX" / "train" / "case1").mkdir(parents=True)
    return root


def mask_row(rle: str) -> dict:
    return {"id": SID, "height": 3, "width": 4, **{c: "" for c in CLASSES}, "large_bowel": rle}


def fold_meta(n_cases: int) -> pd.DataFrame:
    rows = [(c, 0, s, f"case{c}_day0", s % 2 == 0) for c in range(1, n_cases + 1) for s in range(4)]
    return pd.DataFrame(rows, columns=["case", "day", "slice", "case_day", "empty"])


EDA_PARAMS = notebook_annotations(NOTEBOOKS_DIR / "01_eda.ipynb")
TRAIN_TYPES = notebook_annotations(NOTEBOOKS_DIR / "02_train.ipynb")
TRAIN_NB = {"preset": "smoke", "folds": "", "data_dir": "", "run_name": "", "runs_dir": "", "pictures_dir": "",
            "synthetic_if_missing": False, "n_overlays": 2, "num_processes": 1}  # fmt: skip
EDA_GIVEN = {"data_dir": "", "synthetic_if_missing": True, "runs_dir": "", "pictures_dir": "",
             "n_overlays": 4, "seed": 0}  # fmt: skip


def submission(edit: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    """Validate ``edit`` of a good submission for 2 slices of (H, W) = (2, 3)."""
    meta = pd.DataFrame({"id": [SID, "case1_day0_slice_0002"], "height": [2, 2], "width": [3, 3]})
    good = pd.DataFrame(
        [(i, c, "") for i in meta["id"] for c in CLASSES], columns=list(SUBMISSION_COLUMNS)
    )
    validate_submission(good, meta)
    validate_submission(edit(good).reset_index(drop=True), meta)


def predicted(rle: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    return lambda df: df.assign(predicted=[rle, *df["predicted"][1:]])


class _Evil:
    """Unpickling this would create ``marker``: a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_checkpoint(tmp: Path, name: str = "last.pt") -> Path:
    path = tmp / name
    torch.save({"model": {}, "payload": _Evil(tmp / "pwned")}, path)
    return path


def run_config(tmp: Path, **kw) -> TrainConfig:
    return TrainConfig(**{"data_dir": str(tmp / "data"), "out_dir": str(tmp / "run"), "img_size": 64,
                          "n_folds": 2, "device": "cpu", "progress": False, **kw})  # fmt: skip


def train_with_last_pt(tmp: Path, write: Callable[[Path], object]) -> None:
    """``train()`` in a folder whose ``last.pt`` is made by ``write`` (no data is read)."""
    (tmp / "run").mkdir()
    write(tmp / "run" / "last.pt")
    train(run_config(tmp))


class _NanLoss(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, logits, target):
        self.calls += 1
        loss = (logits - target).square().mean()
        return loss * float("nan") if self.calls == 2 else loss


def nan_loss_epoch() -> None:
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    model = torch.nn.Conv2d(1, 1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    batches = [(torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4))] * 3
    train_one_epoch(acc, model, batches, opt, sched, _NanLoss(), desc="epoch 1/1", progress=False)


def _root_of(path: Path) -> Path:
    """The data root above ``path`` (the folder holding ``train.csv``)."""
    return next(p for p in path.parents if (p / "train.csv").is_file())


def mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return _root_of(path)


def touch(path: Path) -> Path:
    path.write_bytes(b"")
    return _root_of(path)


def rewrite_csv_extra_id(root: Path) -> Path:
    df = pd.read_csv(root / "train.csv")
    extra = pd.DataFrame([("case1_day0_slice_0009", c, "") for c in CLASSES], columns=df.columns)
    pd.concat([df, extra]).to_csv(root / "train.csv", index=False)
    return root


def resize_slice(root: Path) -> Path:
    victim = next(scans(root).glob("slice_0002_*.png"))
    victim.unlink()
    cv2.imwrite(str(scans(root) / "slice_0002_40_24_1.50_1.50.png"), np.zeros((24, 40), np.uint16))
    return root


def drop_slice(root: Path, s: int) -> Path:
    next(scans(root).glob(f"slice_{s:04d}_*.png")).unlink()
    return drop_train_csv_rows(root, {f"case1_day0_slice_{s:04d}"})


def folds_twice(tmp: Path) -> None:
    meta = fold_meta(4)
    assign_folds(meta, 2, 0, path=tmp / "folds.json")
    assign_folds(meta, 3, 0, path=tmp / "folds.json")


def cut(path: Path, keep: int | float) -> Path:
    data = path.read_bytes()
    return rewrite(path, data[: int(keep * len(data)) if isinstance(keep, float) else keep])


def saved_state(tmp: Path) -> Path:
    return save_state(tmp / "last.pt", {"epoch": 3, "t": torch.arange(100)})


def torch_save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def model_with_bad_sidecar(tmp: Path) -> Path:
    path = tmp / "m.safetensors"
    save_file({"w": torch.zeros(2)}, path)  # no embedded config
    path.with_suffix(".json").write_text("{not json")
    return path


# --------------------------------------------------------------------------- the catalogue
def case(id_: str, make: Callable[[Env], object], exc: type[BaseException], match: str):
    return pytest.param(make, exc, match, id=id_)


REJECTED = [
    # ---- train.csv
    case("train_csv_missing", lambda e: read_train_csv(e.tmp / "train.csv"),
         DataError, r"train.csv not found at .*train.csv"),
    case("train_csv_empty_file", lambda e: read_train_csv(rewrite(e.tmp / "train.csv", b"")),
         DataError, r"train.csv is not a readable CSV \(EmptyDataError"),
    case("train_csv_not_text", lambda e: read_train_csv(rewrite(e.tmp / "train.csv", b"\xff\xfe\x00\x81")),
         DataError, r"train.csv is not a readable CSV \(UnicodeDecodeError"),
    case("train_csv_broken_quoting", lambda e: read_train_csv(rewrite(e.tmp / "train.csv", b'id,class,segmentation\n"a,b\n')),
         DataError, r"train.csv is not a readable CSV \(ParserError"),
    case("train_csv_wrong_columns", lambda e: read_train_csv(csv(e.tmp, OK_ROWS, ("id", "klass", "segmentation"))),
         DataError, r"train.csv has columns \['id', 'klass', 'segmentation'\]; expected \['id', 'class', 'segmentation'\]: missing column\(s\) \['class'\]"),
    case("train_csv_missing_column", lambda e: read_train_csv(csv(e.tmp, [r[:2] for r in OK_ROWS], ("id", "class"))),
         DataError, r"train.csv has columns \['id', 'class'\]; expected \['id', 'class', 'segmentation'\]: missing column\(s\) \['segmentation'\]"),
    case("train_csv_missing_column_among_extra", lambda e: read_train_csv(csv(e.tmp, [(r[0], r[2], "x") for r in OK_ROWS], ("id", "segmentation", "note"))),
         DataError, r"train.csv has columns \['id', 'segmentation', 'note'\]; expected \['id', 'class', 'segmentation'\]: missing column\(s\) \['class'\]"),
    case("train_csv_duplicate_id_class", lambda e: read_train_csv(csv(e.tmp, [*OK_ROWS, OK_ROWS[2]])),
         DataError, rf"row 5: duplicate \(id, class\) = \('{SID}', 'stomach'\)"),
    case("train_csv_unknown_class", lambda e: read_train_csv(csv(e.tmp, [*OK_ROWS, (SID, "liver", "")])),
         DataError, rf"row 5: unknown class 'liver' \(id '{SID}'\); expected one of \['large_bowel'"),
    case("train_csv_malformed_id", lambda e: read_train_csv(csv(e.tmp, [("case1_slice_0001", "stomach", "")])),
         DataError, r"row 2: id 'case1_slice_0001' is not 'caseN_dayD_slice_SSSS'"),
    # ---- data root and folders
    case("data_root_missing", lambda e: resolve_data_dir(e.tmp / "nowhere"),
         DataNotFoundError, r"argument data_dir: .*nowhere \(missing\)"),
    case("data_root_without_train_csv", lambda e: resolve_data_dir(e.tmp),
         DataNotFoundError, r"argument data_dir: .* \(no train.csv\)"),
    case("data_root_missing_build_metadata", lambda e: build_metadata(e.tmp / "nowhere"),
         DataError, r"no 'train' folder at .*nowhere/train"),
    case("data_root_missing_make_submission", lambda e: make_submission(e.model, e.tmp / "nowhere", out_csv=None),
         DataNotFoundError, r"data folder .*nowhere does not exist"),
    case("csv_id_without_image", lambda e: build_metadata(rewrite_csv_extra_id(tree(e.tmp))),
         DataError, r"1 train.csv id\(s\) have no image, first 'case1_day0_slice_0009': expected .*case1/case1_day0/scans/slice_0009_W_H_SW_SH.png"),
    case("unexpected_case_folder", lambda e: build_metadata(mkdir(tree(e.tmp) / "train" / "patient7")),
         DataError, r"unexpected folder .*patient7: expected caseN"),
    case("scan_folder_missing", lambda e: build_metadata(mkdir(tree(e.tmp) / "train" / "case2" / "case2_day1")),
         DataError, r"case-day folder .*case2_day1 has no scans/ folder"),
    case("bad_slice_file_name", lambda e: build_metadata(touch(scans(tree(e.tmp)) / "slice_x.png")),
         DataError, r"slice file name .*slice_x.png' does not follow"),
    case("two_files_for_one_slice", lambda e: build_metadata(touch(scans(tree(e.tmp)) / "slice_0001_40_24_1.50_1.50.png")),
         DataError, r"two image files for slice id 'case1_day0_slice_0001'"),
    case("scan_mixes_image_sizes", lambda e: build_metadata(resize_slice(tree(e.tmp))),
         DataError, r"scan 'case1_day0' mixes slices of different sizes"),
    # ---- RLE (decode_rle on a (3, 4) image: 12 pixels)
    case("rle_odd_token_count", lambda e: decode_rle("1 2 3", (3, 4)), RLEError, r"odd number of tokens \(3\)"),
    case("rle_token_not_integer", lambda e: decode_rle("1 2 x 3", (3, 4)), RLEError, r"token 'x' is not an integer"),
    case("rle_token_float", lambda e: decode_rle("1.5 2", (3, 4)), RLEError, r"token '1.5' is not an integer"),
    case("rle_start_zero", lambda e: decode_rle("0 2", (3, 4)), RLEError, r"run 0 has start 0; starts are 1-indexed"),
    case("rle_start_negative", lambda e: decode_rle("4 1 -3 2", (3, 4)), RLEError, r"run 1 has start -3"),
    case("rle_length_zero", lambda e: decode_rle("3 0", (3, 4)), RLEError, r"run 0 \(start 3\) has length 0"),
    case("rle_starts_not_increasing", lambda e: decode_rle("5 1 2 1", (3, 4)), RLEError, r"run 1 starts at 2 after 5"),
    case("rle_runs_overlap", lambda e: decode_rle("1 5 3 2", (3, 4)), RLEError, r"run 0 covers 1..5 and run 1 starts at 3"),
    case("rle_run_outside_image", lambda e: decode_rle("10 5", (3, 4)), RLEError,
         r"run 0 ends at pixel 14, past the end of the image \(12 pixels\)"),
    case("rle_token_huge", lambda e: decode_rle("1 99999999999999999999999", (3, 4)), RLEError, r"token '9+' is too large"),
    case("rle_not_a_string", lambda e: decode_rle(12, (3, 4)), RLEError, r"must be a string, got int: 12"),
    case("mask_run_outside_image_names_id", lambda e: slice_mask(mask_row("10 5")), DataError,
         rf"bad mask for id '{SID}', class 'large_bowel': RLE run 0 ends at pixel 14, past the end"),
    # ---- images
    case("image_missing", lambda e: read_image(e.tmp / "slice_0001_4_4_1.50_1.50.png"),
         ImageReadError, r"image not found: .*slice_0001_4_4_1.50_1.50.png"),
    case("image_not_png_jpeg", lambda e: read_image(jpeg_named_png(e.tmp)),
         ImageReadError, r"slice_0001_4_4_1.50_1.50.png is not a PNG file"),
    case("image_not_png_text", lambda e: read_image(rewrite(e.tmp / "slice_0001_4_4_1.50_1.50.png", b"hello")),
         ImageReadError, r"slice_0001_4_4_1.50_1.50.png is not a PNG file"),
    case("image_empty_file", lambda e: read_image(rewrite(e.tmp / "slice_0001_4_4_1.50_1.50.png", b"")),
         ImageReadError, r"slice_0001_4_4_1.50_1.50.png is not a PNG file"),
    case("image_truncated", lambda e: read_image(truncated_png(e.tmp)),
         ImageReadError, r"does not decode \(not a PNG or truncated\): .*slice_0001_4_4_1.50_1.50.png"),
    case("image_rgb_8bit", lambda e: read_image(png(e.tmp, np.zeros((4, 4, 3), np.uint8))),
         ImageReadError, r"slice_0001_4_4_1.50_1.50.png has shape \(4, 4, 3\); expected 16-bit grayscale"),
    case("image_rgb_16bit", lambda e: read_image(png(e.tmp, np.zeros((4, 4, 3), np.uint16))),
         ImageReadError, r"slice_0001_4_4_1.50_1.50.png has shape \(4, 4, 3\); expected 16-bit grayscale"),
    case("image_gray_alpha", lambda e: read_image(png(e.tmp, np.zeros((4, 4, 4), np.uint16))),
         ImageReadError, r"has shape \(4, 4, 4\); expected 16-bit grayscale"),
    case("image_size_differs_from_name", lambda e: read_image(png(e.tmp, np.zeros((4, 5), np.uint16))),
         ImageReadError, r"slice_0001_4_4_1.50_1.50.png has shape \(H, W\) = \(4, 5\); its name says \(4, 4\)"),
    # ---- model, encoder, loss, image size
    case("unknown_arch", lambda e: build_model("unett"),
         KeyError, r"unknown architecture 'unett'; valid names: unet, unetplusplus, deeplabv3plus"),
    case("unknown_encoder", lambda e: build_model("unet", "resnet19"),
         KeyError, r"unknown encoder 'resnet19'; valid smp encoders: .*resnet18"),
    case("unknown_timm_encoder", lambda e: build_model("unet", "tu-no_such_net"),
         KeyError, r"unknown timm encoder 'tu-no_such_net'"),
    case("unknown_loss", lambda e: build_loss("focal_nope"),
         KeyError, r"unknown loss 'focal_nope'; valid names: \['bce'"),
    case("config_unknown_arch", lambda e: TrainConfig(arch="unett"),
         ValueError, r"arch='unett' is not valid; choose one of unet, "),
    case("config_unknown_encoder", lambda e: TrainConfig(encoder="resnet19"),
         ValueError, r"encoder: unknown encoder 'resnet19'"),
    case("config_unknown_loss", lambda e: TrainConfig(loss="focal_nope"),
         ValueError, r"loss='focal_nope' is not valid; choose one of bce_dice"),
    case("config_unknown_parameter", lambda e: TrainConfig.from_dict({"lrr": 0.1}),
         ValueError, r"unknown TrainConfig parameter\(s\) \['lrr'\] \('lrr': did you mean 'lr'\?\)"),
    case("config_wrong_type", lambda e: TrainConfig(epochs="3"),
         ValueError, r"epochs must be int, got '3' \(str\)"),
    case("img_size_not_multiple_of_stride", lambda e: check_img_size(100),
         ValueError, r"img_size=100 is not divisible by the encoder's stride 32; use e.g. 96 or 128"),
    case("config_img_size_not_multiple_of_stride", lambda e: TrainConfig(img_size=200),
         ValueError, r"img_size=200 is not divisible by the encoder's stride 32"),
    case("encoder_weights_file_missing", lambda e: build_model("unet", weights=e.tmp / "nope.safetensors"),
         FileNotFoundError, r"encoder weights file not found: .*nope.safetensors"),
    # ---- notebook (papermill) parameters
    case("notebook_param_unknown", lambda e: check_params({**EDA_GIVEN, "n_overlay": 3}, EDA_PARAMS),
         ParameterError, r"unknown notebook parameter\(s\) \['n_overlay'\]; valid parameters: .*'n_overlays'"),
    case("notebook_param_wrong_type", lambda e: check_params({**EDA_GIVEN, "n_overlays": "many"}, EDA_PARAMS),
         ParameterError, r"parameter 'n_overlays' = 'many' has type str; expected int"),
    case("notebook_param_bool_for_int", lambda e: check_params({**EDA_GIVEN, "seed": True}, EDA_PARAMS),
         ParameterError, r"parameter 'seed' = True has type bool; expected int"),
    case("notebook_param_missing", lambda e: check_params({k: v for k, v in EDA_GIVEN.items() if k != "seed"}, EDA_PARAMS),
         ParameterError, r"parameter 'seed' is missing"),
    case("train_notebook_unknown_param", lambda e: train_setup({**TRAIN_NB, "epoch": 2}, TRAIN_TYPES),
         ParameterError, r"02_train parameters: unknown TrainConfig parameter\(s\) \['epoch'\] \('epoch': did you mean 'epochs'\?\)"),
    case("train_notebook_wrong_type", lambda e: train_setup({**TRAIN_NB, "epochs": "3"}, TRAIN_TYPES),
         ParameterError, r"parameter 'epochs' = '3' has type str; expected int or None"),
    case("train_notebook_bad_arch", lambda e: train_setup({**TRAIN_NB, "arch": "unetx"}, TRAIN_TYPES),
         ParameterError, r"02_train parameters: arch='unetx' is not valid"),
    case("train_notebook_bad_preset", lambda e: train_setup({**TRAIN_NB, "preset": "fast"}, TRAIN_TYPES),
         ParameterError, r"02_train parameters: preset='fast' is not valid; choose one of auto, smoke, demo, gpu"),
    case("train_notebook_out_dir", lambda e: train_setup({**TRAIN_NB, "out_dir": "/elsewhere"}, TRAIN_TYPES),
         ParameterError, r"02_train parameters: out_dir='/elsewhere' is not taken: a run's folder is <runs_dir>/<run_name>"),
    case("train_notebook_own_param_wrong_type", lambda e: train_setup({**TRAIN_NB, "n_overlays": "many"}, TRAIN_TYPES),
         ParameterError, r"parameter 'n_overlays' = 'many' has type str; expected int"),
    # ---- folds
    case("fewer_cases_than_folds", lambda e: make_folds(fold_meta(2), n_splits=5),
         FoldsError, r"n_splits=5 but only 2 case\(s\): fold 2 would have no validation case"),
    case("empty_validation_fold", lambda e: split_fold(fold_meta(3).assign(fold=[0] * 4 + [1] * 8), 2),
         FoldsError, r"fold 2 has no validation rows in this table \(folds present: \[0, 1\]\)"),
    case("fold_out_of_range", lambda e: TrainConfig(fold=5, n_folds=5),
         ValueError, r"fold must be in 0..4 \(n_folds=5\), or -1 for all cases, got 5"),
    case("folds_file_of_other_settings", lambda e: folds_twice(e.tmp),
         FoldsError, r"folds.json was made with n_splits=2, but n_splits=3 was asked for"),
    # ---- model files (safetensors) and training state (last.pt)
    case("model_of_another_arch", lambda e: load_model(e.model, arch="fpn"),
         CheckpointError, r"best.safetensors holds a 'unet' model \(encoder 'resnet18'\); expected 'fpn'"),
    case("weights_of_another_arch", lambda e: load_weights_into(build_model("fpn"), load_file(e.model), str(e.model), read_model_config(e.model)),
         CheckpointError, r"weights in .*best.safetensors \(saved as 'unet' / 'resnet18'\) do not fit this FPN model"),
    case("model_file_missing", lambda e: load_model(e.tmp / "none.safetensors"),
         CheckpointError, r"model file not found: .*none.safetensors"),
    case("model_file_truncated_header", lambda e: load_model(cut(e.copy_model(), 10)),
         CheckpointError, r"model file .*best.safetensors is truncated or not a safetensors file"),
    case("model_file_truncated_data", lambda e: load_model(cut(e.copy_model(), 0.5)),
         CheckpointError, r"model file .*best.safetensors is truncated or not a safetensors file"),
    case("model_file_garbage", lambda e: load_model(rewrite(e.copy_model(), b"\x00garbage" * 100)),
         CheckpointError, r"model file .*best.safetensors is truncated or not a safetensors file"),
    case("model_file_empty", lambda e: load_model(rewrite(e.copy_model(), b"")),
         CheckpointError, r"model file .*best.safetensors is truncated or not a safetensors file"),
    case("model_config_not_json", lambda e: load_model(model_with_bad_sidecar(e.tmp)),
         CheckpointError, r"model config in .*m.json is not valid JSON"),
    case("state_file_truncated", lambda e: load_state(cut(saved_state(e.tmp), 50)),
         CheckpointError, r"checkpoint .*last.pt is truncated or corrupt"),
    case("state_file_empty", lambda e: load_state(rewrite(e.tmp / "last.pt", b"")),
         CheckpointError, r"checkpoint .*last.pt is truncated or corrupt \(EOFError"),
    case("state_file_not_a_dict", lambda e: load_state(torch_save([1, 2], e.tmp / "last.pt")),
         CheckpointError, r"checkpoint .*last.pt holds a list; expected a dict"),
    case("state_file_malicious_pickle", lambda e: load_state(evil_checkpoint(e.tmp)),
         CheckpointError, r"checkpoint .*last.pt was refused: .*nothing was executed"),
    case("state_file_plain_pickle", lambda e: load_state(rewrite(e.tmp / "last.pt", pickle.dumps(_Evil(e.tmp / "pwned")))),
         CheckpointError, r"checkpoint .*last.pt was refused"),
    case("state_file_numpy_array", lambda e: load_state(torch_save({"a": np.zeros(3)}, e.tmp / "last.pt")),
         CheckpointError, r"checkpoint .*last.pt was refused"),
    case("encoder_weights_malicious_pickle", lambda e: build_model("unet", weights=evil_checkpoint(e.tmp, "enc.pt")),
         CheckpointError, r"cannot read weights file .*enc.pt"),
    case("resume_from_malicious_last_pt", lambda e: train_with_last_pt(e.tmp, lambda p: evil_checkpoint(p.parent)),
         CheckpointError, r"checkpoint .*run/last.pt was refused"),
    case("resume_from_corrupt_last_pt", lambda e: train_with_last_pt(e.tmp, lambda p: p.write_bytes(b"PK\x03\x04junk")),
         CheckpointError, r"checkpoint .*run/last.pt is truncated or corrupt"),
    case("resume_last_pt_of_another_arch", lambda e: train_with_last_pt(e.tmp, lambda p: save_state(p, {"config": run_config(e.tmp, arch="fpn").to_dict()})),
         ValueError, r"run/last.pt belongs to another run \(arch: saved 'fpn' != now 'unet'\)"),
    # ---- training
    case("non_finite_loss", lambda e: nan_loss_epoch(),
         NonFiniteLossError, r"epoch 1/1: loss is nan at batch 2"),
    # ---- submission (validate_submission; the good one has 2 slices of (H, W) = (2, 3))
    case("submission_wrong_header", lambda e: submission(lambda df: df.rename(columns={"predicted": "segmentation"})),
         ValueError, r"submission columns are \['id', 'class', 'segmentation'\]; expected \['id', 'class', 'predicted'\]"),
    case("submission_missing_row", lambda e: submission(lambda df: df.drop(index=4)),
         ValueError, r"submission has 5 rows, expected 6; first missing \(id, class\): \('case1_day0_slice_0002', 'small_bowel'\)"),
    case("submission_duplicate_row", lambda e: submission(lambda df: pd.concat([df, df.iloc[[2]]])),
         ValueError, rf"row 6 \(id '{SID}', class 'stomach'\): duplicate \(id, class\)"),
    case("submission_extra_id", lambda e: submission(lambda df: pd.concat([df, df.iloc[[0]].assign(id="case9_day0_slice_0001")])),
         ValueError, r"row 6 \(id 'case9_day0_slice_0001', class 'large_bowel'\): id is not a slice of the test set"),
    case("submission_unknown_class", lambda e: submission(lambda df: df.assign(**{"class": ["large_bowel", "small_bowl", *df["class"][2:]]})),
         ValueError, rf"row 1 \(id '{SID}', class 'small_bowl'\): unknown class"),
    case("submission_rle_unsorted", lambda e: submission(predicted("4 1 1 1")),
         ValueError, rf"row 0 \(id '{SID}', class 'large_bowel'\): bad RLE: RLE starts are not increasing"),
    case("submission_rle_overlapping", lambda e: submission(predicted("1 3 2 2")),
         ValueError, r"row 0 .*bad RLE: RLE runs overlap"),
    case("submission_rle_out_of_bounds", lambda e: submission(predicted("5 3")),
         ValueError, r"row 0 .*bad RLE: RLE run 0 ends at pixel 7, past the end of the image \(6 pixels\)"),
    case("submission_rle_malformed", lambda e: submission(predicted("1 2 3")),
         ValueError, r"row 0 .*bad RLE: RLE has an odd number of tokens"),
]  # fmt: skip


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize(("make", "exc", "match"), REJECTED)
def test_rejected(env, make, exc, match):
    with pytest.raises(exc, match=match) as err:
        make(env)
    assert type(err.value) is exc  # the exact type, not only a subclass of it
    assert not (env.tmp / "pwned").exists()  # no pickled code ran


ACCEPTED = [
    case("image_8bit_gray", lambda e: read_image(png(e.tmp, np.full((4, 4), 7, np.uint8))),
         UserWarning, r"slice_0001_4_4_1.50_1.50.png is 8-bit; expected 16-bit, widening to uint16"),
    case("scan_with_gap_in_slice_numbers", lambda e: build_metadata(drop_slice(tree(e.tmp, 4), 2)),
         UserWarning, r"scan 'case1_day0' has gaps in its slice numbers \(missing \[2\]\)"),
    case("train_csv_extra_column", lambda e: read_train_csv(csv(e.tmp, [(*r, "x") for r in OK_ROWS], ("id", "class", "segmentation", "note"))),
         UserWarning, r"train.csv has columns \['id', 'class', 'segmentation', 'note'\]: extra column\(s\) \['note'\] ignored"),
    case("train_csv_reordered_columns", lambda e: read_train_csv(csv(e.tmp, [(r[2], r[0], r[1]) for r in OK_ROWS], ("segmentation", "id", "class"))),
         UserWarning, r"train.csv has columns \['segmentation', 'id', 'class'\], in another order than \['id', 'class', 'segmentation'\]; they are read by name"),
    case("train_csv_id_without_all_classes", lambda e: read_train_csv(csv(e.tmp, OK_ROWS[:2])),
         UserWarning, rf"1 id\(s\) lack rows for some classes, first '{SID}'; the missing classes are taken as empty"),
    case("image_without_train_csv_rows", lambda e: build_metadata(drop_train_csv_rows(tree(e.tmp), {"case1_day0_slice_0003"})),
         UserWarning, r"1 image\(s\) under .*train have no train.csv rows, first 'case1_day0_slice_0003'; their masks are taken as empty"),
    case("foreign_files_from_macos_and_windows", lambda e: build_metadata(add_foreign_files(tree(e.tmp))),
         UserWarning, r"skipped 9 foreign file\(s\) and folder\(s\) \(AppleDouble ._\*, __MACOSX/, .DS_Store, Thumbs.db, desktop.ini\) under .*data/train, first .*train/._case1"),
    case("test_split_without_images", lambda e: make_submission(e.model, tree(e.tmp), "test", out_csv=None),
         UserWarning, r"no images under .*data/test: writing an empty submission"),
]  # fmt: skip


@pytest.mark.parametrize(("make", "warning", "match"), ACCEPTED)
def test_accepted_with_warning(env, make, warning, match):
    with pytest.warns(warning, match=match):
        out = make(env)
    assert out is not None


def test_8bit_gray_is_widened_unchanged(tmp_path):
    with pytest.warns(UserWarning, match="8-bit"):
        out = read_image(png(tmp_path, np.full((4, 4), 7, np.uint8)))
    assert out.dtype == np.uint16 and (out == 7).all()


def test_missing_classes_and_unlabelled_images_are_empty_masks(tmp_path):
    root = drop_train_csv_rows(tree(tmp_path), {"case1_day0_slice_0003"})
    with pytest.warns(UserWarning, match="no train.csv rows"):
        meta = build_metadata(root)
    row = meta.set_index("id").loc["case1_day0_slice_0003"]
    assert [row[c] for c in CLASSES] == ["", "", ""] and row["empty"]
    with pytest.warns(UserWarning, match="lack rows"):
        wide = read_train_csv(csv(tmp_path, [(SID, "stomach", "1 2")]))
    assert wide.loc[SID].tolist() == ["", "", "1 2"]


def test_catalogue_ids_are_unique():
    ids = [p.id for p in REJECTED + ACCEPTED]
    assert len(ids) == len(set(ids))
