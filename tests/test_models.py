"""Model registry, local encoder weights, and safe save/load of trained models."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from gi_utils.checkpoint import CheckpointError, load_state, save_state
from gi_utils.models import (
    ARCH_SPECS,
    ARCHITECTURES,
    ARCHITECTURES_3D,
    ArchSpec,
    ModelConfig,
    arch_spec,
    build_model,
    check_img_size,
    load_model,
    load_weights_into,
    model_config,
    read_model_config,
    save_model,
)
from gi_utils.training import TrainConfig

torch.set_num_threads(1)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_arch_builds_and_trains_at_64(arch):
    torch.manual_seed(0)
    model = build_model(arch, "resnet18", in_channels=3, classes=3, weights=None)
    x = torch.randn(2, 3, 64, 64)
    y = model(x)
    assert y.shape == (2, 3, 64, 64)
    y.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_core_architectures_are_registered():
    for name in ("unet", "unetplusplus", "deeplabv3plus", "fpn", "manet", "segformer"):
        assert name in ARCHITECTURES


def test_one_entry_per_architecture_knows_its_kind():
    assert list(ARCH_SPECS) == [*ARCHITECTURES, *ARCHITECTURES_3D]
    for name, spec in ARCH_SPECS.items():
        assert spec.name == name and spec.kind == ("3d" if name in ARCHITECTURES_3D else "2.5d")
        assert arch_spec(name.upper()) is spec  # the one lookup, in any case
    unet, seg = arch_spec("unet"), arch_spec("SegResNet3D")
    assert (unet.is_3d, unet.has_encoder, unet.memory_format) == (False, True, torch.channels_last)
    assert (seg.is_3d, seg.has_encoder, seg.memory_format) == (True, False, torch.channels_last_3d)
    assert (unet.in_channels((-2, 0, 2)), seg.in_channels((-2, 0, 2))) == (3, 1)
    assert unet.depth_stride() == 1 and seg.depth_stride() == 8  # 4 levels down: 2**3
    assert arch_spec("unet3d").depth_stride({"strides": [2, 2]}) == 4
    assert seg.settings({"init_filters": 16})["init_filters"] == 16 and seg.defaults["init_filters"] == 8
    assert pickle.loads(pickle.dumps(seg)) == seg  # a TrainConfig carries its entry to other processes
    with pytest.raises(KeyError, match="unknown architecture 'unett'; valid names: unet, .*segresnet3d"):
        arch_spec("unett")
    for name, kind in (("unet", "2d"), ("UNet", "2.5d")):  # an entry added wrong fails where it is written
        with pytest.raises(ValueError, match=f"architecture '{name}': the name must be lower case and the kind"):
            ArchSpec(name, kind, unet.source)
    saved = ModelConfig.from_dict({"arch": "SegResNet3D", "encoder": "", "in_channels": 1, "classes": 3})  # read: normalised
    assert saved.arch == "segresnet3d" and saved.spec is seg


def test_unknown_arch_lists_valid_names():
    with pytest.raises(KeyError, match="unet.*unetplusplus.*deeplabv3plus"):
        build_model("unett")


def test_unknown_encoder_lists_valid_names():
    with pytest.raises(KeyError, match="resnet19.*resnet18"):
        build_model("unet", "resnet19")
    with pytest.raises(KeyError, match="not a timm model"):
        build_model("unet", "tu-no_such_net")


def test_arch_name_is_case_insensitive():
    assert type(build_model("UNet")).__name__ == "Unet"


@pytest.mark.parametrize("size", [64, 96, 256])
def test_img_size_multiple_of_32_ok(size):
    assert check_img_size(size) == size


@pytest.mark.parametrize("size", [100, 31, 0, -64])
def test_img_size_not_multiple_of_32_is_a_clear_error(size):
    with pytest.raises(ValueError, match="img_size"):
        check_img_size(size)


def test_img_size_error_suggests_neighbours():
    with pytest.raises(ValueError, match="stride 32; use e.g. 96 or 128"):
        check_img_size(100)


# --------------------------------------------------------------------------- local weights
def _encoder_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone().contiguous() for k, v in model.encoder.state_dict().items()}


def test_local_safetensors_encoder_weights(tmp_path):
    torch.manual_seed(1)
    src = build_model("unet")
    path = tmp_path / "resnet18.safetensors"
    save_file(_encoder_state(src), path)
    model = build_model("fpn", "resnet18", weights=path)
    for k, v in src.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[k], v), k


def test_local_pt_weights_with_prefix_and_head_and_more_channels(tmp_path):
    torch.manual_seed(2)
    src = build_model("unet")
    state = {f"encoder.{k}": v for k, v in _encoder_state(src).items()}
    state["fc.weight"] = torch.zeros(1000, 512)  # a classifier head is ignored
    path = tmp_path / "enc.pt"
    torch.save({"state_dict": state}, path)
    model = build_model("unet", in_channels=5, weights=str(path))
    assert model.encoder.conv1.weight.shape == (64, 5, 7, 7)  # 3-channel conv adapted
    assert torch.equal(model.encoder.layer4[1].conv2.weight, src.encoder.layer4[1].conv2.weight)


def test_local_weights_of_another_encoder_rejected(tmp_path):
    path = tmp_path / "r34.safetensors"
    save_file(_encoder_state(build_model("unet", "resnet34")), path)
    with pytest.raises(ValueError, match="r34.safetensors"):
        build_model("unet", "resnet18", weights=path)


def test_missing_local_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        build_model("unet", weights=tmp_path / "nope.safetensors")


# --------------------------------------------------------------------------- save / load
@pytest.fixture
def saved_unet(tmp_path):
    torch.manual_seed(3)
    model = build_model("unet").eval()
    cfg = model_config("unet", "resnet18", 3, 3, img_size=64, slice_offsets=[-2, 0, 2])
    path = save_model(tmp_path / "best.safetensors", model, cfg)
    return model, cfg, path


def test_save_load_round_trip(saved_unet):
    model, cfg, path = saved_unet
    assert path.with_suffix(".json").is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "best.json",
        "best.safetensors",
    ]  # no temp files
    loaded, loaded_cfg = load_model(path)
    assert loaded_cfg == cfg and not loaded.training
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_model_kwargs_are_saved_and_used_to_rebuild(tmp_path):
    kwargs = {"decoder_channels": [64, 32, 16, 16, 8]}
    model = build_model("unetplusplus", **kwargs)
    cfg = model_config("unetplusplus", "resnet18", model_kwargs=kwargs, img_size=64)
    loaded, _ = load_model(save_model(tmp_path / "m.safetensors", model, cfg))
    assert loaded.decoder.blocks["x_0_4"].conv1[0].out_channels == 8


def test_config_is_embedded_so_the_json_is_optional(saved_unet):
    _, cfg, path = saved_unet
    path.with_suffix(".json").unlink()
    assert read_model_config(path) == cfg
    load_model(path)


def test_an_old_config_reads_with_the_defaults_and_an_unknown_key_is_named(saved_unet, tmp_path):
    model, _, _ = saved_unet
    old = {"arch": "unet", "encoder": "resnet18", "in_channels": 3, "classes": 3, "img_size": 64,
           "slice_offsets": [-2, 0, 2], "model_kwargs": {}}  # written before gate, threshold, norm_version...
    path = tmp_path / "old.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)  # no embedded config
    path.with_suffix(".json").write_text(json.dumps(old))
    _, cfg = load_model(path)
    assert (cfg.gate, cfg.threshold, cfg.min_size, cfg.resize_mode, cfg.norm_version) == (False, 0.5, 0, "resize", None)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    path.with_suffix(".json").write_text(json.dumps({**old, "treshold": 0.4}))
    with pytest.raises(CheckpointError, match=r"old.safetensors.*unknown key\(s\) \['treshold'\]"):
        read_model_config(path)
    with pytest.raises(ValueError, match=r"lacks \['encoder'\]"):
        ModelConfig.from_dict({"arch": "unet", "in_channels": 3, "classes": 3})
    run = {"arch": "unet", "encoder": "resnet34", "img_size": 96, "fold": 1, "epochs": 3, "threshold": 0.4}
    assert ModelConfig.from_run_config(run) == ModelConfig("unet", "resnet34", img_size=96, threshold=0.4)
    for train in (TrainConfig(arch="segresnet3d", img_size=96), TrainConfig(slice_offsets=(-2, -1, 0, 1, 2))):
        assert ModelConfig.from_run_config(train.to_dict()).in_channels == train.in_channels  # as the run derives it


def test_load_checkpoint_of_another_arch_is_a_clear_error(saved_unet):
    _, _, path = saved_unet
    with pytest.raises(CheckpointError, match="holds a 'unet' model.*expected 'fpn'"):
        load_model(path, arch="fpn")
    with pytest.raises(CheckpointError, match=r"best.safetensors.*'unet'.*do not fit this FPN"):
        from safetensors.torch import load_file

        load_weights_into(build_model("fpn"), load_file(path), str(path), read_model_config(path))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_model_file_names_the_path(saved_unet, damage):
    _, _, path = saved_unet
    data = path.read_bytes()
    path.write_bytes(
        {"truncate": data[: len(data) // 2], "garbage": b"\x00garbage" * 100, "empty": b""}[damage]
    )
    with pytest.raises(CheckpointError, match="best.safetensors"):
        load_model(path)


def test_missing_model_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "none.safetensors")


def test_save_model_needs_build_keys(tmp_path):
    with pytest.raises(ValueError, match="lacks"):
        save_model(tmp_path / "m.safetensors", build_model("unet"), {"arch": "unet"})


# --------------------------------------------------------------------------- pickles
class _Evil:
    """Unpickling this would create ``marker``: a stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "last.pt"
    torch.save({"model": {}, "payload": _Evil(marker)}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_state(path)
    with pytest.raises(CheckpointError, match="last.pt"):
        build_model("unet", weights=path)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_plain_pickle_file_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "state.pt"
    path.write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(CheckpointError):
        load_state(path)
    assert not marker.exists()


def test_state_round_trip_and_truncation(tmp_path):
    path = tmp_path / "last.pt"
    state = {"epoch": 3, "history": [{"a": 1.0}], "t": torch.arange(4), "rng": (3, (1, 2), None)}
    save_state(path, state)
    back = load_state(path)
    assert (
        back["epoch"] == 3
        and torch.equal(back["t"], state["t"])
        and back["rng"] == (3, (1, 2), None)
    )
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="last.pt"):
        load_state(path)
