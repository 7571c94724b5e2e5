from __future__ import annotations

import multiprocessing
from typing import Any

import numpy as np
import pytest

from service.jobs import promotion_decision
from service.trainer import LiveJoules, stratified_split


@pytest.mark.parametrize(
    "before, after, margin, promoted",
    [
        (0.50, 0.80, 0.0, True),
        (0.80, 0.80, 0.0, True),  # not worse is enough
        (0.80, 0.79, 0.0, False),
        (0.80, 0.79, 0.02, True),  # within the margin
        (0.80, 0.77, 0.02, False),
    ],
)
def test_a_candidate_is_promoted_only_if_not_worse(before: float, after: float, margin: float, promoted: bool) -> None:
    decided, reason = promotion_decision(before, after, margin, parent_version=3)
    assert decided is promoted
    assert ("promoted" if promoted else "kept the active model") in reason and "version 3" in reason


def test_stratified_split_keeps_every_class_on_both_sides_and_is_seeded() -> None:
    labels = np.repeat(np.arange(4), [50, 10, 3, 1])
    train, val = stratified_split(labels, 0.2, seed=0)
    assert sorted([*train, *val]) == list(range(len(labels)))
    for label, count in ((0, 10), (1, 2), (2, 1)):
        assert (labels[val] == label).sum() == count
        assert (labels[train] == label).sum() >= 1
    assert 3 not in labels[val]  # a single sample stays in training
    again = stratified_split(labels, 0.2, seed=0)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)
    assert not np.array_equal(stratified_split(labels, 0.2, seed=1)[1], val)
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_split(labels, 1.0, seed=0)


def test_live_joules_grow_at_the_published_rate_between_publications() -> None:
    live = LiveJoules.create(multiprocessing.get_context("spawn"))
    assert live.joules_now() == 0.0  # nothing published: nothing used
    live.publish(10.0, 2.0, at_seconds=100.0)
    # A stretch shorter than the parent's cadence still costs energy: 0.05 s at 2 J/s.
    assert live.joules_now(100.05) - live.joules_now(100.0) == pytest.approx(0.1)
    assert live.joules_now(101.5) == pytest.approx(13.0)
    assert live.joules_now(99.0) == 10.0  # never extrapolated backwards
    live.publish(12.0, -1.0, at_seconds=101.0)
    assert live.joules_now(102.0) == 12.0  # a negative rate is read as none


def _read_live_joules(live: LiveJoules, published: Any, now_seconds: float, results: Any) -> None:
    published.wait(60)
    results.put(live.joules_now(now_seconds))


def test_a_spawned_trainer_reads_what_the_parent_publishes_after_it_started() -> None:
    context = multiprocessing.get_context("spawn")
    live, published, results = LiveJoules.create(context), context.Event(), context.Queue()
    child = context.Process(target=_read_live_joules, args=(live, published, 50.5, results))
    child.start()
    try:
        live.publish(5.0, 4.0, at_seconds=50.0)  # after the spawn: only shared memory carries it
        published.set()
        assert results.get(timeout=60) == pytest.approx(7.0)
    finally:
        child.join(timeout=60)
    assert child.exitcode == 0
