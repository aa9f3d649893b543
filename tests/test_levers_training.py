"""What each training lever does (docs/levers.md): SWA's weights are the mean of the
averaged epochs and its BatchNorm statistics are recomputed; a run starts from an earlier
run's weights (all of them, or the encoder's); the classification-first run; a run with
every lever on resumes to the numbers of an uninterrupted one, on both data paths."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import gi_utils.training.run_levers as run_levers_mod
import gi_utils.training.session as session_mod
from gi_utils.checkpoint import CheckpointError, load_state
from gi_utils.constants import CLASSES
from gi_utils.models import (
    CLS_SUFFIX,
    INIT_ALL,
    INIT_ENCODER,
    build_model,
    init_from_weights,
    model_config,
    run_name,
    save_model,
)
from gi_utils.training import SwaAverage, build_run_model, train

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def synth_dir(synth_factory):
    return synth_factory(n_cases=4, seed=1, slices_per_scan=16)


# --------------------------------------------------------------------------- SWA
def _constant(model: nn.Module, value: float) -> nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
    return model


def test_swa_weights_are_the_mean_of_the_averaged_epochs():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3))
    swa = SwaAverage(model, epochs=4, n=2)
    for epoch, value in enumerate([1.0, 2.0, 3.0, 7.0], start=1):
        assert swa.collect(_constant(model, value), epoch) == (epoch >= 3)
    assert swa.n_averaged == 2 and swa.first == 3
    for p in swa.module.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 5.0))  # (3 + 7) / 2
    with pytest.raises(ValueError, match="swa_epochs must be in 1..epochs"):
        SwaAverage(model, epochs=2, n=3)


def test_swa_batchnorm_statistics_are_recomputed():
    model = nn.Sequential(nn.BatchNorm2d(2))
    model[0].running_mean.fill_(5.0)  # stale statistics the average starts with
    swa = SwaAverage(model, epochs=1, n=1)
    swa.collect(model, 1)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 2, 6, 6, generator=gen) * (k + 1) + k, None) for k in range(3)]
    swa.update_bn(batches)
    bn = swa.module[0]
    x = torch.stack([b[0] for b in batches])  # (3 batches, 4, 2, 6, 6)
    torch.testing.assert_close(bn.running_mean, x.mean(dim=(0, 1, 3, 4)))  # cumulative: the mean of all
    per_batch_var = torch.stack([b.transpose(0, 1).reshape(2, -1).var(dim=1) for b in x])
    torch.testing.assert_close(bn.running_var, per_batch_var.mean(0))
    assert bn.momentum == 0.1  # restored after the pass


def test_a_run_averages_the_validated_weights_of_its_last_epochs(synth_dir, tmp_path, tiny_config, monkeypatch):
    seen = {}
    real = run_levers_mod.RunLevers.end_epoch

    def record(self, run):
        seen[run.state["epoch"]] = copy.deepcopy(dict(self.scored.named_parameters()))
        seen["buffers"] = copy.deepcopy(dict(self.scored.named_buffers()))
        real(self, run)

    monkeypatch.setattr(run_levers_mod.RunLevers, "end_epoch", record)
    out = tmp_path / "run"
    history = train(tiny_config(synth_dir, out, epochs=3, max_steps_per_epoch=2, swa_epochs=2, ema_decay=0.9))
    assert history["model"].tolist()[-1] == "swa" and history["epoch"].tolist() == [1, 2, 3, 3]
    swa = {k.removeprefix("module."): v for k, v in load_state(out / "last.pt")["swa"].items()}
    for name, p in seen[3].items():
        torch.testing.assert_close(swa[name], (seen[2][name] + p) / 2)
    bn = "encoder.bn1.running_mean"
    assert not torch.equal(swa[bn], seen["buffers"][bn])  # recomputed, not the averaged model's
    metrics = pd.read_json(out / "metrics.json", typ="series")
    best_row = history.loc[history["val_score"] == history["val_score"].max()].iloc[-1]
    assert metrics["best"]["val_score"] == best_row["val_score"]
    kept = load_file(out / "best.safetensors")
    average = load_file(out / "swa.safetensors")  # the average itself, kept whether or not it won
    assert set(average) <= set(swa) and all(torch.equal(average[k], swa[k]) for k in average)
    if best_row.get("model") == "swa":  # the average won: it is the run's model, BN recomputed
        assert all(torch.equal(kept[k], swa[k]) for k in kept)
    else:  # an epoch won: its validated (EMA) weights are kept
        assert all(torch.equal(kept[k], p) for k, p in seen[int(best_row["epoch"])].items())


# --------------------------------------------------------------------------- init_from
def _unet(in_channels: int = 3, **kw) -> nn.Module:
    return build_model("unet", "resnet18", in_channels, len(CLASSES), decoder_channels=[8] * 5, **kw)


def _save(model: nn.Module, path, in_channels: int = 3, **kw):
    cfg = model_config("unet", "resnet18", in_channels, model_kwargs={"decoder_channels": [8] * 5, **kw})
    return save_model(path, model, cfg)


def test_init_from_takes_all_weights_when_the_models_match(tmp_path):
    torch.manual_seed(0)
    source = _unet()
    (tmp_path / "run").mkdir()
    _save(source, tmp_path / "run" / "best.safetensors")
    torch.manual_seed(1)
    target = _unet()
    assert init_from_weights(target, tmp_path / "run") == INIT_ALL  # a run folder
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


def test_init_from_a_classifier_takes_its_encoder_alone(tmp_path):
    torch.manual_seed(0)
    gate = {"aux_params": {"classes": 3, "dropout": 0.2}}
    classifier = _unet(3, **gate)  # 3 slices, a gate head
    path = _save(classifier, tmp_path / "cls.safetensors", 3, **gate)
    torch.manual_seed(1)
    target = _unet(5)  # 5 slices, no head: another model
    fresh = copy.deepcopy(target.state_dict())
    assert init_from_weights(target, path) == INIT_ENCODER
    own, src = target.state_dict(), classifier.state_dict()
    for key in own:
        if key.startswith("encoder.") and key != "encoder.conv1.weight":
            assert torch.equal(own[key], src[key]), key
        elif not key.startswith("encoder."):
            assert torch.equal(own[key], fresh[key]), key  # the decoder is left as it was
    assert own["encoder.conv1.weight"].shape[1] == 5  # the first convolution adapted to 5 channels


def test_init_from_says_what_does_not_fit(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no best.safetensors"):
        init_from_weights(_unet(), tmp_path)
    path = _save(_unet(), tmp_path / "m.safetensors")
    seg3d = build_model("segresnet3d", in_channels=1, classes=3)
    with pytest.raises(CheckpointError, match="no encoder to take alone"):
        init_from_weights(seg3d, path)
    other = build_model("unet", "mobilenet_v2", 3, 3)
    with pytest.raises(CheckpointError, match="does not fit this encoder"):
        init_from_weights(other, path)


def test_classification_first_then_segmentation_from_its_encoder(synth_dir, tmp_path, tiny_config):
    cls_cfg = tiny_config(synth_dir, tmp_path, gate=True, seg_weight=0.0, epochs=2, max_steps_per_epoch=2)
    cls_dir = tmp_path / "pretrain" / run_name(cls_cfg)
    assert cls_dir.name.endswith(f"_gate{CLS_SUFFIX}_fold0")
    history = train(cls_cfg.replace(out_dir=str(cls_dir)))
    assert len(history) == 2
    assert pd.read_json(cls_dir / "metrics.json", typ="series")["best_epoch"] == 2  # the last epoch, not a score
    seg_cfg = tiny_config(synth_dir, tmp_path / "seg", slice_offsets=(-2, -1, 0, 1, 2), init_from=str(cls_dir))
    net = build_run_model(seg_cfg)
    kept = load_file(cls_dir / "best.safetensors")
    own = net.state_dict()
    assert all(torch.equal(own[k], kept[k]) for k in own if k.startswith("encoder.layer"))
    assert build_run_model(seg_cfg, resuming=True).state_dict()["encoder.layer1.0.conv1.weight"].ne(
        kept["encoder.layer1.0.conv1.weight"]).any()  # a resumed run takes last.pt's weights instead


def test_each_fold_starts_from_its_own_folds_run(synth_dir, tmp_path, tiny_config):
    """A fold's out-of-fold scores must not come from weights that trained on its cases:
    ``{fold}`` names each fold's own run; another fold's (or all cases') is refused."""
    kw = {"model_kwargs": {"decoder_channels": [8] * 5}}
    for fold in (0, 1, -1):
        src = tiny_config(synth_dir, tmp_path, fold=fold, **kw)
        folder = tmp_path / "pre" / run_name(src)
        folder.mkdir(parents=True)
        save_model(folder / "best.safetensors", _unet(), model_config(
            "unet", "resnet18", 3, model_kwargs=kw["model_kwargs"], train_config=src.to_dict()))
    template = str(tmp_path / "pre" / "unet_resnet18_64px_fold{fold}")
    for fold in (0, 1, -1):  # each fold from its own; all cases may start from all cases
        build_run_model(tiny_config(synth_dir, tmp_path / "seg", fold=fold, init_from=template, **kw))
    with pytest.raises(ValueError, match=r"trained with \{'fold': 1.*this run validates fold 0"):
        build_run_model(tiny_config(synth_dir, tmp_path / "seg", init_from=template.replace("{fold}", "1"), **kw))
    with pytest.raises(ValueError, match="'fold': -1"):
        build_run_model(tiny_config(synth_dir, tmp_path / "seg", init_from=template.replace("{fold}", "all"), **kw))


# --------------------------------------------------------------------------- resume with every lever on
LEVERS = {"epochs": 2, "max_steps_per_epoch": 2, "save_every_steps": 1, "swa_epochs": 2, "mix": "cutmix_mixup",
          "mix_p": 0.5, "drop_tail": 5, "loss": "bce_dice_lovasz", "slice_offsets": (-2, -1, 0, 1, 2)}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("data_path", ["workers", "device"])
def test_a_run_with_every_lever_resumes_to_the_uninterrupted_numbers(synth_dir, tmp_path, tiny_config,
                                                                      monkeypatch, data_path):  # fmt: skip
    full = tiny_config(synth_dir, tmp_path / "full", data_path=data_path, **LEVERS)
    train(full)
    real = session_mod.TrainingRun._on_step

    def stop(self, loss_sum, n_batches):
        real(self, loss_sum, n_batches)
        if self.state["epoch"] == 1 and n_batches == 1:  # in the last epoch, the average holds epoch 1
            raise KeyboardInterrupt

    cut = tiny_config(synth_dir, tmp_path / "cut", data_path=data_path, **LEVERS)
    monkeypatch.setattr(session_mod.TrainingRun, "_on_step", stop)
    with pytest.raises(KeyboardInterrupt):
        train(cut)
    monkeypatch.undo()
    assert int(load_state(tmp_path / "cut" / "last.pt")["swa"]["n_averaged"]) == 1
    train(cut)
    a = pd.read_csv(tmp_path / "full" / "history.csv").drop(columns="epoch_time_s")
    b = pd.read_csv(tmp_path / "cut" / "history.csv").drop(columns="epoch_time_s")
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    wa, wb = load_file(tmp_path / "full" / "best.safetensors"), load_file(tmp_path / "cut" / "best.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = load_state(tmp_path / "full" / "last.pt"), load_state(tmp_path / "cut" / "last.pt")
    assert all(torch.equal(sa["swa"][k], sb["swa"][k]) for k in sa["swa"])


# --------------------------------------------------------------------------- the config of the levers
@pytest.mark.parametrize(("values", "message"), [
    ({"drop_tail": -1}, "drop_tail must be >= 0"),
    ({"arch": "segresnet3d", "drop_tail": 5}, "drop_tail=5 does not apply to the 3-D segresnet3d"),
    ({"mix": "blend"}, "mix='blend' is not valid"),
    ({"mix": "cutmix", "mix_p": 1.5}, r"mix_p must be in \[0, 1\]"),
    ({"swa_epochs": 11}, r"swa_epochs must be in 0..epochs \(10\)"),
    ({"seg_weight": 0.0}, "seg_weight=0 trains nothing without the classifier gate"),
    ({"patch_size": 64}, "patch_size=64 applies to 3-D models"),
    ({"arch": "segresnet3d", "patch_size": 60}, "patch_size must be a multiple of 8"),
    ({"arch": "segresnet3d", "patch_size": 256}, r"at most img_size \(128\)"),
])  # fmt: skip
def test_lever_values_are_checked_with_the_field_named(values, message):
    from gi_utils.training import TrainConfig

    with pytest.raises(ValueError, match=message):
        TrainConfig(**values)
    assert TrainConfig().to_dict() == TrainConfig.from_dict(TrainConfig().to_dict()).to_dict()


@pytest.mark.slow
def test_3d_small_crops_then_a_short_fine_tune_on_whole_slices(synth_dir, tmp_path, tiny_config, capsys):
    kw = {"arch": "segresnet3d", "patch_depth": 16, "batch_size": 2, "amp": "no", "max_steps_per_epoch": 2}
    round1 = tiny_config(synth_dir, tmp_path / "round1", patch_size=32, **kw)
    train(round1)
    round2 = tiny_config(synth_dir, tmp_path / "round2", init_from=str(tmp_path / "round1"), lr=1e-4, **kw)
    train(round2)
    assert f"initialised {INIT_ALL} from {tmp_path / 'round1' / 'best.safetensors'}" in capsys.readouterr().out
    assert pd.read_csv(tmp_path / "round2" / "history.csv")["val_score"].notna().all()


# --------------------------------------------------------------------------- larger encoders
@pytest.mark.parametrize("encoder", ["efficientnet-b7", "tu-tf_efficientnetv2_l"])
def test_the_write_ups_larger_encoders_build_offline_for_five_slices(encoder):
    """The 1st place's EfficientNet-B7 and the 3rd place's EfficientNetV2-L, as smp/timm
    names: built without weights (nothing fetched), 5 slices in, 3 classes out."""
    from gi_utils.training import TrainConfig

    cfg = TrainConfig(encoder=encoder, slice_offsets=(-2, -1, 0, 1, 2), img_size=64)
    net = build_model(cfg.arch, cfg.encoder, cfg.in_channels, 3, weights=None).eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 5, 64, 64))
    assert out.shape == (1, 3, 64, 64)
    assert sum(p.numel() for p in net.encoder.parameters()) > 60e6  # B7 ~64M, V2-L ~117M parameters


# --------------------------------------------------------------------------- the recipe
def test_the_recipe_table_is_the_presets():
    from gi_utils.pipeline.docs import readme_block
    from gi_utils.training.presets import recipe_table

    doc = Path(__file__).resolve().parents[1] / "docs" / "levers.md"
    assert readme_block("recipe", doc).strip() == recipe_table().strip()


def test_the_recipes_are_valid_for_their_models():
    from gi_utils.training.presets import RECIPES, preset_config, presets_table

    seg = preset_config("kaggle_levers")
    assert (seg.swa_epochs, seg.mix, seg.loss, seg.drop_tail, seg.resize_mode, seg.gate) == (
        10, "cutmix_mixup", "bce_dice_lovasz", 5, "crop", True)
    assert seg.in_channels == 5 and seg.cache_masks and seg.img_size == 320
    cls = preset_config("kaggle_levers_cls")
    assert run_name(cls).endswith(f"_gate{CLS_SUFFIX}_fold0") and not run_name(seg).endswith(CLS_SUFFIX + "_fold0")
    for arch in ("segresnet3d", "unet3d"):  # round 1 of the 3-D rounds: 192 px crops, no 2.5D lever
        cfg = preset_config("kaggle_levers", arch=arch)
        assert cfg.patch_size == 192 and cfg.drop_tail == 0 and not cfg.gate
    assert not any(f"`{name}`" in presets_table().splitlines()[0] for name in RECIPES)  # docs/configuration.md's table: machines


@pytest.mark.slow
def test_two_processes_mix_and_average(synth_dir, tmp_path, tiny_config):
    """Data-parallel (two CPU processes, the notebook launcher's path): each process mixes
    its own global batches, the average is the same model on both, validated once."""
    from gi_utils.training import launch

    cfg = tiny_config(synth_dir, tmp_path / "run", epochs=2, max_steps_per_epoch=2, swa_epochs=2,
                      mix="cutmix_mixup", mix_p=1.0, loss="bce_dice_lovasz")  # fmt: skip
    history = launch(cfg, 2, method="notebook")
    assert history["epoch"].tolist() == [1, 2, 2] and history["model"].tolist()[-1] == "swa"
    state = load_state(tmp_path / "run" / "last.pt")
    assert state["num_processes"] == 2 and int(state["swa"]["n_averaged"]) == 2
    assert pd.read_json(tmp_path / "run" / "metrics.json", typ="series")["num_processes"] == 2
