"""CIFAR-10-C input-level corruptions (Hendrycks & Dietterich, 2019), re-implemented with numpy.

Every corruption takes uint8 images of shape (N, C, H, W) and returns uint8 images of the same
shape. As in the reference script that built CIFAR-10-C, pixels are scaled to [0, 1] float64,
corrupted, clipped to [0, 1], multiplied by 255 and **truncated** (``np.uint8`` of a float), not
rounded. The severity parameters are the reference's CIFAR (32 px) ones.

What is exact and what is not:

- ``contrast``, ``brightness``, ``saturate`` and ``pixelate`` are deterministic and follow the
  reference's arithmetic operation for operation (numpy's mean, scikit-image's HSV conversion,
  Pillow's BOX resampling in 8-bit fixed point), so they should match it value for value.
- The noises and ``fog`` draw from ``np.random.default_rng(seed)`` instead of the reference's global
  legacy generator, so they follow the same distributions but not the same random draws.

The random draws of one call depend on every image in it and on its position in the batch; the
same images, name, severity and seed always give the same output.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

#: One corruption: (uint8 images (N, C, H, W), severity 1..5, generator) → uint8 images, same shape.
Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

# Severity 1..5 parameters of the reference script for 32×32 images.
_GAUSSIAN_STD = (0.04, 0.06, 0.08, 0.09, 0.10)  # additive N(0, c)
_SHOT_PHOTONS = (500.0, 250.0, 100.0, 75.0, 50.0)  # Poisson(x·c)/c
_IMPULSE_AMOUNT = (0.01, 0.02, 0.03, 0.05, 0.07)  # salt-and-pepper fraction
_SPECKLE_STD = (0.06, 0.1, 0.12, 0.16, 0.2)  # x + x·N(0, c)
_CONTRAST_FACTOR = (0.75, 0.5, 0.4, 0.3, 0.15)  # (x − mean)·c + mean
_BRIGHTNESS_SHIFT = (0.05, 0.1, 0.15, 0.2, 0.3)  # HSV: V + c
_SATURATE_SCALE_SHIFT = ((0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2))  # HSV: S·a + b
_FOG_STRENGTH_DECAY = ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75))
_PIXELATE_FACTOR = (0.95, 0.9, 0.85, 0.75, 0.65)  # box down to int(side·c) and back

#: The parameters above by corruption name, for inspection and reports.
SEVERITY_PARAMETERS: dict[str, tuple[float, ...] | tuple[tuple[float, float], ...]] = {
    "gaussian_noise": _GAUSSIAN_STD,
    "shot_noise": _SHOT_PHOTONS,
    "impulse_noise": _IMPULSE_AMOUNT,
    "speckle_noise": _SPECKLE_STD,
    "contrast": _CONTRAST_FACTOR,
    "brightness": _BRIGHTNESS_SHIFT,
    "saturate": _SATURATE_SCALE_SHIFT,
    "fog": _FOG_STRENGTH_DECAY,
    "pixelate": _PIXELATE_FACTOR,
}

# Images corrupted per step: bounds the float64 temporaries (~25 MB per 1,024 CIFAR images).
_CHUNK_IMAGES = 1024

# Pillow's fixed-point resampling: coefficients carry 22 fractional bits (32 − 8 − 2).
_PIL_PRECISION_BITS = 22


def _to_unit(images: np.ndarray) -> np.ndarray:
    return images / 255.0


def _to_uint8(x: np.ndarray) -> np.ndarray:
    # The reference's np.uint8(np.clip(x, 0, 1) * 255): truncation, not rounding.
    return (np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Noise


def gaussian_noise(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Add N(0, c) noise to every value, independently per channel."""
    c = _GAUSSIAN_STD[severity - 1]
    x = _to_unit(images)
    return _to_uint8(x + rng.normal(0.0, c, size=x.shape))


def shot_noise(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Photon noise: Poisson(x·c)/c per value; smaller c is noisier."""
    c = _SHOT_PHOTONS[severity - 1]
    x = _to_unit(images)
    return _to_uint8(rng.poisson(x * c) / c)


def impulse_noise(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Salt and pepper: each value independently, with probability c, becomes 0 or 1 (even odds).

    This is scikit-image's ``random_noise(mode="s&p", amount=c)``, which acts on every channel
    value separately (a pixel can be salted in red only).
    """
    amount = _IMPULSE_AMOUNT[severity - 1]
    x = _to_unit(images)
    flipped = rng.random(x.shape) < amount
    salted = rng.random(x.shape) < 0.5
    x[flipped & salted] = 1.0
    x[flipped & ~salted] = 0.0
    return _to_uint8(x)


def speckle_noise(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative noise: x + x·N(0, c) per value."""
    c = _SPECKLE_STD[severity - 1]
    x = _to_unit(images)
    return _to_uint8(x + x * rng.normal(0.0, c, size=x.shape))


# ---------------------------------------------------------------------------------------------
# Photometric


def contrast(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Pull every value towards its image's channel mean: (x − mean)·c + mean."""
    c = _CONTRAST_FACTOR[severity - 1]
    x = _to_unit(images)
    count, channels, height, width = x.shape
    # The reference's np.mean over the H, W axes of an HWC image adds the values one after another
    # in row-major order (a strided reduction, not numpy's pairwise sum). The same order here keeps
    # the mean, and so the truncated output, bit-identical; it matters: a constant image can come
    # out one level darker, in the reference as here.
    running = np.cumsum(x.reshape(count, channels, height * width), axis=-1)
    means = running[:, :, -1:, np.newaxis] / (height * width)
    return _to_uint8((x - means) * c + means)


def _rgb_to_hsv(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue, saturation, value in [0, 1] of (N, 3, H, W) RGB in [0, 1], as scikit-image computes them."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    value = x.max(axis=1)
    delta = value - x.min(axis=1)
    flat = delta == 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        saturation = np.where(flat, 0.0, delta / value)
        hue_red = (g - b) / delta
        hue_green = 2.0 + (b - r) / delta
        hue_blue = 4.0 + (r - g) / delta
    # Ties go to the later channel (blue over green over red), as in scikit-image.
    hue = np.where(b == value, hue_blue, np.where(g == value, hue_green, hue_red))
    hue = np.where(flat, 0.0, (hue / 6.0) % 1.0)
    return hue, saturation, value


def _hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) RGB from hue, saturation, value, by the six-sector formula scikit-image uses."""
    sextant = np.floor(hue * 6.0)
    frac = hue * 6.0 - sextant
    p = value * (1.0 - saturation)
    q = value * (1.0 - frac * saturation)
    t = value * (1.0 - (1.0 - frac) * saturation)
    sector = sextant.astype(np.int64) % 6
    red = np.choose(sector, (value, q, p, p, t, value))
    green = np.choose(sector, (t, value, value, q, p, p))
    blue = np.choose(sector, (p, p, t, value, value, q))
    return np.stack((red, green, blue), axis=1)


def brightness(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Raise the HSV value by c (clipped at 1); needs RGB images (C = 3)."""
    c = _BRIGHTNESS_SHIFT[severity - 1]
    hue, saturation, value = _rgb_to_hsv(_to_unit(images))
    return _to_uint8(_hsv_to_rgb(hue, saturation, np.clip(value + c, 0.0, 1.0)))


def saturate(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Scale and shift the HSV saturation, S·a + b (clipped); needs RGB images (C = 3).

    Severities 1–2 wash colours out and 3–5 intensify them, so the distance from the clean image
    does not grow with severity (CIFAR-10-C's extra corruption is built that way).
    """
    scale, shift = _SATURATE_SCALE_SHIFT[severity - 1]
    hue, saturation, value = _rgb_to_hsv(_to_unit(images))
    saturation = np.clip(saturation * scale + shift, 0.0, 1.0)
    return _to_uint8(_hsv_to_rgb(hue, saturation, value))


# ---------------------------------------------------------------------------------------------
# Fog


def plasma_fractal(
    rng: np.random.Generator, count: int, mapsize: int, wibble_decay: float
) -> np.ndarray:
    """``count`` independent diamond-square height maps, shape (count, mapsize, mapsize), in [0, 1].

    Follows the reference's generator: the map wraps around (toroidal neighbours), the first corner
    is 0, each new point is the mean of its four neighbours plus uniform noise of half-width
    ``wibble²`` (wibble starts at 100), and wibble is divided by ``wibble_decay`` at each level;
    each map is then rescaled to span [0, 1] exactly.
    """
    if mapsize < 2 or mapsize & (mapsize - 1):
        raise ValueError(f"mapsize must be a power of two of at least 2, got {mapsize}")
    maps = np.empty((count, mapsize, mapsize), dtype=np.float64)
    maps[:, 0, 0] = 0.0
    step = mapsize
    wibble = 100.0

    def jittered_mean(sums: np.ndarray) -> np.ndarray:
        return sums / 4.0 + wibble * rng.uniform(-wibble, wibble, size=sums.shape)

    while step >= 2:
        half = step // 2
        # Square step: the centre of each square from its four corners.
        corners = maps[:, 0::step, 0::step]
        sums = corners + np.roll(corners, -1, axis=1)
        sums = sums + np.roll(sums, -1, axis=2)
        maps[:, half::step, half::step] = jittered_mean(sums)
        # Diamond step: edge midpoints from the two centres and two corners around each.
        centres = maps[:, half::step, half::step]
        corners = maps[:, 0::step, 0::step]
        on_rows = (centres + np.roll(centres, 1, axis=1)) + (corners + np.roll(corners, -1, axis=2))
        maps[:, 0::step, half::step] = jittered_mean(on_rows)
        on_cols = (centres + np.roll(centres, 1, axis=2)) + (corners + np.roll(corners, -1, axis=1))
        maps[:, half::step, 0::step] = jittered_mean(on_cols)
        step = half
        wibble /= wibble_decay

    maps -= maps.min(axis=(1, 2), keepdims=True)
    maps /= maps.max(axis=(1, 2), keepdims=True)
    return maps


def fog_mapsize(height: int, width: int) -> int:
    """The plasma map side for an image: the smallest power of two covering it (32 for CIFAR).

    The reference draws a 32×32 map for CIFAR and crops it to the image; larger images get a larger
    map, cropped the same way.
    """
    side = max(height, width, 2)
    return 1 << (side - 1).bit_length()


def fog(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Add a plasma fractal (one per image, shared by its channels), then rescale by max/(max + c).

    ``max`` is the brightest value of each clean image over all its channels.
    """
    strength, decay = _FOG_STRENGTH_DECAY[severity - 1]
    x = _to_unit(images)
    count, _, height, width = x.shape
    mapsize = fog_mapsize(height, width)
    plasma = plasma_fractal(rng, count, mapsize, decay)[:, np.newaxis, :height, :width]
    max_val = x.max(axis=(1, 2, 3), keepdims=True)
    x = x + strength * plasma
    return _to_uint8(x * max_val / (max_val + strength))


# ---------------------------------------------------------------------------------------------
# Pixelate


@lru_cache(maxsize=64)
def _pil_box_weights(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's 8-bit BOX resampling weights as an (out_size, in_size) matrix of fixed-point ints.

    Pillow centres output pixel ``i`` at ``(i + 0.5)·scale`` in input coordinates, gives weight 1 to
    each input pixel whose centre lies within ``support = 0.5·max(scale, 1)`` of it (the box
    ``(−0.5, 0.5]`` in filter units), normalises the weights to sum to 1 and stores them with 22
    fractional bits. The arithmetic below is Pillow's, in the same order, in float64.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    inv_filterscale = 1.0 / filterscale
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for out_index in range(out_size):
        center = (out_index + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        positions = np.arange(lo, hi, dtype=np.float64)
        arg = (positions - center + 0.5) * inv_filterscale
        row = ((arg > -0.5) & (arg <= 0.5)).astype(np.float64)
        total = row.sum()
        if total != 0.0:
            row = row / total
        weights[out_index, lo:hi] = row
    one = float(1 << _PIL_PRECISION_BITS)
    fixed = np.where(weights < 0, np.trunc(-0.5 + weights * one), np.trunc(0.5 + weights * one))
    fixed.flags.writeable = False
    return fixed


def _pil_box_pass(images: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """One Pillow resampling pass over ``axis`` (2: rows of H, 3: columns of W) of uint8 images."""
    x = images.astype(np.float64)
    # Integer-valued float64 products stay exact (< 2^53), so BLAS gives Pillow's integer sums.
    sums = x @ weights.T if axis == 3 else np.matmul(weights, x)
    fixed = sums.astype(np.int64) + (1 << (_PIL_PRECISION_BITS - 1))
    return np.clip(fixed >> _PIL_PRECISION_BITS, 0, 255).astype(np.uint8)


def pil_box_resize(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize uint8 (N, C, H, W) images like Pillow's ``Image.resize(..., Image.BOX)``.

    Horizontal pass first, then vertical, each rounded to uint8, as Pillow does. Every channel is
    resampled independently, which is what Pillow does with the bands of an RGB image.
    """
    out = _pil_box_pass(images, _pil_box_weights(images.shape[3], width), axis=3)
    return _pil_box_pass(out, _pil_box_weights(images.shape[2], height), axis=2)


def pixelate(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Box-filter down to ``int(side·c)`` and box-filter back up, both as Pillow's BOX resize.

    At the CIFAR sizes (32 → 30, 28, 27, 24, 20 and back) every scale is below 2, so going down
    averages one or two neighbours per axis (rounding halves up) and going back up is
    nearest-neighbour; the ties where PIL's box edge meets a pixel centre do not occur.
    """
    c = _PIXELATE_FACTOR[severity - 1]
    height, width = images.shape[2], images.shape[3]
    small_h, small_w = int(height * c), int(width * c)
    if small_h < 1 or small_w < 1:
        raise ValueError(f"pixelate needs images of at least 2×2 pixels, got {height}×{width}")
    return pil_box_resize(pil_box_resize(images, small_h, small_w), height, width)


# ---------------------------------------------------------------------------------------------
# Registry and entry point

CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "speckle_noise": speckle_noise,
    "contrast": contrast,
    "brightness": brightness,
    "saturate": saturate,
    "fog": fog,
    "pixelate": pixelate,
}

#: Corruptions that work in HSV and so need RGB images (C = 3).
RGB_ONLY: frozenset[str] = frozenset({"brightness", "saturate"})


def corruption_names() -> tuple[str, ...]:
    """The names :func:`corrupt` accepts."""
    return tuple(CORRUPTIONS)


def _check_images(images: object, name: str) -> np.ndarray:
    if not isinstance(images, np.ndarray):
        raise ValueError(f"images must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (0..255), got dtype {images.dtype}")
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got shape {images.shape}")
    if name in RGB_ONLY and images.shape[1] != 3:
        raise ValueError(f"{name} works in HSV and needs RGB images (C = 3), got C = {images.shape[1]}")
    return images


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """The CIFAR-10-C corruption ``name`` at ``severity`` (1..5) of uint8 (N, C, H, W) images.

    Returns new uint8 images of the same shape; the input is not modified. Random corruptions draw
    from ``np.random.default_rng(seed)``, so a call is reproducible.
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose one of {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an integer from 1 to 5, got {severity!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    images = _check_images(images, name)
    function = CORRUPTIONS[name]
    rng = np.random.default_rng(int(seed))
    out = np.empty_like(images)
    for start in range(0, images.shape[0], _CHUNK_IMAGES):
        stop = start + _CHUNK_IMAGES
        out[start:stop] = function(images[start:stop], int(severity), rng)
    return out
