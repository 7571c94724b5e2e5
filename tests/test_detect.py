"""The drift detector on small generated scenarios, with the shipped base model."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from device.model import ResNet26
from device.samples import Samples
from device.shipped import load_shipped_base_model
from drift import labels, shapes
from drift.corruptions import corrupt
from drift.detect import (
    OBSERVE_FORWARDS,
    PLAN_SHARE,
    Detection,
    DetectorConfig,
    decide,
    detect,
    forward_copy,
    full_finetune_forward_passes,
    run_probe,
    statistics_probe,
)
from drift.source_stats import SourceStatistics, source_statistics_of

SIZE = 256


@pytest.fixture(scope="module")
def shipped() -> tuple[ResNet26, SourceStatistics]:
    checkpoint = load_shipped_base_model()
    return checkpoint.model, source_statistics_of(checkpoint.extra, checkpoint.model)


def _images(seed: int, subclasses: tuple[int, ...] = (0, 1), n: int = SIZE) -> shapes.ShapesData:
    # Seeds far from the base model's own data seeds.
    return shapes.generate(n, 90_000 + seed, subclasses=subclasses)


def _samples(x: np.ndarray, y: np.ndarray) -> Samples:
    return Samples.from_arrays(x, y)


def _no_drift(seed: int) -> Samples:
    data = _images(seed)
    return _samples(data.x, data.y)


def _input(seed: int, corruption: str, severity: int = 5, n: int = SIZE) -> Samples:
    data = _images(seed, n=n)
    return _samples(corrupt(data.x, corruption, severity, seed=seed), data.y)


def _feature(seed: int, n: int = SIZE) -> Samples:
    data = _images(seed, subclasses=(2, 3), n=n)
    return _samples(data.x, data.y)


def _output(seed: int, label_map: labels.LabelMap, n: int = SIZE) -> Samples:
    data = _images(seed, n=n)
    return _samples(data.x, label_map.apply(data.y))


SCENARIOS = {
    "none": lambda: _no_drift(1),
    "gaussian-noise": lambda: _input(2, "gaussian_noise"),
    "contrast": lambda: _input(3, "contrast"),
    "subpopulation": lambda: _feature(4),
    "flip": lambda: _output(5, labels.flip(10)),
    "permutation": lambda: _output(6, labels.permutation(10, seed=6)),
}
EXPECTED = {"none": "none", "gaussian-noise": "input", "contrast": "input", "subpopulation": "feature",
            "flip": "output", "permutation": "output"}


@pytest.fixture(scope="module")
def detected(shipped: tuple[ResNet26, SourceStatistics]) -> dict[str, Detection]:
    """Each scenario detected once with the default settings, shared by the tests below."""
    model, source = shipped
    return {name: detect(model, make(), source) for name, make in SCENARIOS.items()}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_detects_each_kind_of_drift(detected: dict[str, Detection], name: str) -> None:
    detection = detected[name]
    assert detection.drift_type == EXPECTED[name], detection.evidence["rule"]
    assert 0.5 <= detection.confidence <= 1.0
    # Planned a quarter below the 5% bound, to leave room for CPU time's scatter.
    assert detection.forward_passes <= PLAN_SHARE * 0.05 * full_finetune_forward_passes(SIZE) + 1
    assert detection.evidence["cost_fraction"] <= 0.05
    json.dumps(detection.to_dict())


def test_no_drift_spends_only_the_observing_pass(detected: dict[str, Detection]) -> None:
    detection = detected["none"]
    assert not detection.probe_used and "statistics_probe" not in detection.evidence
    assert detection.forward_passes == round(detection.evidence["samples"] * OBSERVE_FORWARDS)


def test_evidence_says_where_the_change_starts(detected: dict[str, Detection], shipped: tuple[ResNet26, SourceStatistics]) -> None:
    calm, noisy, flat = (detected[name].evidence for name in ("none", "gaussian-noise", "contrast"))
    assert noisy["pixel"]["log_hf_energy"] > calm["pixel"]["log_hf_energy"] + 1.0
    assert flat["pixel"]["contrast_r"] < calm["pixel"]["contrast_r"] - 1.0
    for stage in ("first", "layer1", "layer3", "head"):
        assert noisy["profile"][stage] > calm["profile"][stage]
    assert set(noisy["layers"]) == set(shipped[1].bn)


def test_relabelled_outputs_show_in_the_confusion(detected: dict[str, Detection]) -> None:
    evidence = detected["flip"].evidence
    assert evidence["remapped_accuracy"] > evidence["accuracy"] + 0.5
    # Predicted class c mostly carries label 9 - c.
    assert sum(int(label) == 9 - int(p) for p, label in evidence["remapped_predictions"].items()) >= 8
    for name in ("none", "gaussian-noise", "subpopulation"):
        assert detected[name].evidence["relabel_gain"] < evidence["relabel_gain"] / 4


def test_works_from_batchnorm_buffers_alone(shipped: tuple[ResNet26, SourceStatistics]) -> None:
    model, source = shipped
    buffers = SourceStatistics.from_model(model, accuracy=source.accuracy)
    assert detect(model, _no_drift(10), buffers).drift_type == "none"
    noisy = detect(model, _input(11, "gaussian_noise"), buffers)
    assert noisy.drift_type == "input" and noisy.evidence["pixel_shift"] is None


def test_statistics_probe_tells_input_from_feature_drift(shipped: tuple[ResNet26, SourceStatistics]) -> None:
    model, _ = shipped
    half = torch.arange(64)
    gains = {}
    for name, samples in (("input", _input(15, "shot_noise", n=128)), ("feature", _feature(15, n=128))):
        fit, held = samples.subset(half), samples.subset(half + 64)
        gains[name] = statistics_probe(model, fit, held)["accuracy_gain"]
    assert gains["input"] > gains["feature"] + 0.1


def test_the_forward_copy_computes_what_the_model_does(shipped: tuple[ResNet26, SourceStatistics]) -> None:
    model, _ = shipped
    model = copy.deepcopy(model).train()
    before = copy.deepcopy(model.state_dict())
    work = forward_copy(model)
    assert not work.training and model.training
    assert work.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    images = _input(17, "fog", n=32).images()
    with torch.no_grad():
        expected = model.eval()(images)
        got = work(images)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_detection_leaves_the_model_alone(shipped: tuple[ResNet26, SourceStatistics]) -> None:
    model, source = shipped
    model = copy.deepcopy(model)
    model.train()
    before = copy.deepcopy(model.state_dict())
    samples = _feature(13, n=128)
    detection = detect(model, samples, source, DetectorConfig(statistics_probe="always"))
    assert "statistics_probe" in detection.evidence
    assert model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # Fewer samples, a smaller observing pass and a smaller probe: the cost bound holds.
    assert detection.evidence["samples"] < 128
    assert 0 < detection.evidence["statistics_probe"]["fit_samples"] < detection.evidence["samples"] // 2
    assert detection.forward_passes <= 0.05 * full_finetune_forward_passes(128)


def test_a_buffer_too_small_for_the_statistics_probe_skips_it_within_the_bound(
    shipped: tuple[ResNet26, SourceStatistics],
) -> None:
    model, source = shipped
    detection = detect(model, _feature(13, n=64), source, DetectorConfig(statistics_probe="always"))
    assert "statistics_probe" not in detection.evidence
    assert "fewer than" in detection.evidence["statistics_probe_skipped"]
    assert detection.forward_passes <= 0.05 * full_finetune_forward_passes(64)


def test_training_probe_prefers_the_classifier_for_relabelled_outputs(shipped: tuple[ResNet26, SourceStatistics]) -> None:
    model, _ = shipped
    samples = _output(16, labels.flip(10), n=128)
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(0))
    before = copy.deepcopy(model.state_dict())
    probe = run_probe(model, samples, order, ("block1", "fc"), DetectorConfig(), budget_passes=1e6)
    assert probe["ran"] and probe["best_block"] == "fc" and probe["drift_type"] == "output"
    assert set(probe["blocks"]) == {"block1", "fc"}
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    skipped = run_probe(model, samples, order, ("block1", "fc"), DetectorConfig(), budget_passes=10)
    assert not skipped["ran"]


def test_decide_follows_the_configured_thresholds() -> None:
    evidence = {
        "profile": {"first": 0.0, "layer1": 0.0, "layer2": 0.0, "layer3": 0.0, "head": 0.0, "max": 0.0},
        "pixel_shift": 0.1, "accuracy": 0.9, "accuracy_drop": 0.03, "relabel_gain": 0.0,
    }
    assert decide(evidence).drift_type == "none"
    assert decide(evidence, DetectorConfig(accuracy_drop=0.02)).needs == "statistics"
    assert decide(evidence, DetectorConfig(pixel_shift_in_range=0.05)).drift_type == "input"
    assert decide({**evidence, "relabel_gain": 0.5}).drift_type == "output"
