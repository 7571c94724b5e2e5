"""CIFAR-10-C corruptions: shapes, determinism, severity ordering and exact values."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from drift import corruptions
from drift.corruptions import CORRUPTIONS, corrupt, corruption_names, pil_box_resize, plasma_fractal

RANDOM = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "fog")
DETERMINISTIC = ("contrast", "brightness", "saturate", "pixelate")
# saturate's severities wash colours out (1, 2) and then intensify them (3–5): not monotone by design.
MONOTONE = tuple(name for name in corruption_names() if name != "saturate")


def _smooth_images(count: int = 12, seed: int = 0, side: int = 32) -> np.ndarray:
    """Smooth random colour fields (bilinear from 5×5) with fine texture, values well inside 0..255."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(40.0, 210.0, size=(count, 3, 5, 5))
    pos = np.linspace(0.0, 4.0, side)
    lo = np.minimum(np.floor(pos).astype(int), 3)
    frac = pos - lo
    interp = np.zeros((side, 5))
    interp[np.arange(side), lo] = 1.0 - frac
    interp[np.arange(side), lo + 1] = frac
    smooth = interp @ coarse @ interp.T
    texture = rng.normal(0.0, 12.0, size=smooth.shape)
    return np.clip(smooth + texture, 0, 255).astype(np.uint8)


def _constant(value: int, count: int = 4, channels: int = 3, side: int = 32) -> np.ndarray:
    return np.full((count, channels, side, side), value, dtype=np.uint8)


IMAGES = _smooth_images()


def test_registry() -> None:
    assert set(corruption_names()) == set(CORRUPTIONS)
    required = {
        "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise",
        "contrast", "brightness", "fog", "pixelate",
    }
    assert required <= set(corruption_names())


@pytest.mark.parametrize("name", corruption_names())
def test_shape_dtype_and_input_untouched(name: str) -> None:
    before = IMAGES.copy()
    out = corrupt(IMAGES, name, 3, seed=0)
    assert out.shape == IMAGES.shape and out.dtype == np.uint8
    assert np.array_equal(IMAGES, before)
    assert not np.array_equal(out, IMAGES)


@pytest.mark.parametrize("name", [n for n in corruption_names() if n not in corruptions.RGB_ONLY])
def test_other_channel_counts_and_sizes(name: str) -> None:
    gray = _smooth_images(count=3, side=24)[:, :1, :, :16]  # (3, 1, 24, 16)
    out = corrupt(np.ascontiguousarray(gray), name, 5, seed=0)
    assert out.shape == (3, 1, 24, 16) and out.dtype == np.uint8


@pytest.mark.parametrize("name", RANDOM)
def test_random_corruptions_follow_the_seed(name: str) -> None:
    first = corrupt(IMAGES, name, 2, seed=7)
    assert np.array_equal(first, corrupt(IMAGES, name, 2, seed=7))
    assert not np.array_equal(first, corrupt(IMAGES, name, 2, seed=8))


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_corruptions_ignore_the_seed(name: str) -> None:
    assert np.array_equal(corrupt(IMAGES, name, 4, seed=0), corrupt(IMAGES, name, 4, seed=123))


@pytest.mark.parametrize("name", MONOTONE)
def test_distance_from_clean_grows_with_severity(name: str) -> None:
    clean = IMAGES.astype(np.int64)
    distances = [np.abs(corrupt(IMAGES, name, s, seed=1) - clean).mean() for s in range(1, 6)]
    assert all(a < b for a, b in itertools.pairwise(distances)), distances


def test_chunking_keeps_results_and_determinism(monkeypatch: pytest.MonkeyPatch) -> None:
    whole = {name: corrupt(IMAGES[:7], name, 5, seed=3) for name in ("contrast", "pixelate", "fog")}
    monkeypatch.setattr(corruptions, "_CHUNK_IMAGES", 3)
    for name in ("contrast", "pixelate"):
        assert np.array_equal(corrupt(IMAGES[:7], name, 5, seed=3), whole[name])
    fogged = corrupt(IMAGES[:7], "fog", 5, seed=3)
    assert fogged.shape == whole["fog"].shape
    assert np.array_equal(fogged, corrupt(IMAGES[:7], "fog", 5, seed=3))


def test_empty_batch() -> None:
    empty = np.zeros((0, 3, 32, 32), dtype=np.uint8)
    for name in corruption_names():
        assert corrupt(empty, name, 1).shape == (0, 3, 32, 32)


# --- exact and statistical checks, one group per corruption -----------------------------------


@pytest.mark.parametrize(
    ("name", "expected_std"),
    [
        ("gaussian_noise", 0.10 * 255),  # severity 5: N(0, 0.10)
        ("shot_noise", np.sqrt((128 / 255) / 50) * 255),  # severity 5: Poisson(x·50)/50
        ("speckle_noise", (128 / 255) * 0.2 * 255),  # severity 5: x·N(0, 0.2)
    ],
)
def test_noise_strength_at_severity_5(name: str, expected_std: float) -> None:
    gray = _constant(128, count=16)
    diff = corrupt(gray, name, 5, seed=0).astype(np.float64) - 128
    assert diff.std() == pytest.approx(expected_std, rel=0.04)
    # Truncation, not rounding, of the noisy values: on average half a level down.
    assert diff.mean() == pytest.approx(-0.5, abs=0.4)


@pytest.mark.parametrize("name", ["shot_noise", "speckle_noise"])
def test_noise_that_scales_with_the_signal_leaves_black_black(name: str) -> None:
    for severity in range(1, 6):
        assert not corrupt(_constant(0), name, severity, seed=severity).any()


def test_impulse_noise_is_per_value_salt_and_pepper() -> None:
    gray = _constant(128, count=16)
    out = corrupt(gray, "impulse_noise", 5, seed=0)
    changed = out != 128
    assert set(np.unique(out[changed]).tolist()) == {0, 255}
    assert changed.mean() == pytest.approx(0.07, rel=0.05)
    assert (out == 255).sum() == pytest.approx((out == 0).sum(), rel=0.1)
    # Channels are hit independently: most hit pixels have one channel changed, not all three.
    channels_hit = changed.sum(axis=1)
    assert (channels_hit == 1).sum() > 10 * (channels_hit == 3).sum()


def _reference_contrast(image_hwc: np.ndarray, c: float) -> np.ndarray:
    """The reference script's contrast, one HWC image at a time, as it is written there.

    The image must be C-contiguous, as ``np.array(pil_image)`` is: numpy sums a strided view in
    another order, which moves the mean by an ulp.
    """
    assert image_hwc.flags.c_contiguous
    x = image_hwc / 255.0
    means = np.mean(x, axis=(0, 1), keepdims=True)
    return np.uint8(np.clip((x - means) * c + means, 0, 1) * 255)


def test_contrast_matches_the_reference_formula_bit_for_bit() -> None:
    images = np.concatenate(
        [
            np.random.default_rng(9).integers(0, 256, size=(8, 3, 32, 32), dtype=np.uint8),
            IMAGES,
            # Every constant level: a float mean of 1,024 copies of v/255 can land an ulp low, and
            # the reference then truncates a flat image one level down. Both must agree.
            np.repeat(np.arange(256, dtype=np.uint8), 3 * 32 * 32).reshape(256, 3, 32, 32),
        ]
    )
    for severity, c in enumerate([0.75, 0.5, 0.4, 0.3, 0.15], start=1):
        hwc = [np.ascontiguousarray(im.transpose(1, 2, 0)) for im in images]
        expected = np.stack([_reference_contrast(im, c).transpose(2, 0, 1) for im in hwc])
        assert np.array_equal(corrupt(images, "contrast", severity), expected)


def test_contrast_values() -> None:
    # Half black, half white: mean 0.5; severity 2 (c = 0.5) gives 0.25 and 0.75 → 63.75, 191.25,
    # truncated.
    halves = np.zeros((1, 3, 32, 32), dtype=np.uint8)
    halves[:, :, :, 16:] = 255
    out = corrupt(halves, "contrast", 2)
    assert set(out[:, :, :, :16].ravel().tolist()) == {63}
    assert set(out[:, :, :, 16:].ravel().tolist()) == {191}
    # Each channel is pulled towards its own mean: red 0/255 → 0.5 ± 0.075; green 0 and blue 255
    # are flat and stay.
    image = np.zeros((1, 3, 32, 32), dtype=np.uint8)
    image[0, 0, :, 16:] = 255
    image[0, 2] = 255
    out = corrupt(image, "contrast", 5)  # c = 0.15
    assert set(out[0, 0, :, :16].ravel().tolist()) == {108}  # 0.425 · 255 = 108.375
    assert set(out[0, 0, :, 16:].ravel().tolist()) == {146}  # 0.575 · 255 = 146.625
    assert not out[0, 1].any()
    assert (out[0, 2] == 255).all()


def test_brightness_of_black_and_of_a_colour() -> None:
    levels = [int(corrupt(_constant(0, count=1), "brightness", s)[0, 0, 0, 0]) for s in range(1, 6)]
    assert levels == [12, 25, 38, 51, 76]  # floor(255·c) for c = 0.05 … 0.3
    assert np.array_equal(corrupt(_constant(255), "brightness", 5), _constant(255))
    # Raising V keeps hue and saturation: (200, 100, 50) scales by (200/255 + 0.05)/(200/255).
    colour = np.empty((1, 3, 2, 2), dtype=np.uint8)
    colour[0, 0], colour[0, 1], colour[0, 2] = 200, 100, 50
    out = corrupt(colour, "brightness", 1)
    assert out[0, :, 0, 0].tolist() == [212, 106, 53]  # 212.75, 106.375, 53.1875
    with pytest.raises(ValueError, match="needs RGB images"):
        corrupt(_constant(0, channels=1), "brightness", 1)


def test_saturate_values() -> None:
    gray = _constant(101, count=1)
    for severity in (1, 2, 3):  # S·a + 0 keeps grey grey
        assert np.array_equal(corrupt(gray, "saturate", severity), gray)
    # Severity 4 adds 0.1 saturation at hue 0 (red): (v, 0.9·v, 0.9·v) = (101, 90.9, 90.9).
    assert corrupt(gray, "saturate", 4)[0, :, 0, 0].tolist() == [101, 90, 90]
    red = np.zeros((1, 3, 1, 1), dtype=np.uint8)
    red[0, 0] = 255
    assert corrupt(red, "saturate", 1)[0, :, 0, 0].tolist() == [255, 178, 178]  # S = 0.3


def test_fog_values() -> None:
    for severity in range(1, 6):
        assert not corrupt(_constant(0), "fog", severity, seed=severity).any()
    strengths = [0.2, 0.5, 0.75, 1.0, 1.5]
    gray = _constant(200, count=6)
    v = 200 / 255
    for severity, c in enumerate(strengths, start=1):
        out = corrupt(gray, "fog", severity, seed=severity)
        # One fog per image, shared by its channels.
        assert np.array_equal(out[:, 0], out[:, 1]) and np.array_equal(out[:, 0], out[:, 2])
        assert not np.array_equal(out[0], out[1])
        # The plasma spans [0, 1]: the foggiest pixel is back at v, the clearest at v·v/(v + c).
        darkest = int(np.floor(255 * v * v / (v + c)))
        for image in out:
            assert image.max() in (199, 200)
            assert image.min() in (darkest - 1, darkest, darkest + 1)


def test_plasma_fractal_maps() -> None:
    rng = np.random.default_rng(0)
    maps = plasma_fractal(rng, 5, 32, 2.0)
    assert maps.shape == (5, 32, 32)
    assert np.allclose(maps.min(axis=(1, 2)), 0.0) and np.allclose(maps.max(axis=(1, 2)), 1.0)
    assert not np.allclose(maps[0], maps[1])
    # Faster wibble decay leaves less fine detail: neighbouring points differ less.
    rough = plasma_fractal(np.random.default_rng(1), 20, 32, 1.75)
    smooth = plasma_fractal(np.random.default_rng(1), 20, 32, 3.0)
    assert np.abs(np.diff(smooth, axis=2)).mean() < np.abs(np.diff(rough, axis=2)).mean()
    with pytest.raises(ValueError, match="power of two"):
        plasma_fractal(rng, 1, 24, 2.0)


def _pil_box_severity_4(row: np.ndarray) -> np.ndarray:
    """Pillow BOX 32 → 24 → 32 along the last axis, worked out by hand.

    Going down (scale 4/3), each group of four pixels a, b, c, d becomes a, (b + c)/2 (fixed-point
    rounding, halves up), d; going up (scale 3/4) is nearest-neighbour, o0, o1, o1, o2.
    """
    r = row.astype(np.int64).reshape(*row.shape[:-1], 8, 4)
    mid = (r[..., 1] + r[..., 2] + 1) // 2
    out = np.stack([r[..., 0], mid, mid, r[..., 3]], axis=-1)
    return out.reshape(row.shape).astype(np.uint8)


def test_pixelate_matches_pillow_box_by_hand() -> None:
    images = np.random.default_rng(5).integers(0, 256, size=(4, 3, 32, 32), dtype=np.uint8)
    # Pillow resizes horizontally, rounds to uint8, then vertically.
    expected = _pil_box_severity_4(images)
    expected = _pil_box_severity_4(expected.swapaxes(2, 3)).swapaxes(2, 3)
    assert np.array_equal(corrupt(images, "pixelate", 4), expected)
    # A pair summing to an odd number rounds up: (10 + 11)/2 → 11.
    row = np.zeros((1, 1, 32, 32), dtype=np.uint8)
    row[..., 1], row[..., 2] = 10, 11
    assert corrupt(row, "pixelate", 4)[0, 0, 0, :4].tolist() == [0, 11, 11, 0]


@pytest.mark.parametrize("small", [30, 28, 27, 24, 20])  # int(32·c) for the five severities
def test_pil_box_resize_windows(small: int) -> None:
    # Input pixel x (centre x + 0.5) belongs to output pixel i going down when its centre lies in
    # [i·32/small, (i + 1)·32/small), i.e. 64·i <= (2x + 1)·small < 64·(i + 1), in integers.
    one_hot = np.zeros((32, 1, 1, 32), dtype=np.uint8)
    one_hot[np.arange(32), 0, 0, np.arange(32)] = 200
    down = pil_box_resize(one_hot, 1, small)[:, 0, 0, :].astype(np.int64)
    owner = ((2 * np.arange(32) + 1) * small) // 64
    counts = np.bincount(owner, minlength=small)
    expected = np.zeros((32, small), dtype=np.int64)
    expected[np.arange(32), owner] = 200 // counts[owner]
    assert np.array_equal(down, expected)
    # Going up, output pixel j copies input pixel floor((j + 0.5)·small/32).
    one_hot_small = np.zeros((small, 1, 1, small), dtype=np.uint8)
    one_hot_small[np.arange(small), 0, 0, np.arange(small)] = 200
    up = pil_box_resize(one_hot_small, 1, 32)[:, 0, 0, :]
    source = ((2 * np.arange(32) + 1) * small) // 64
    assert np.array_equal(up, np.where(source[np.newaxis, :] == np.arange(small)[:, np.newaxis], 200, 0))


def test_pixelate_keeps_constant_images_and_blocks() -> None:
    for severity in range(1, 6):
        assert np.array_equal(corrupt(_constant(93), "pixelate", severity), _constant(93))
    # Severity 4 keeps an image made of 4×4 blocks of [a, b, b, d] patterns along both axes.
    noise = np.random.default_rng(6).integers(0, 256, size=(2, 3, 32, 32), dtype=np.uint8)
    images = _pil_box_severity_4(_pil_box_severity_4(noise).swapaxes(2, 3)).swapaxes(2, 3)
    assert np.array_equal(corrupt(np.ascontiguousarray(images), "pixelate", 4), images)


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (IMAGES.astype(np.float32), "must be uint8"),
        (IMAGES[0], r"shape \(N, C, H, W\)"),
        (IMAGES.tolist(), "must be a numpy array"),
    ],
)
def test_bad_images(images: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        corrupt(images, "contrast", 1)  # type: ignore[arg-type]


@pytest.mark.parametrize("severity", [0, 6, -1, 2.0, True, "3"])
def test_bad_severity(severity: object) -> None:
    with pytest.raises(ValueError, match="severity must be an integer from 1 to 5"):
        corrupt(IMAGES, "contrast", severity)  # type: ignore[arg-type]


def test_bad_name_and_seed() -> None:
    with pytest.raises(ValueError, match="unknown corruption 'motion_blur'; choose one of gaussian_noise"):
        corrupt(IMAGES, "motion_blur", 1)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        corrupt(IMAGES, "fog", 1, seed=-3)
    with pytest.raises(ValueError, match="pixelate needs images of at least 2×2"):
        corrupt(np.zeros((1, 3, 1, 1), dtype=np.uint8), "pixelate", 5)
