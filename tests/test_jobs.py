from __future__ import annotations

import numpy as np
import pytest

from service.jobs import promotion_decision
from service.trainer import stratified_split


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
