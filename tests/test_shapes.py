"""The Shapes-40 generator: determinism, layout, balance and the documented subclass structure."""

from __future__ import annotations

import numpy as np
import pytest

from drift.shapes import (
    MODIFIERS,
    NUM_SUBCLASSES,
    NUM_SUPERCLASSES,
    SUBCLASSES,
    SUPERCLASSES,
    TEXTURE_PURITY,
    TEXTURES,
    ShapesData,
    generate,
    modifier_index,
    outline_mask,
    source_split,
    texture_index,
)


@pytest.fixture(scope="module")
def data() -> ShapesData:
    return generate(800, seed=3)


def test_layout_and_dtypes(data: ShapesData) -> None:
    assert data.x.shape == (800, 3, 32, 32)
    assert data.x.dtype == np.uint8
    assert data.y.dtype == np.int64 and data.sub.dtype == np.int64 and data.texture.dtype == np.int64
    assert len(data) == 800
    assert set(np.unique(data.y)) == set(range(NUM_SUPERCLASSES))
    assert set(np.unique(data.sub)) == set(range(NUM_SUBCLASSES))
    assert data.texture.min() >= 0 and data.texture.max() < len(TEXTURES)
    # Images use the whole range, not a constant or a clipped-flat canvas.
    assert data.x.min() < 30 and data.x.max() > 225


def test_same_seed_same_arrays_and_different_seed_different() -> None:
    a = generate(120, seed=11, subclasses=(0, 1))
    b = generate(120, seed=11, subclasses=(0, 1))
    c = generate(120, seed=12, subclasses=(0, 1))
    for field in ("x", "y", "sub", "texture"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.x, c.x)


def test_class_balance_exact_and_with_remainder() -> None:
    even = generate(400, seed=0)
    counts = np.zeros((NUM_SUPERCLASSES, NUM_SUBCLASSES), dtype=int)
    np.add.at(counts, (even.y, even.sub), 1)
    assert (counts == 10).all()
    odd = generate(47, seed=0, subclasses=(2, 3))
    per_pair = np.bincount(odd.y * NUM_SUBCLASSES + odd.sub, minlength=NUM_SUPERCLASSES * NUM_SUBCLASSES)
    used = per_pair[per_pair > 0]
    assert used.sum() == 47 and used.max() - used.min() <= 1
    assert np.bincount(odd.y, minlength=NUM_SUPERCLASSES).min() >= 2


def test_subclass_and_superclass_selection() -> None:
    d = generate(60, seed=1, subclasses=(3, 1), superclasses=(7, 2))
    assert set(np.unique(d.sub)) == {1, 3}
    assert set(np.unique(d.y)) == {2, 7}
    with pytest.raises(ValueError):
        generate(10, seed=0, subclasses=(0, 4))
    with pytest.raises(ValueError):
        generate(10, seed=0, subclasses=(1, 1))
    with pytest.raises(ValueError):
        generate(10, seed=0, superclasses=())


def test_zero_images() -> None:
    d = generate(0, seed=0)
    assert d.x.shape == (0, 3, 32, 32) and len(d.y) == 0


def test_names_cover_every_subclass() -> None:
    assert len(SUPERCLASSES) == NUM_SUPERCLASSES
    assert len(SUBCLASSES) == NUM_SUPERCLASSES
    assert all(len(variants) == NUM_SUBCLASSES for variants in SUBCLASSES)
    assert len({name for variants in SUBCLASSES for name in variants}) == NUM_SUPERCLASSES * NUM_SUBCLASSES


@pytest.mark.parametrize("superclass", range(NUM_SUPERCLASSES))
def test_subclass_outlines_of_a_superclass_differ(superclass: int) -> None:
    masks = [outline_mask(superclass, k) > 0.5 for k in range(NUM_SUBCLASSES)]
    for mask in masks:
        # A visible object that fits on the canvas.
        assert 80 < mask.sum() < 0.5 * mask.size
    for i in range(NUM_SUBCLASSES):
        for j in range(i + 1, NUM_SUBCLASSES):
            changed = int((masks[i] ^ masks[j]).sum())
            assert changed >= 20, f"{SUBCLASSES[superclass][i]} vs {SUBCLASSES[superclass][j]}: {changed} px"


def test_modifiers_documented_effects() -> None:
    plain = outline_mask(0, 0) > 0.5  # the disk
    by_name = {MODIFIERS[modifier_index(0, k)]: outline_mask(0, k) > 0.5 for k in range(1, NUM_SUBCLASSES)}
    centre = plain.shape[0] // 2
    assert plain[centre, centre] and not by_name["hollow"][centre, centre]
    rows, cols = np.nonzero(by_name["elongated"])
    assert np.ptp(cols) > np.ptp(rows) + 4
    # Doubled: two lobes side by side, so the shape is wider than tall and pinched in the middle.
    heights = by_name["doubled"].sum(axis=0)
    assert heights[centre] < heights.max()
    assert np.count_nonzero(heights) > heights.max() + 4


def test_target_subclasses_combine_familiar_modifiers_in_new_ways() -> None:
    source = {(s, modifier_index(s, k)) for s in range(NUM_SUPERCLASSES) for k in (0, 1)}
    source_modifiers = {m for _, m in source if m is not None}
    for s in range(NUM_SUPERCLASSES):
        for k in (2, 3):
            modifier = modifier_index(s, k)
            assert modifier is not None
            assert (s, modifier) not in source  # a new combination for this superclass...
            assert modifier in source_modifiers  # ...of a modifier the source shows on other shapes
    assert source_modifiers == set(range(len(MODIFIERS)))
    assert SUBCLASSES[3][0] == "plain star" and modifier_index(3, 0) is None


def test_source_and_target_textures_of_a_superclass_never_overlap() -> None:
    for s in range(NUM_SUPERCLASSES):
        source = {texture_index(s, 0), texture_index(s, 1)}
        target = {texture_index(s, 2), texture_index(s, 3)}
        assert len(source) == 2 and len(target) == 2 and not source & target
    # Every texture is some source subclass's texture: a texture alone never names a superclass.
    for k in range(NUM_SUBCLASSES):
        assert {texture_index(s, k) for s in range(NUM_SUPERCLASSES)} == set(range(len(TEXTURES)))


def test_subclass_texture_share_matches_purity() -> None:
    d = generate(4000, seed=5)
    own = (d.texture == np.array([texture_index(int(s), int(k)) for s, k in zip(d.y, d.sub)]))
    expected = TEXTURE_PURITY + (1.0 - TEXTURE_PURITY) / len(TEXTURES)
    assert abs(own.mean() - expected) < 0.03


def test_textures_render_as_documented() -> None:
    d = generate(3000, seed=7)
    x = d.x.astype(np.float32)
    # Mean absolute horizontal + vertical pixel difference: fine patterns have far more of it.
    detail = np.abs(np.diff(x, axis=2)).mean(axis=(1, 2, 3)) + np.abs(np.diff(x, axis=3)).mean(axis=(1, 2, 3))
    solid = detail[d.texture == TEXTURES.index("solid")].mean()
    for name in ("stripes", "checker", "grid", "zigzag"):
        assert detail[d.texture == TEXTURES.index(name)].mean() > 1.5 * solid, name


def test_pixel_statistics_do_not_depend_on_the_subclass() -> None:
    source = generate(2000, seed=8, subclasses=(0, 1)).x.astype(np.float32) / 255.0
    target = generate(2000, seed=9, subclasses=(2, 3)).x.astype(np.float32) / 255.0
    assert abs(source.mean() - target.mean()) < 0.02
    np.testing.assert_allclose(source.mean(axis=(0, 2, 3)), target.mean(axis=(0, 2, 3)), atol=0.02)
    assert abs(source.std() - target.std()) < 0.02


def test_source_split_is_deterministic_and_independent() -> None:
    a = source_split(seed=4, n_train=60, n_val=40)
    b = source_split(seed=4, n_train=60, n_val=40)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    np.testing.assert_array_equal(a.val.x, b.val.x)
    assert set(np.unique(a.train.sub)) == {0, 1} and set(np.unique(a.val.sub)) == {0, 1}
    assert a.source_subclasses == (0, 1)
    # Training and validation come from different seeds, not the same stream.
    assert not np.array_equal(a.train.x[:40], a.val.x)


def test_take_keeps_labels_aligned(data: ShapesData) -> None:
    part = data.take(np.flatnonzero(data.y == 3))
    assert (part.y == 3).all() and len(part) == len(part.sub) == len(part.texture)
    with pytest.raises(ValueError):
        ShapesData(data.x, data.y[:-1], data.sub, data.texture)

