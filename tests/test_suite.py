"""The drift scenario suite: what it covers, how it names true types, and that a seed fixes its samples."""

from __future__ import annotations

import numpy as np
import pytest

from drift.scenarios import Split
from drift.suite import (
    SUITE_SEVERITIES,
    Sizes,
    SuiteScenario,
    array_source,
    array_source_accuracy_split,
    build_arrays,
    build_shapes,
    data_suite,
    select,
    shapes_suite,
)

SMALL = Sizes(train=12, val=6, test=8)


def test_suite_covers_every_kind_of_drift_and_the_controls() -> None:
    suite = shapes_suite()
    names = [s.name for s in suite]
    assert len(set(names)) == len(names)
    assert {s.true_type for s in suite} == {"input", "feature", "output", "none"}
    single_input = [s for s in suite if s.components == ("input",)]
    corruptions = {s.corruption for s in single_input}
    assert len(corruptions) >= 6
    for corruption in corruptions:
        assert {s.severity for s in single_input if s.corruption == corruption} >= set(SUITE_SEVERITIES) >= {3, 5}
    assert {s.label_map for s in suite if s.components == ("output",)} == {"flip", "permutation"}
    assert len({s.subpopulation for s in suite if s.components == ("feature",)}) >= 2
    assert any(s.composite for s in suite)
    assert len([s for s in suite if s.true_type == "none"]) >= 2


def test_quick_suite_has_one_scenario_of_each_type_and_a_control() -> None:
    quick = shapes_suite(quick=True)
    assert {s.true_type for s in quick} == {"input", "feature", "output", "none"}
    assert set(quick) <= set(shapes_suite())


def test_composite_true_type_is_the_dominant_component() -> None:
    assert SuiteScenario("gaussian_noise", 5, subpopulation="subclasses-2-3").true_type == "input"
    assert SuiteScenario("contrast", 5, label_map="permutation").true_type == "output"
    assert SuiteScenario(subpopulation="subclasses-2-3", label_map="flip").true_type == "output"
    composite = SuiteScenario("contrast", 5, label_map="permutation")
    assert composite.composite and composite.components == ("input", "output")
    assert composite.name == "composite/contrast-5+permutation"
    control = SuiteScenario(replicate="b")
    assert control.true_type == "none" and control.components == () and control.name == "none/source-b"


def test_invalid_scenarios_are_refused() -> None:
    with pytest.raises(ValueError, match="severity"):
        SuiteScenario("fog")
    with pytest.raises(ValueError, match="label map"):
        SuiteScenario(label_map="shuffle")
    with pytest.raises(ValueError, match="sub-population"):
        SuiteScenario(subpopulation="subclass-9")


def test_select_by_name_or_prefix() -> None:
    suite = shapes_suite()
    assert [s.name for s in select(suite, ["output/flip"])] == ["output/flip"]
    assert all(s.name.startswith("composite/") for s in select(suite, ["composite/"]))
    assert select(suite, None) == suite
    with pytest.raises(ValueError, match="no scenario matches"):
        select(suite, ["input/blur"])


@pytest.mark.parametrize("scenario", shapes_suite(quick=True) + (SuiteScenario(subpopulation="seeded-split"),),
                         ids=lambda s: s.name)
def test_shapes_scenarios_are_deterministic_under_a_seed(scenario: SuiteScenario) -> None:
    first = build_shapes(scenario, SMALL, seed=3)
    again = build_shapes(scenario, SMALL, seed=3)
    other = build_shapes(scenario, SMALL, seed=4)
    for a, b in ((first.train, again.train), (first.val, again.val), (first.test, again.test)):
        assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert not np.array_equal(first.train.x, other.train.x)
    assert (len(first.train), len(first.val), len(first.test)) == (12, 6, 8)
    assert first.train.x.dtype == np.uint8 and first.train.y.dtype == np.int64
    assert first.num_classes == 10


def _roughness(x: np.ndarray) -> float:
    """Mean absolute difference between horizontal neighbours: noise raises it."""
    return float(np.abs(np.diff(x.astype(np.float64), axis=-1)).mean())


def test_shifts_are_applied_to_every_split() -> None:
    clean = build_shapes(SuiteScenario(replicate="a"), SMALL)
    noisy = build_shapes(SuiteScenario("gaussian_noise", 5), SMALL)
    flat = build_shapes(SuiteScenario("contrast", 5, label_map="permutation"), SMALL)
    for split in ("train", "val", "test"):
        assert _roughness(getattr(noisy, split).x) > 2 * _roughness(getattr(clean, split).x)
        assert getattr(flat, split).x.std(axis=(2, 3)).mean() < 0.3 * getattr(clean, split).x.std(axis=(2, 3)).mean()


def test_array_scenarios_keep_the_source_reserve_apart() -> None:
    rng = np.random.default_rng(0)
    pool = Split(rng.integers(0, 256, (60, 3, 8, 8), dtype=np.uint8), np.arange(60) % 10)
    held_out = Split(rng.integers(0, 256, (20, 3, 8, 8), dtype=np.uint8), np.arange(20) % 10)
    sizes = Sizes(train=30, val=5, test=10)
    reserve = array_source(pool, 20, seed=0)
    scenario = SuiteScenario(label_map="flip")
    data = build_arrays(scenario, pool, held_out, sizes, seed=0, source_size=20)
    again = build_arrays(scenario, pool, held_out, sizes, seed=0, source_size=20)
    assert np.array_equal(data.train.x, again.train.x)
    reserved = {row.tobytes() for row in reserve.x}
    assert not any(row.tobytes() in reserved for row in data.train.x)
    assert (len(data.train), len(data.val), len(data.test)) == (30, 5, 10)
    assert all(s.subpopulation is None for s in data_suite())
    with pytest.raises(ValueError, match="sub-population"):
        build_arrays(SuiteScenario(subpopulation="subclasses-2-3"), pool, held_out, sizes)


def test_array_source_accuracy_images_are_apart_from_validation_and_test() -> None:
    rng = np.random.default_rng(1)
    pool = Split(rng.integers(0, 256, (40, 3, 8, 8), dtype=np.uint8), np.arange(40) % 10)
    held_out = Split(rng.integers(0, 256, (30, 3, 8, 8), dtype=np.uint8), np.arange(30) % 10)
    sizes = Sizes(train=10, val=8, test=12)
    data = build_arrays(SuiteScenario(replicate="a"), pool, held_out, sizes, seed=0, source_size=10)
    rest = array_source_accuracy_split(held_out, sizes, seed=0)
    assert len(rest) == 10
    taken = {row.tobytes() for split in (data.val, data.test) for row in split.x}
    assert not any(row.tobytes() in taken for row in rest.x)
