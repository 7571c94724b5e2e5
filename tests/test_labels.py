"""Output-level label maps."""

from __future__ import annotations

import numpy as np
import pytest

from drift.labels import LabelMap, flip, identity, merge, permutation


def test_flip_is_cifar_flip_and_an_involution() -> None:
    label_map = flip(10)
    assert label_map.mapping.tolist() == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    labels = np.array([0, 3, 9, 9, 5])
    assert label_map.apply(labels).tolist() == [9, 6, 0, 0, 4]
    assert np.array_equal(label_map.apply(label_map.apply(labels)), labels)
    assert label_map.fixed_points == ()
    assert flip(5).fixed_points == (2,)


def test_permutation_is_a_deterministic_derangement() -> None:
    for num_classes in (2, 3, 10, 17):
        for seed in range(20):
            label_map = permutation(num_classes, seed)
            assert sorted(label_map.mapping.tolist()) == list(range(num_classes))
            assert label_map.fixed_points == ()
            assert label_map == permutation(num_classes, seed)
    assert permutation(2, 0).mapping.tolist() == [1, 0]


def test_permutation_depends_on_the_seed() -> None:
    maps = {tuple(permutation(10, seed).mapping.tolist()) for seed in range(10)}
    assert len(maps) > 1


def test_merge_sends_each_group_to_its_smallest_class() -> None:
    label_map = merge(10, [[0, 1], [3, 2]])
    assert label_map.mapping.tolist() == [0, 0, 2, 2, 4, 5, 6, 7, 8, 9]
    assert label_map.apply([1, 3, 2, 7]).tolist() == [0, 2, 2, 7]
    assert not label_map.is_permutation
    assert label_map.name == "merge([0,1],[3,2])"
    assert merge(6, [[5, 1, 3]]).mapping.tolist() == [0, 1, 2, 1, 4, 1]


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ([], "non-empty sequence"),
        ([[0, 1], [1, 2]], r"classes \[1\] appear in more than one group"),
        ([[0, 10]], "class 10 is out of range for 10 classes"),
        ([[-1, 0]], "class -1 is out of range"),
        ([[4]], "at least two classes"),
        ([[4, 4]], "repeats a class"),
        ([[0, 1.5]], "must be integers"),
        ("01", "non-empty sequence"),
        ([3], "must be a sequence"),
    ],
)
def test_merge_validation(groups: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        merge(10, groups)  # type: ignore[arg-type]


@pytest.mark.parametrize("factory", [flip, permutation])
def test_maps_need_two_classes(factory) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="at least 2"):
        factory(1)
    with pytest.raises(ValueError, match="must be an integer"):
        factory(10.0)


def test_permutation_rejects_bad_seeds() -> None:
    with pytest.raises(ValueError, match="seed"):
        permutation(10, -1)


def test_apply_validates_labels() -> None:
    label_map = flip(4)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        label_map.apply([0, 4])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        label_map.apply([-1])
    with pytest.raises(ValueError, match="must be integers"):
        label_map.apply(np.array([0.0, 1.0]))
    assert label_map.apply(np.zeros((2, 3), dtype=np.uint8)).shape == (2, 3)
    assert label_map.apply(np.array([], dtype=np.int64)).tolist() == []


def test_label_map_validation_and_immutability() -> None:
    with pytest.raises(ValueError, match=r"values must lie in \[0, 3\)"):
        LabelMap("bad", [0, 1, 3])
    with pytest.raises(ValueError, match="integers"):
        LabelMap("bad", np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="1-D"):
        LabelMap("bad", np.zeros((2, 2), dtype=int))
    with pytest.raises(ValueError, match="name"):
        LabelMap("", [0])
    source = np.array([1, 0])
    label_map = LabelMap("swap", source)
    source[0] = 0  # the map keeps its own copy
    assert label_map.mapping.tolist() == [1, 0]
    with pytest.raises(ValueError):
        label_map.mapping[0] = 0
    assert label_map.mapping.dtype == np.int64


def test_equality_hash_and_plain_form() -> None:
    assert identity(3) == LabelMap("identity", [0, 1, 2])
    assert identity(3) != LabelMap("other", [0, 1, 2])
    assert len({flip(4), flip(4), identity(4)}) == 2
    assert flip(3).to_dict() == {"name": "flip", "mapping": [2, 1, 0]}
