"""The energy-aware ladder: cheapest first, escalate only when short, revert what hurts, obey the budget.

The meter is the hardware edge: a scripted ``energy_used`` callable stands in for it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from device.finetune import FinetuneConfig, Progress
from device.inference import evaluate_batches
from device.model import ResNet26
from device.samples import Samples
from device.shipped import load_shipped_base_model
from drift import labels, shapes
from drift.corruptions import corrupt
from drift.detect import Detection
from drift.source_stats import SourceStatistics, source_statistics_of
from drift.strategy import (
    DEFAULT_LADDERS,
    PAPER_RUNG_SETTINGS,
    AdaptConfig,
    StepResult,
    adapt,
    detect_and_adapt,
    plan,
)

# Few, large steps: the classifier learns a flip within a couple of epochs.
QUICK = FinetuneConfig(epochs=2, patience=None, batch_size=32, lr=0.1, bn_samples=128)


@pytest.fixture(scope="module")
def shipped() -> tuple[ResNet26, SourceStatistics]:
    checkpoint = load_shipped_base_model()
    return checkpoint.model, source_statistics_of(checkpoint.extra, checkpoint.model)


@pytest.fixture
def base(shipped: tuple[ResNet26, SourceStatistics]) -> Iterator[ResNet26]:
    yield copy.deepcopy(shipped[0])


def _flipped(n: int, seed: int) -> Samples:
    data = shapes.generate(n, seed, subclasses=(0, 1))
    return Samples.from_arrays(data.x, labels.flip(shapes.NUM_SUPERCLASSES).apply(data.y))


def _source(n: int, seed: int) -> Samples:
    data = shapes.generate(n, seed, subclasses=(0, 1))
    return Samples.from_arrays(data.x, data.y)


def _accuracy(model: ResNet26, samples: Samples) -> float:
    model.eval()
    return evaluate_batches(model, samples.images, samples.y, 256).accuracy


def _same_state(a: ResNet26, b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, b[k]) for k, v in a.state_dict().items())


class ScriptedMeter:
    """A meter whose reading the test moves: ``joules`` grows by ``per_batch`` every training batch."""

    def __init__(self, per_batch: float = 0.0) -> None:
        self.joules = 0.0
        self.per_batch = per_batch
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.joules

    def on_progress(self, progress: Progress) -> None:
        if progress.phase == "train":
            self.joules += self.per_batch


def test_ladders_start_with_the_cheapest_strategy() -> None:
    cost = {"bn": 0.05, "fc": 0.1, "block3": 0.33, "block2": 0.6, "block1": 0.9, "full": 1.0}
    for drift, ladder in DEFAULT_LADDERS.items():
        assert plan(drift) == list(ladder)
        assert [cost[s] for s in ladder] == sorted(cost[s] for s in ladder)
    assert plan("none") == []
    with pytest.raises(ValueError):
        plan("sideways")
    with pytest.raises(ValueError):
        AdaptConfig(ladders={"input": ("bn", "nonsense")})


def test_rung_settings_adjust_the_jobs_configuration() -> None:
    config = AdaptConfig(finetune=FinetuneConfig(epochs=10), rung_settings={"block1": {"lr": 0.005, "epochs": 3}})
    assert config.finetune_for("block1").lr == 0.005 and config.finetune_for("block1").epochs == 3
    assert config.finetune_for("block3") == config.finetune
    # An explicit learning rate wins, and a rung never trains longer than the job allows.
    explicit = AdaptConfig(finetune=FinetuneConfig(epochs=2, lr=0.02), rung_settings={"block1": {"lr": 0.005, "epochs": 3}})
    assert explicit.finetune_for("block1").lr == 0.02 and explicit.finetune_for("block1").epochs == 2
    # The defaults: small batches for every trained rung, fewer epochs for the expensive blocks.
    job = FinetuneConfig(epochs=10, batch_size=128, micro_batch_size=16, bn_mode="frozen")
    defaults = AdaptConfig(finetune=job)
    assert all(defaults.finetune_for(s).batch_size == 16 for s in ("block1", "block2", "block3", "fc"))
    block1 = defaults.finetune_for("block1")
    assert block1.min_epochs < block1.epochs <= defaults.finetune_for("block3").epochs < job.epochs
    assert block1.min_gain > 0 and defaults.finetune_for("block3").min_gain == 0
    # block1's short rung keeps its last epoch unless validation loss says clearly otherwise.
    assert 0 < block1.loss_tolerance < 0.5 and job.loss_tolerance == 0
    assert all(defaults.finetune_for(s).bn_samples == 128 for s in ("bn", "block1", "block3", "fc"))
    # The early blocks' short rungs hold the statistics behind them; a job's own settings track them.
    assert not block1.track_suffix_statistics and not defaults.finetune_for("block2").track_suffix_statistics
    assert job.track_suffix_statistics
    assert defaults.finetune_for("fc").epochs == job.epochs
    assert defaults.finetune_for("block1").bn_mode == "frozen" and defaults.finetune_for("block1").micro_batch_size == 16
    assert AdaptConfig(finetune=job, rung_settings=PAPER_RUNG_SETTINGS).finetune_for("block1") == job
    # Whole-number fields given as floats (as a TOML or JSON source may) become ints.
    floats = AdaptConfig(rung_settings={"block1": {"batch_size": 16.0, "seed": 3.0, "min_gain": 0.5}}).finetune_for("block1")
    assert (floats.batch_size, floats.seed, floats.min_gain) == (16, 3, 0.5) and type(floats.seed) is int
    with pytest.raises(ValueError):
        AdaptConfig(rung_settings={"block1": {"learning_rate": 0.1}})


def test_no_drift_runs_nothing(base: ResNet26, shipped: tuple[ResNet26, SourceStatistics]) -> None:
    before = copy.deepcopy(base.state_dict())
    meter = ScriptedMeter()
    result = adapt(base, _source(64, 1), _source(64, 2), "none", shipped[1], AdaptConfig(), energy_used=meter)
    assert result.steps == [] and not result.cancelled
    assert result.accuracy_after == result.accuracy_before
    assert _same_state(base, before)
    json.dumps(result.to_dict())


def test_stops_once_the_target_is_reached(base: ResNet26, shipped: tuple[ResNet26, SourceStatistics]) -> None:
    train, val = _flipped(192, 3), _flipped(96, 4)
    seen: list[StepResult] = []
    config = AdaptConfig(target_accuracy=0.3, finetune=QUICK, ladders={"output": ("fc", "block3")})
    result = adapt(base, train, val, "output", shipped[1], config, on_step=seen.append)
    assert [s.strategy for s in result.steps] == ["fc"] == [s.strategy for s in seen]
    assert result.steps[0].kept and result.accuracy_after >= 0.3 > result.accuracy_before
    assert result.accuracy_after == pytest.approx(_accuracy(base, val))


def test_escalates_while_short_of_the_target(base: ResNet26, shipped: tuple[ResNet26, SourceStatistics]) -> None:
    train, val = _flipped(128, 5), _flipped(64, 6)
    config = AdaptConfig(target_accuracy=1.0, finetune=QUICK, ladders={"output": ("bn", "fc")})
    result = adapt(base, train, val, "output", shipped[1], config)
    assert [s.strategy for s in result.steps] == ["bn", "fc"]
    assert result.accuracy_after > result.accuracy_before
    for earlier, later in zip(result.steps, result.steps[1:]):
        assert later.accuracy_before == (earlier.accuracy_after if earlier.kept else earlier.accuracy_before)


def test_statistics_are_estimated_once_per_ladder(
    base: ResNet26, shipped: tuple[ResNet26, SourceStatistics], monkeypatch: pytest.MonkeyPatch
) -> None:
    import device.finetune as engine

    estimates: list[int] = []
    real = engine.recalibrate_batchnorm

    def counting(*args: Any, **kwargs: Any) -> int:
        estimates.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "recalibrate_batchnorm", counting)
    # Noise: re-estimated statistics help, so the bn step is kept and the later rungs build on it.
    clean = shapes.generate(192, 21, subclasses=(0, 1))
    noisy = Samples.from_arrays(corrupt(clean.x, "gaussian_noise", 5, seed=2), clean.y)
    train, val = noisy.subset(torch.arange(128)), noisy.subset(torch.arange(128, 192))
    config = AdaptConfig(target_accuracy=1.0, finetune=QUICK, ladders={"input": ("bn", "fc", "block3")})
    result = adapt(base, train, val, "input", shipped[1], config)
    assert [s.strategy for s in result.steps] == ["bn", "fc", "block3"] and result.steps[0].kept
    assert len(estimates) == 1, "a rung after a kept bn step estimated the statistics again"
    # Each rung starts from the evaluation the one before left, without evaluating it again.
    assert result.steps[1].accuracy_before == result.steps[0].accuracy_after


def test_a_consistent_confusion_beside_input_drift_ends_the_ladder_with_fc(
    base: ResNet26, shipped: tuple[ResNet26, SourceStatistics]
) -> None:
    train, val = _flipped(128, 16), _flipped(64, 17)

    def detected(relabel_gain: float) -> Detection:
        return Detection("input", 0.6, {"relabel_gain": relabel_gain}, forward_passes=0, probe_used=False,
                         seconds=0.0, cpu_seconds=0.0)

    config = AdaptConfig(target_accuracy=1.0, finetune=QUICK, ladders={"input": ("bn",)})
    hinted = adapt(copy.deepcopy(base), train, val, "input", shipped[1], config, detection=detected(0.09))
    assert hinted.ladder == ["bn", "fc"] and hinted.strategies == ["fc"]
    assert hinted.accuracy_after > hinted.accuracy_before + 0.2
    plain = adapt(copy.deepcopy(base), train, val, "input", shipped[1], config, detection=detected(0.01))
    assert plain.ladder == ["bn"]
    off = AdaptConfig(target_accuracy=1.0, finetune=QUICK, ladders={"input": ("bn",)}, relabel_hint=None)
    assert adapt(copy.deepcopy(base), train, val, "input", shipped[1], off, detection=detected(0.9)).ladder == ["bn"]


def test_a_step_that_hurts_is_reverted(base: ResNet26, shipped: tuple[ResNet26, SourceStatistics]) -> None:
    # Statistics re-estimated on noisy images do not suit clean validation images.
    clean = shapes.generate(192, 7, subclasses=(0, 1))
    noisy = Samples.from_arrays(corrupt(clean.x[:128], "gaussian_noise", 5, seed=1), clean.y[:128])
    val = Samples.from_arrays(clean.x[128:], clean.y[128:])
    before = copy.deepcopy(base.state_dict())
    config = AdaptConfig(target_accuracy=1.0, finetune=QUICK, ladders={"input": ("bn",)})
    result = adapt(base, noisy, val, "input", shipped[1], config)
    (step,) = result.steps
    assert step.accuracy_after < step.accuracy_before and not step.kept
    assert result.accuracy_after == result.accuracy_before
    assert _same_state(base, before)


def test_budget_stops_escalation(base: ResNet26, shipped: tuple[ResNet26, SourceStatistics]) -> None:
    meter = ScriptedMeter()

    def spend_everything(step: StepResult) -> None:
        meter.joules += 50.0

    train, val = _flipped(128, 8), _flipped(64, 9)
    config = AdaptConfig(target_accuracy=1.0, budget_joules=20.0, finetune=QUICK, ladders={"output": ("fc", "block3")})
    result = adapt(base, train, val, "output", shipped[1], config, energy_used=meter, on_step=spend_everything)
    assert [s.strategy for s in result.steps] == ["fc"]
    assert result.stopped_by_budget and not result.cancelled
    assert result.joules == pytest.approx(50.0)


def test_budget_stops_training_at_the_next_epoch_and_keeps_the_best(
    base: ResNet26, shipped: tuple[ResNet26, SourceStatistics]
) -> None:
    # Two batches an epoch at 1 J each: epoch 2 ends at 4 J, past the 3 J budget.
    meter = ScriptedMeter(per_batch=1.0)
    train, val = _flipped(200, 10), _flipped(64, 11)
    long = FinetuneConfig(epochs=10, patience=None, batch_size=128, lr=0.1, bn_samples=64)
    config = AdaptConfig(target_accuracy=1.0, budget_joules=3.0, finetune=long, ladders={"output": ("fc", "block3")},
                         rung_settings=PAPER_RUNG_SETTINGS)
    result = adapt(base, train, val, "output", shipped[1], config, energy_used=meter, on_progress=meter.on_progress)
    (step,) = result.steps
    assert step.stopped_by_budget and result.stopped_by_budget
    assert step.epochs == 2
    assert step.joules == pytest.approx(4.0)
    assert step.kept and step.accuracy_after > step.accuracy_before
    assert result.accuracy_after == pytest.approx(_accuracy(base, val))


def test_cancel_restores_the_model(base: ResNet26, shipped: tuple[ResNet26, SourceStatistics]) -> None:
    before = copy.deepcopy(base.state_dict())
    calls = {"batches": 0}

    def stop_after_a_few_batches() -> bool:
        calls["batches"] += 1
        return calls["batches"] > 3

    config = AdaptConfig(target_accuracy=1.0, finetune=QUICK, ladders={"output": ("bn", "fc")})
    result = adapt(base, _flipped(128, 12), _flipped(64, 13), "output", shipped[1], config,
                   should_stop=stop_after_a_few_batches)
    assert result.cancelled
    assert result.accuracy_after == result.accuracy_before
    assert _same_state(base, before)


def test_default_target_follows_the_source_accuracy(shipped: tuple[ResNet26, SourceStatistics]) -> None:
    source = shipped[1]
    assert source.accuracy is not None
    assert AdaptConfig().target(source) == pytest.approx(source.accuracy - AdaptConfig().tolerance)
    assert AdaptConfig(target_accuracy=0.5).target(source) == 0.5
    unknown = SourceStatistics(bn=source.bn, pixel=None, accuracy=None, samples=0)
    assert AdaptConfig().target(unknown) is None


def test_detect_and_adapt_fixes_relabelled_outputs(base: ResNet26, shipped: tuple[ResNet26, SourceStatistics]) -> None:
    meter = ScriptedMeter(per_batch=0.5)
    train, val = _flipped(256, 14), _flipped(96, 15)
    result = detect_and_adapt(base, train, val, shipped[1], AdaptConfig(finetune=QUICK), energy_used=meter,
                              on_progress=meter.on_progress)
    assert result.detection is not None and result.detection.drift_type == "output"
    assert result.strategies == ["fc"]
    assert result.accuracy_after > result.accuracy_before + 0.3
    data = json.loads(json.dumps(result.to_dict()))
    assert data["detection"]["drift_type"] == "output"
    fc = AdaptConfig(finetune=QUICK).finetune_for("fc")
    batches = -(-len(train) // fc.batch_size)
    assert data["steps"][0]["joules"] == pytest.approx(meter.per_batch * batches * fc.epochs)
    assert np.isfinite(data["steps"][0]["cpu_seconds"])
