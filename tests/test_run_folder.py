"""The run folder's one home (gi_utils.models.run_folder): names and the number-free settings."""

from __future__ import annotations

from dataclasses import fields

import pytest

from gi_utils.models import (
    NUMBER_FREE_FIELDS,
    PER_RUN_FIELDS,
    RESUME_FREE_FIELDS,
    model_stem,
    run_name,
    stem_of_run,
)
from gi_utils.training import TrainConfig


def test_the_setting_lists_are_config_fields_and_derive_from_one():
    names = {f.name for f in fields(TrainConfig)}
    assert NUMBER_FREE_FIELDS | RESUME_FREE_FIELDS | PER_RUN_FIELDS <= names
    assert RESUME_FREE_FIELDS - NUMBER_FREE_FIELDS == {"patience"}
    assert PER_RUN_FIELDS - NUMBER_FREE_FIELDS == {"fold"}
    assert NUMBER_FREE_FIELDS <= RESUME_FREE_FIELDS & PER_RUN_FIELDS


@pytest.mark.parametrize(("changes", "name"), [
    ({}, "unet_resnet18_128px_fold0"),
    ({"gate": True, "fold": 3}, "unet_resnet18_128px_gate_fold3"),
    ({"fold": -1}, "unet_resnet18_128px_foldall"),
])  # fmt: skip
def test_a_config_and_its_dict_give_one_name(changes, name):
    cfg = TrainConfig(arch="unet", encoder="resnet18", img_size=128).replace(**changes)
    assert run_name(cfg) == run_name(cfg.to_dict()) == name
    assert stem_of_run(name) == model_stem(cfg) == model_stem(cfg.to_dict())


def test_fold_given_and_old_or_3d_configs():
    old = {"arch": "unet", "encoder": "resnet34", "img_size": 64, "fold": 1}  # written before the gate existed
    assert run_name(old) == "unet_resnet34_64px_fold1"
    assert run_name(old, -1) == "unet_resnet34_64px_foldall"
    assert model_stem({"arch": "segresnet3d", "encoder": "resnet18", "img_size": 96}) == "segresnet3d_96px"
    assert stem_of_run("my_run") == "my_run"
    assert stem_of_run("unet_resnet18_320px_gate_fold12") == "unet_resnet18_320px_gate"
    assert stem_of_run("segresnet3d_128px_foldall") == "segresnet3d_128px"
