"""Source statistics: from BatchNorm buffers, from source images, JSON round trips, checkpoint lookup."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from device.batchnorm import recalibrate_batchnorm
from device.checkpoint import load_checkpoint
from device.model import ModelConfig, ResNet26
from device.pretrain import PretrainConfig
from device.shipped import SHIPPED_BASE_MODEL, load_shipped_base_model
from drift.base_model import add_source_statistics, make_base_model
from drift.source_stats import (
    CHECKPOINT_KEY,
    PIXEL_FEATURES,
    SourceStatistics,
    batchnorm_input_statistics,
    named_batchnorm_layers,
    pixel_features,
    source_statistics_of,
)
from tests.factories import colour_samples


def test_from_buffers_only_holds_every_layer_running_statistics(model: ResNet26) -> None:
    layers = dict(named_batchnorm_layers(model))
    model.layer2[1].bn1.running_mean.fill_(0.25)
    stats = SourceStatistics.from_model(model)
    assert stats.samples == 0 and stats.pixel is None and stats.accuracy is None
    assert list(stats.bn) == list(layers)
    mean, var = stats.bn["layer2.1.bn1"]
    assert mean == pytest.approx([0.25] * 32)
    assert var == pytest.approx(layers["layer2.1.bn1"].running_var.tolist())


def test_from_samples_matches_the_inputs_the_layers_see(model: ResNet26) -> None:
    samples = colour_samples(64, seed=3)
    stats = SourceStatistics.from_model(model, samples, accuracy=0.9)
    assert stats.samples == 64 and stats.accuracy == 0.9
    assert stats.pixel is not None and stats.pixel["features"] == list(PIXEL_FEATURES)
    # The first BatchNorm layer reads conv1 whatever the mode, so re-estimated buffers must agree.
    recalibrate_batchnorm(model, samples, batch_size=64)
    first = model.layer1[0].bn1
    assert stats.bn["layer1.0.bn1"][0] == pytest.approx(first.running_mean.tolist(), abs=1e-4)
    assert stats.bn["layer1.0.bn1"][1] == pytest.approx(first.running_var.tolist(), rel=1e-3)


def test_batchnorm_input_statistics_do_not_depend_on_the_batch_size(model: ResNet26) -> None:
    images = colour_samples(24, seed=4).images()
    whole = batchnorm_input_statistics(model, images, batch_size=24)
    pieces = batchnorm_input_statistics(model, images, batch_size=10)
    for name, (mean, var) in whole.items():
        assert torch.allclose(mean, pieces[name][0], atol=1e-5)
        assert torch.allclose(var, pieces[name][1], rtol=1e-4, atol=1e-6)


def test_pixel_features_see_noise_and_contrast() -> None:
    images = colour_samples(16, seed=5).images()
    noisy = (images + 0.2 * torch.randn_like(images)).clamp(0, 1)
    flat = images.mean((2, 3), keepdim=True).expand_as(images)
    base, more_noise, no_contrast = pixel_features(images), pixel_features(noisy), pixel_features(flat)
    hf = PIXEL_FEATURES.index("log_hf_energy")
    contrast = PIXEL_FEATURES.index("contrast_r")
    assert (more_noise[:, hf] > base[:, hf]).all()
    assert (no_contrast[:, contrast] < base[:, contrast]).all()


def test_json_round_trip(model: ResNet26) -> None:
    stats = SourceStatistics.from_model(model, colour_samples(32, seed=6), accuracy=0.75)
    data = json.loads(json.dumps(stats.to_dict()))
    again = SourceStatistics.from_dict(data)
    assert again.to_dict() == data
    assert again.samples == 32 and again.accuracy == 0.75
    assert list(again.bn) == list(stats.bn)
    for name, (mean, var) in stats.bn.items():
        assert again.bn[name][0] == pytest.approx(mean, rel=1e-5, abs=1e-9)
        assert again.bn[name][1] == pytest.approx(var, rel=1e-5, abs=1e-9)
    assert again.pixel is not None and stats.pixel is not None
    assert again.pixel["mean"] == pytest.approx(stats.pixel["mean"], rel=1e-5)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(version=99),
        lambda d: d["bn"]["bn"][0].pop(),
        lambda d: d.pop("bn"),
        lambda d: d["pixel"]["std"].pop(),
    ],
)
def test_from_dict_rejects_malformed_data(model: ResNet26, change: Callable[[dict[str, Any]], Any]) -> None:
    data = SourceStatistics.from_model(model, colour_samples(8, seed=7)).to_dict()
    change(data)
    with pytest.raises(ValueError):
        SourceStatistics.from_dict(data)


def test_source_statistics_of_prefers_stored_ones_that_fit(model: ResNet26) -> None:
    stored = SourceStatistics.from_model(model, colour_samples(16, seed=8), accuracy=0.8)
    found = source_statistics_of({CHECKPOINT_KEY: stored.to_dict()}, model)
    assert found.samples == 16 and found.accuracy == 0.8

    fallback = source_statistics_of({"val_accuracy": 0.7}, model)
    assert fallback.samples == 0 and fallback.accuracy == 0.7

    wider = ResNet26(ModelConfig(width=2))
    mismatched = source_statistics_of({CHECKPOINT_KEY: stored.to_dict()}, wider)
    assert mismatched.samples == 0
    assert len(mismatched.bn["bn"][0]) == 128


def test_the_shipped_base_model_carries_source_statistics() -> None:
    checkpoint = load_shipped_base_model()
    assert CHECKPOINT_KEY in checkpoint.extra
    stats = source_statistics_of(checkpoint.extra, checkpoint.model)
    assert stats.samples > 0 and stats.pixel is not None
    assert stats.accuracy is not None and 0.5 < stats.accuracy <= 1.0
    assert set(stats.bn) == {name for name, _ in named_batchnorm_layers(checkpoint.model)}


def test_add_source_statistics_keeps_the_weights_bit_identical(tmp_path: Path) -> None:
    out = tmp_path / "base.pt"
    stats = add_source_statistics(SHIPPED_BASE_MODEL, out=out, num_val=48)
    assert stats.samples == 48 and stats.accuracy is not None
    original, written = load_checkpoint(SHIPPED_BASE_MODEL), load_checkpoint(out)
    for key, value in original.model.state_dict().items():
        assert torch.equal(value, written.model.state_dict()[key]), key
    assert written.extra[CHECKPOINT_KEY]["samples"] == 48
    assert {k: v for k, v in written.extra.items() if k != CHECKPOINT_KEY} == {
        k: v for k, v in original.extra.items() if k != CHECKPOINT_KEY
    }


def test_new_base_models_carry_source_statistics() -> None:
    config = PretrainConfig(model=ModelConfig(num_classes=10), epochs=1, batch_size=32, lr=0.05, num_threads=1)
    model, report = make_base_model(seed=3, num_train=64, num_val=32, config=config)
    extra = report.checkpoint_extra()
    stats = SourceStatistics.from_dict(extra[CHECKPOINT_KEY])
    assert stats.samples == 32 and stats.accuracy == pytest.approx(report.val_accuracy, abs=1e-4)
    assert stats.pixel is not None and set(stats.bn) == {name for name, _ in named_batchnorm_layers(model)}
