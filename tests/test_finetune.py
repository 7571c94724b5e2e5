from __future__ import annotations

from pathlib import Path

import pytest
import torch

from device.blocks import block_parameter_names, block_state_keys
from device.finetune import FinetuneConfig, FinetuneResult, Progress, finetune, keeps_epoch
from device.inference import evaluate_batches
from device.model import ResNet26
from device.samples import Samples
from tests.factories import colour_samples, random_samples

QUICK = {"epochs": 2, "batch_size": 32, "patience": None}


def clone(model: ResNet26) -> ResNet26:
    copy = ResNet26(model.config)
    copy.load_state_dict(model.state_dict())
    return copy


@pytest.mark.parametrize("block", ["block1", "block2", "block3", "fc"])
def test_only_the_chosen_block_changes(model: ResNet26, train_samples: Samples, val_samples: Samples, block: str) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = finetune(model, block, train_samples, val_samples, FinetuneConfig(bn_mode="frozen", lr=0.05, **QUICK))
    assert result.best_epoch > 0, "training never improved, the test would prove nothing"
    owned = set(block_state_keys(model, block))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing was trained"
    assert changed <= owned, f"tensors outside {block} changed: {sorted(changed - owned)}"
    assert set(result.block_state) == owned


def test_adapt_mode_changes_only_block_weights_and_batchnorm_statistics(
    model: ResNet26, train_samples: Samples, val_samples: Samples
) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    finetune(model, "fc", train_samples, val_samples, FinetuneConfig(bn_mode="adapt", lr=0.05, **QUICK))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    params = {name for name, _ in model.named_parameters()}
    assert changed & params == set(block_parameter_names(model, "fc"))
    assert all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed - params)
    assert "layer1.0.bn1.running_mean" in changed


def test_adapted_mode_keeps_the_prefix_statistics_and_follows_the_target_behind_the_block(
    model: ResNet26, train_samples: Samples, val_samples: Samples
) -> None:
    # "adapted": a bn step already re-estimated the statistics; the job must not estimate them again.
    before = {k: v.clone() for k, v in model.state_dict().items()}
    finetune(model, "block2", train_samples, val_samples, FinetuneConfig(bn_mode="adapted", lr=0.05, **QUICK))
    after = model.state_dict()
    assert torch.equal(before["layer1.0.bn1.running_mean"], after["layer1.0.bn1.running_mean"])
    assert torch.equal(before["layer1.3.bn2.running_var"], after["layer1.3.bn2.running_var"])
    # Behind the block the statistics still follow the training batches, as in "adapt".
    assert not torch.equal(before["layer3.0.bn1.running_mean"], after["layer3.0.bn1.running_mean"])
    with pytest.raises(ValueError, match="bn_mode"):
        FinetuneConfig(bn_mode="sideways")  # type: ignore[arg-type]


def test_held_suffix_statistics_stay_put_while_the_block_learns(
    model: ResNet26, train_samples: Samples, val_samples: Samples
) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = FinetuneConfig(bn_mode="adapted", track_suffix_statistics=False, lr=0.05, **QUICK)
    result = finetune(model, "block2", train_samples, val_samples, config)
    after = model.state_dict()
    assert result.best_epoch > 0, "the job must keep trained weights for this check to mean anything"
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # Only the block moves: its weights, and its own BatchNorm statistics (train mode).
    assert changed and all(k.startswith("layer2.") for k in changed)
    assert "layer2.0.bn1.running_mean" in changed
    assert torch.equal(before["layer3.0.bn1.running_mean"], after["layer3.0.bn1.running_mean"])
    assert torch.equal(before["bn.running_var"], after["bn.running_var"])


def test_a_given_evaluation_before_is_not_repeated(
    model: ResNet26, train_samples: Samples, val_samples: Samples, monkeypatch: pytest.MonkeyPatch
) -> None:
    import device.finetune as engine

    calls: list[int] = []
    real = engine.evaluate_batches

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "evaluate_batches", counting)
    config = FinetuneConfig(bn_mode="frozen", **QUICK)
    fresh = finetune(clone(model), "fc", train_samples, val_samples, config)
    evaluations_fresh = len(calls)
    calls.clear()
    model.eval()
    given = evaluate_batches(model, val_samples.images, val_samples.y, 256)
    reused = finetune(clone(model), "fc", train_samples, val_samples, config, before=given)
    assert len(calls) == evaluations_fresh - 1
    assert reused.accuracy_before == given.accuracy == pytest.approx(fresh.accuracy_before)
    assert reused.loss_after == pytest.approx(fresh.loss_after)


def test_frozen_parts_have_no_grad_and_stay_in_eval_mode_during_training(
    model: ResNet26, train_samples: Samples, val_samples: Samples
) -> None:
    seen: list[tuple[bool, bool, bool, bool]] = []

    def inspect(progress: Progress) -> None:
        if progress.phase == "train":
            seen.append(
                (
                    model.layer3[0].conv1.weight.requires_grad,
                    model.layer1[0].conv1.weight.requires_grad,
                    model.layer3[0].bn1.training,
                    model.layer2[0].bn1.training or model.fc.training,
                )
            )

    finetune(model, "block3", train_samples, val_samples, FinetuneConfig(bn_mode="frozen", **QUICK), on_progress=inspect)
    assert seen and all(s == (True, False, True, False) for s in seen)
    assert model.layer1[0].conv1.weight.grad is None
    assert all(p.requires_grad for p in model.parameters()), "requires_grad must be restored"
    assert not model.training


@pytest.mark.parametrize("block", ["block2", "block3", "fc"])
@pytest.mark.parametrize("bn_mode", ["adapt", "frozen"])
def test_cached_and_recomputed_prefixes_give_the_same_losses(
    model: ResNet26, train_samples: Samples, val_samples: Samples, block: str, bn_mode: str
) -> None:
    cached = finetune(clone(model), block, train_samples, val_samples, FinetuneConfig(bn_mode=bn_mode, **QUICK))
    uncached = finetune(
        clone(model), block, train_samples, val_samples, FinetuneConfig(bn_mode=bn_mode, cache_budget_bytes=0, **QUICK)
    )
    assert (cached.cache, uncached.cache) == ("memory", "recompute")
    assert cached.train_losses == pytest.approx(uncached.train_losses, rel=1e-5)
    assert cached.val_losses == pytest.approx(uncached.val_losses, rel=1e-5)


def test_cache_over_budget_spills_to_disk_and_cleans_up(
    model: ResNet26, train_samples: Samples, val_samples: Samples, tmp_path: Path
) -> None:
    in_memory = finetune(clone(model), "block2", train_samples, val_samples, FinetuneConfig(**QUICK))
    # layer1 output is 16×32×32 float32 = 64 KiB a sample: this budget holds 10 samples, not 96.
    small = FinetuneConfig(cache_budget_bytes=10 * 65536, cache_spill_dir=str(tmp_path), **QUICK)
    spilled = finetune(clone(model), "block2", train_samples, val_samples, small)
    assert spilled.cache == "disk"
    assert spilled.train_losses == pytest.approx(in_memory.train_losses, rel=1e-5)
    assert list(tmp_path.iterdir()) == []


def test_budget_is_shared_by_training_and_validation(
    model: ResNet26, train_samples: Samples, val_samples: Samples
) -> None:
    exactly_train = len(train_samples) * 65536
    result = finetune(clone(model), "block2", train_samples, val_samples, FinetuneConfig(cache_budget_bytes=exactly_train, **QUICK))
    assert result.cache == "memory"
    too_small = FinetuneConfig(cache_budget_bytes=exactly_train - 1, **QUICK)
    assert finetune(clone(model), "block2", train_samples, val_samples, too_small).cache == "recompute"


def test_cancellation_restores_the_model_exactly(model: ResNet26, train_samples: Samples, val_samples: Samples) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = {"n": 0}

    def stop_after_five_batches() -> bool:
        calls["n"] += 1
        return calls["n"] > 6

    result = finetune(model, "block1", train_samples, val_samples, FinetuneConfig(lr=0.1, **QUICK), should_stop=stop_after_five_batches)
    assert result.cancelled
    assert result.epochs_run == 1 and result.samples_seen == 96
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_runs_are_deterministic_under_a_seed(model: ResNet26, train_samples: Samples, val_samples: Samples) -> None:
    a = finetune(clone(model), "block3", train_samples, val_samples, FinetuneConfig(seed=3, **QUICK))
    b = finetune(clone(model), "block3", train_samples, val_samples, FinetuneConfig(seed=3, **QUICK))
    c = finetune(clone(model), "block3", train_samples, val_samples, FinetuneConfig(seed=4, **QUICK))
    assert a.train_losses == b.train_losses
    assert all(torch.equal(a.block_state[k], b.block_state[k]) for k in a.block_state)
    assert a.train_losses != c.train_losses


def test_learning_improves_validation_and_keeps_the_best_weights() -> None:
    torch.manual_seed(0)
    model = ResNet26()
    train, val = colour_samples(128, seed=1), colour_samples(64, seed=2)
    result = finetune(model, "fc", train, val, FinetuneConfig(epochs=6, batch_size=32, patience=None))
    assert result.accuracy_after > result.accuracy_before + 0.3
    best = min(result.val_losses)
    assert result.loss_after == pytest.approx(best)
    assert result.best_epoch == result.val_losses.index(best) + 1
    model.eval()
    check = evaluate_batches(model, val.images, val.y, 64)
    assert check.accuracy == pytest.approx(result.accuracy_after)


def test_early_stopping_ends_when_validation_stops_improving(model: ResNet26) -> None:
    # Random labels: validation loss cannot keep improving with a huge step.
    train, val = random_samples(96, seed=1), random_samples(48, seed=2)
    config = FinetuneConfig(epochs=10, batch_size=32, patience=2, lr=0.5)
    result = finetune(model, "fc", train, val, config)
    assert result.epochs_run < 10
    assert result.epochs_run - result.best_epoch == 2


def test_min_gain_ends_training_once_an_epoch_adds_too_little_accuracy() -> None:
    # A learnable task: plain training runs every epoch, with validation accuracy rising fast at
    # first and then by less. A bar on the gain stops at the first epoch under it, not before
    # min_epochs.
    train, val = colour_samples(128, seed=1), colour_samples(64, seed=2)

    def run(**settings: float) -> FinetuneResult:
        torch.manual_seed(0)
        config = FinetuneConfig(epochs=8, batch_size=32, patience=None, bn_mode="frozen", **settings)
        return finetune(ResNet26(), "fc", train, val, config)

    plain = run()
    gains = [b - a for a, b in zip([plain.accuracy_before, *plain.val_accuracies], plain.val_accuracies, strict=False)]
    bar = 0.05
    first_small = next(i for i, g in enumerate(gains, start=1) if g < bar)
    assert 1 < first_small < plain.epochs_run == 8
    strict = run(min_gain=bar)
    assert strict.epochs_run == first_small
    # The same trajectory, as far as it went, and the weights kept are its lowest loss's.
    assert strict.val_losses == pytest.approx(plain.val_losses[:first_small])
    assert strict.loss_after == pytest.approx(min(strict.val_losses))
    # min_epochs holds the bar off: a later small gain ends it.
    later = run(min_gain=bar, min_epochs=first_small + 1)
    expected = next(i for i, g in enumerate(gains, start=1) if g < bar and i >= first_small + 1)
    assert later.epochs_run == expected


def test_min_gain_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match="min_gain"):
        FinetuneConfig(min_gain=1.5)
    with pytest.raises(ValueError, match="min_epochs"):
        FinetuneConfig(min_epochs=0)


def test_keeps_epoch_prefers_a_later_epoch_within_the_tolerance() -> None:
    assert keeps_epoch(0.9, lowest_loss=1.0, tolerance=0.0)
    assert not keeps_epoch(1.0, lowest_loss=1.0, tolerance=0.0), "a tie is no improvement"
    assert keeps_epoch(1.1, lowest_loss=1.0, tolerance=0.1)
    assert not keeps_epoch(1.11, lowest_loss=1.0, tolerance=0.1)
    assert not keeps_epoch(float("nan"), lowest_loss=1.0, tolerance=0.5)


def test_loss_tolerance_keeps_the_latest_epoch_near_the_lowest_loss() -> None:
    # Random labels at a small step: validation loss is lowest early and drifts up by a few
    # percent after. A tolerance keeps the latest epoch within it of the lowest, over the same
    # trajectory; early stopping would still count from the lowest.
    train, val = random_samples(96, seed=1), random_samples(48, seed=2)

    def run(tolerance: float) -> tuple[FinetuneResult, ResNet26]:
        torch.manual_seed(0)
        model = ResNet26()
        config = FinetuneConfig(epochs=6, batch_size=32, patience=None, lr=0.05, loss_tolerance=tolerance)
        return finetune(model, "fc", train, val, config), model

    plain, _ = run(0.0)
    losses = plain.val_losses
    lowest = min(losses)
    assert plain.best_epoch == losses.index(lowest) + 1
    assert plain.best_epoch < plain.epochs_run, "the lowest loss came last: the test would prove nothing"
    excess = sorted(loss / lowest - 1 for loss in losses[plain.best_epoch:])
    kept_epochs = set()
    for tolerance in (excess[0] / 2, excess[len(excess) // 2] + 1e-6, excess[-1] + 1e-6):
        result, model = run(tolerance)
        expected = max(i for i, loss in enumerate(losses, start=1) if loss <= lowest * (1 + tolerance))
        assert result.val_losses == pytest.approx(losses)
        assert result.best_epoch == expected, f"tolerance {tolerance:.4f}"
        assert result.loss_after == pytest.approx(losses[expected - 1])
        model.eval()
        assert evaluate_batches(model, val.images, val.y, 64).loss == pytest.approx(result.loss_after, rel=1e-5)
        kept_epochs.add(result.best_epoch)
    assert plain.best_epoch in kept_epochs and len(kept_epochs) > 1


def test_loss_tolerance_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match="loss_tolerance"):
        FinetuneConfig(loss_tolerance=-0.1)
    with pytest.raises(ValueError, match="loss_tolerance"):
        FinetuneConfig(loss_tolerance=2.0)


def test_progress_reports_every_batch_and_epoch(model: ResNet26, train_samples: Samples, val_samples: Samples) -> None:
    reports: list[Progress] = []
    finetune(model, "fc", train_samples, val_samples, FinetuneConfig(**QUICK), on_progress=reports.append)
    phases = [r.phase for r in reports]
    assert phases == ["prepare"] + (["train"] * 3 + ["validate"]) * 2
    assert all(r.samples_per_second > 0 for r in reports if r.phase == "train")
    assert reports[-1].val_accuracy is not None


def test_bn_strategy_changes_only_statistics_and_uses_no_gradients(
    model: ResNet26, train_samples: Samples, val_samples: Samples
) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = finetune(model, "bn", train_samples, val_samples)
    after = model.state_dict()
    for name, _ in model.named_parameters():
        assert torch.equal(before[name], after[name]), name
        assert model.get_parameter(name).grad is None
    assert not torch.equal(before["layer2.1.bn1.running_var"], after["layer2.1.bn1.running_var"])
    assert result.samples_seen == len(train_samples) and not result.cancelled  # 96 < bn_samples


def test_input_shape_must_match_the_model(model: ResNet26, val_samples: Samples) -> None:
    wrong = Samples(torch.zeros(4, 3, 64, 64, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="expects"):
        finetune(model, "fc", wrong, val_samples)
    with pytest.raises(ValueError, match="unknown block"):
        finetune(model, "layer9", val_samples, val_samples)


def test_micro_batches_accumulate_to_the_same_step(model: ResNet26, train_samples: Samples, val_samples: Samples) -> None:
    # fc has no BatchNorm in train mode, so splitting batches must not change the optimisation.
    whole = finetune(clone(model), "fc", train_samples, val_samples, FinetuneConfig(**QUICK))
    split = finetune(clone(model), "fc", train_samples, val_samples, FinetuneConfig(micro_batch_size=7, **QUICK))
    assert split.train_losses == pytest.approx(whole.train_losses, rel=1e-5)
    assert all(torch.allclose(whole.block_state[k], split.block_state[k], atol=1e-6) for k in whole.block_state)
