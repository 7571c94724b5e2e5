"""Sub-population splits: disjoint, covering, deterministic, and generic over labelled arrays."""

from __future__ import annotations

import numpy as np
import pytest

from drift.shapes import generate
from drift.subpopulation import SubpopulationSplit, make_split, partition, sample_balanced, split_indices


def _all_pairs(num_superclasses: int, num_subclasses: int) -> tuple[np.ndarray, np.ndarray]:
    y = np.repeat(np.arange(num_superclasses), num_subclasses * 3)
    sub = np.tile(np.repeat(np.arange(num_subclasses), 3), num_superclasses)
    return y, sub


def test_default_split_is_first_half_source() -> None:
    split = make_split(10, 4)
    assert split.source == ((0, 1),) * 10
    assert split.target == ((2, 3),) * 10
    assert split.to_dict()["target"][0] == [2, 3]


@pytest.mark.parametrize("seed", [None, 0, 1])
@pytest.mark.parametrize(("num_subclasses", "num_source"), [(4, None), (4, 1), (5, 3)])
def test_split_is_disjoint_and_covers_every_subclass(seed: int | None, num_subclasses: int, num_source: int | None) -> None:
    split = make_split(6, num_subclasses, num_source=num_source, seed=seed)
    expected_source = num_subclasses // 2 if num_source is None else num_source
    for src, tgt in zip(split.source, split.target, strict=True):
        assert not set(src) & set(tgt)
        assert set(src) | set(tgt) == set(range(num_subclasses))
        assert len(src) == expected_source
    y, sub = _all_pairs(6, num_subclasses)
    source, target = split_indices(y, sub, split)
    assert not set(source) & set(target)
    assert len(source) + len(target) == len(y)


def test_seeded_split_is_deterministic_and_varies_by_superclass() -> None:
    assert make_split(17, 4, seed=3) == make_split(17, 4, seed=3)
    assert make_split(17, 4, seed=3) != make_split(17, 4, seed=4)
    # BREEDS-style: superclasses get their own choice, not one pattern for all.
    assert len(set(make_split(17, 4, seed=3).source)) > 1


def test_masks_follow_the_split_on_generated_data() -> None:
    data = generate(400, seed=2)
    split = make_split(10, 4, seed=9)
    source, target = split_indices(data.y, data.sub, split)
    for i in source:
        assert data.sub[i] in split.source[data.y[i]]
    for i in target:
        assert data.sub[i] in split.target[data.y[i]]
    assert len(source) == len(target) == 200


def test_unknown_superclasses_and_subclasses_are_on_neither_side() -> None:
    split = make_split(2, 4)
    y = np.array([0, 1, 2, -1, 0])
    sub = np.array([0, 3, 0, 0, 7])
    assert split.mask(y, sub, "source").tolist() == [True, False, False, False, False]
    assert split.mask(y, sub, "target").tolist() == [False, True, False, False, False]
    with pytest.raises(ValueError):
        split.mask(y, sub, "other")  # type: ignore[arg-type]


def test_invalid_splits_are_refused() -> None:
    with pytest.raises(ValueError):
        SubpopulationSplit(source=((0, 1),), target=((1, 2),))
    with pytest.raises(ValueError):
        SubpopulationSplit(source=((0,),), target=((),))
    with pytest.raises(ValueError):
        SubpopulationSplit(source=((0,), (1,)), target=((2,),))
    with pytest.raises(ValueError):
        make_split(3, 4, num_source=4)


def test_sample_balanced_is_even_deterministic_and_within_the_pool() -> None:
    y = np.repeat(np.arange(10), 50)
    pool = np.arange(0, 500, 2)  # 25 per class
    chosen = sample_balanced(pool, y, 104, seed=1)
    assert len(chosen) == len(set(chosen.tolist())) == 104
    assert set(chosen.tolist()) <= set(pool.tolist())
    counts = np.bincount(y[chosen], minlength=10)
    assert counts.max() - counts.min() <= 1
    np.testing.assert_array_equal(chosen, sample_balanced(pool, y, 104, seed=1))
    assert not np.array_equal(chosen, sample_balanced(pool, y, 104, seed=2))


def test_sample_balanced_fills_a_short_class_from_the_others() -> None:
    y = np.array([0] * 2 + [1] * 20 + [2] * 20)
    chosen = sample_balanced(np.arange(42), y, 30, seed=0)
    counts = np.bincount(y[chosen], minlength=3)
    assert counts.tolist()[0] == 2 and counts.sum() == 30 and abs(counts[1] - counts[2]) <= 1
    with pytest.raises(ValueError):
        sample_balanced(np.arange(42), y, 43, seed=0)


def test_partition_is_disjoint_and_deterministic() -> None:
    parts = partition(np.arange(100, 200), [50, 15, 15], seed=4)
    assert [len(p) for p in parts] == [50, 15, 15]
    joined = np.concatenate(parts)
    assert len(set(joined.tolist())) == 80 and set(joined.tolist()) <= set(range(100, 200))
    again = partition(np.arange(100, 200), [50, 15, 15], seed=4)
    for a, b in zip(parts, again, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):
        partition(np.arange(10), [6, 5], seed=0)
