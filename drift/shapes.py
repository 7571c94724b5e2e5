"""Shapes-40: a procedural 32×32 image dataset with 10 superclasses of 4 subclasses each.

Made for feature-level (sub-population) drift in the BREEDS manner: a model learns a superclass
from some of its subclasses and meets the others later. Everything is drawn with numpy from a
seed; nothing is downloaded.

**Superclass = an object shape** (:data:`SUPERCLASSES`): disk, triangle, square, star, cross,
heart, arrow, teardrop, bowtie, L-shape.

**Subclass = that shape changed by a structural modifier, with its own fill texture.**
Subclass 0 is the plain shape; subclasses 1–3 apply one of four modifiers (:data:`MODIFIERS`):
*hollow* (only a rim is left), *elongated* (stretched to 1.18 × 0.8), *doubled* (two overlapping
copies at 0.68 × the size, side by side) and *notched* (a round bite out of one side). Subclass ``k`` of
superclass ``s`` (``k`` ≥ 1) gets modifier ``(s + k - 1) % 4`` (:func:`modifier_index`), so every
modifier appears in the source subclasses (0, 1) of some superclasses, and the target subclasses
(2, 3) of a superclass combine its shape with modifiers that the source showed only on *other*
shapes. The parts are familiar; their combinations are new — a shift in mid-level features,
not in pixel statistics and not in the meaning of the labels. Subclass ``k`` is also filled with
texture ``(s + TEXTURE_OFFSETS[k]) % 10`` (:data:`TEXTURES`) in :data:`TEXTURE_PURITY` of its
images and a uniformly random texture otherwise; a superclass's source and target textures never
overlap, and every texture belongs to several superclasses, so texture alone never names one.
:data:`SUBCLASSES` names all 40.

**Nuisance variation, shared by every subclass:** object position (±3 px), size (radius
9–12.5 px), rotation (±45°), mirroring, colours (object, texture and background hues drawn per
image, so colour carries no label information), a smooth random background field, 0–3 small
clutter blobs and faint sensor noise (σ ≤ 0.01). None of it depends on the label, so pixel
statistics (colour histograms, brightness, contrast) are the same for all subclasses; the clean
images have almost no high-frequency noise, which is why noise corruptions hurt a model trained
on them.

Images are uint8, channels first, (N, 3, 32, 32); labels are the superclass (int64), the subclass
index 0..3 within it (int64) and the fill texture (int64). :func:`generate` is class-balanced
and deterministic under its seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 32
NUM_SUPERCLASSES = 10
NUM_SUBCLASSES = 4

SUPERCLASSES: tuple[str, ...] = (
    "disk",
    "triangle",
    "square",
    "star",
    "cross",
    "heart",
    "arrow",
    "teardrop",
    "bowtie",
    "l-shape",
)

#: The structural modifiers of subclasses 1–3 (subclass 0 is ``plain``).
MODIFIERS: tuple[str, ...] = ("hollow", "elongated", "doubled", "notched")

TEXTURES: tuple[str, ...] = (
    "solid",
    "stripes",
    "checker",
    "dots",
    "rings",
    "sectors",
    "gradient",
    "grid",
    "zigzag",
    "eye",
)

#: Subclass ``k`` of superclass ``s`` is filled with texture ``(s + TEXTURE_OFFSETS[k]) % 10``...
TEXTURE_OFFSETS: tuple[int, int, int, int] = (0, 3, 5, 8)
#: ...in this share of its images; the others get a texture drawn uniformly from all ten.
TEXTURE_PURITY = 0.5
#: Objects are turned by up to this many degrees either way (and mirrored half the time).
MAX_ROTATION_DEGREES = 45.0


def modifier_index(superclass: int, subclass: int) -> int | None:
    """Index into :data:`MODIFIERS` of a subclass's modifier; None for subclass 0 (plain)."""
    if subclass == 0:
        return None
    return (superclass + subclass - 1) % len(MODIFIERS)


def subclass_name(superclass: int, subclass: int) -> str:
    """E.g. ``"plain star"``, ``"hollow star"``."""
    modifier = modifier_index(superclass, subclass)
    return f"{'plain' if modifier is None else MODIFIERS[modifier]} {SUPERCLASSES[superclass]}"


#: The name of each (superclass, subclass).
SUBCLASSES: tuple[tuple[str, ...], ...] = tuple(
    tuple(subclass_name(s, k) for k in range(NUM_SUBCLASSES)) for s in range(NUM_SUPERCLASSES)
)


def texture_index(superclass: int, subclass: int) -> int:
    """Index into :data:`TEXTURES` of the fill texture of one subclass."""
    return (superclass + TEXTURE_OFFSETS[subclass]) % len(TEXTURES)


@dataclass(frozen=True)
class ShapesData:
    """Images with their superclass and subclass labels.

    ``x``: (N, 3, 32, 32) uint8; ``y``: (N,) int64 superclass 0..9; ``sub``: (N,) int64 subclass
    0..3 within the superclass; ``texture``: (N,) int64 index into :data:`TEXTURES`.
    """

    x: np.ndarray
    y: np.ndarray
    sub: np.ndarray
    texture: np.ndarray

    def __post_init__(self) -> None:
        n = self.x.shape[0]
        if self.x.ndim != 4 or self.x.dtype != np.uint8:
            raise ValueError(f"x must be (N, C, H, W) uint8, got {self.x.shape} {self.x.dtype}")
        if self.y.shape != (n,) or self.sub.shape != (n,) or self.texture.shape != (n,):
            raise ValueError("y, sub and texture must be (N,) arrays matching x")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def take(self, index: np.ndarray) -> ShapesData:
        """The samples at ``index`` (integer indices or a boolean mask)."""
        return ShapesData(self.x[index], self.y[index], self.sub[index], self.texture[index])


@dataclass(frozen=True)
class SourceSplit:
    """Training and held-out images of the source subclasses, drawn from independent seeds."""

    train: ShapesData
    val: ShapesData
    source_subclasses: tuple[int, ...]
    seed: int


def generate(
    n: int,
    seed: int,
    subclasses: Sequence[int] | None = None,
    superclasses: Sequence[int] | None = None,
) -> ShapesData:
    """``n`` images of the given subclasses (default all four) of the given superclasses (default all).

    Class-balanced: every (superclass, subclass) pair gets ``n // pairs`` images and the first
    ``n % pairs`` pairs one more. The order is shuffled. The same arguments give identical arrays.
    """
    subs = _check_indices(subclasses, NUM_SUBCLASSES, "subclass")
    supers = _check_indices(superclasses, NUM_SUPERCLASSES, "superclass")
    if n < 0:
        raise ValueError("n must not be negative")
    rng = np.random.default_rng(seed)
    pairs = [(s, k) for s in supers for k in subs]
    counts = np.full(len(pairs), n // len(pairs), dtype=np.int64)
    counts[: n % len(pairs)] += 1
    y = np.repeat(np.array([p[0] for p in pairs], dtype=np.int64), counts)
    sub = np.repeat(np.array([p[1] for p in pairs], dtype=np.int64), counts)
    order = rng.permutation(n)
    y, sub = y[order], sub[order]
    own = (y + np.array(TEXTURE_OFFSETS, dtype=np.int64)[sub]) % len(TEXTURES)
    texture = np.where(rng.random(n) < TEXTURE_PURITY, own, rng.integers(0, len(TEXTURES), n))
    x = np.empty((n, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    # Render in chunks so that peak memory stays small (float32 work arrays of chunk × 32 × 32).
    chunk = 2048
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        x[start:stop] = _render(y[start:stop], sub[start:stop], texture[start:stop], rng)
    return ShapesData(x, y, sub, texture)


def source_split(
    seed: int = 0,
    n_train: int = 24_000,
    n_val: int = 2_000,
    source_subclasses: Sequence[int] = (0, 1),
) -> SourceSplit:
    """Training and held-out images of ``source_subclasses``, from independent child seeds of ``seed``."""
    train_seed, val_seed = _child_seeds(seed, 2)
    subs = tuple(int(k) for k in source_subclasses)
    return SourceSplit(
        train=generate(n_train, train_seed, subclasses=subs),
        val=generate(n_val, val_seed, subclasses=subs),
        source_subclasses=subs,
        seed=seed,
    )


def outline_mask(superclass: int, subclass: int, size: int = IMAGE_SIZE, radius: float = 11.0) -> np.ndarray:
    """The outline of one subclass drawn upright and centred, without texture or nuisance: (size, size) in [0, 1]."""
    grid = (np.arange(size, dtype=np.float32) - (size - 1) / 2.0) / radius
    u = np.broadcast_to(grid[None, None, :], (1, size, size))
    v = np.broadcast_to(grid[None, :, None], (1, size, size))
    distance_px = _OUTLINES[superclass][subclass](u, v) * radius
    return np.clip(0.5 - distance_px, 0.0, 1.0)[0].astype(np.float32)


def _child_seeds(seed: int, count: int) -> list[int]:
    children = np.random.SeedSequence(seed).spawn(count)
    return [int(c.generate_state(1, dtype=np.uint32)[0]) for c in children]


def _check_indices(values: Sequence[int] | None, bound: int, what: str) -> list[int]:
    if values is None:
        return list(range(bound))
    out = [int(v) for v in values]
    if not out:
        raise ValueError(f"at least one {what} is needed")
    if len(set(out)) != len(out) or any(v < 0 or v >= bound for v in out):
        raise ValueError(f"{what} indices must be distinct and in 0..{bound - 1}, got {list(values)}")
    return sorted(out)


# --- rendering -------------------------------------------------------------------------------------

_Field = np.ndarray
_Outline = Callable[[_Field, _Field], _Field]


def _render(y: np.ndarray, sub: np.ndarray, texture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw one image per (superclass, subclass, texture); returns uint8 (N, 3, 32, 32)."""
    n = y.shape[0]
    size = IMAGE_SIZE
    centre = (size - 1) / 2.0
    grid = np.arange(size, dtype=np.float32) - centre
    gx = grid[None, None, :]
    gy = grid[None, :, None]

    # Per-image nuisance parameters, drawn in a fixed order so that a seed fixes everything.
    angle = np.deg2rad(rng.uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES, n)).astype(np.float32)
    mirror = np.where(rng.random(n) < 0.5, -1.0, 1.0).astype(np.float32)
    radius = rng.uniform(9.0, 12.5, n).astype(np.float32)
    shift = rng.uniform(-3.0, 3.0, (n, 2)).astype(np.float32)
    period = rng.uniform(3.6, 4.8, n).astype(np.float32)
    phase = rng.uniform(0.0, 1.0, (n, 2)).astype(np.float32)
    colours = _draw_colours(n, rng)
    background = _background(n, colours["background"], rng)
    noise_std = rng.uniform(0.0, 0.01, n).astype(np.float32)

    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    dx = gx - shift[:, 0, None, None]
    dy = gy - shift[:, 1, None, None]
    r = radius[:, None, None]
    # Object frame in units of the object radius (u along the rotated x axis, v along y).
    u = (cos * dx + sin * dy) / r * mirror[:, None, None]
    v = (-sin * dx + cos * dy) / r

    mask = np.empty((n, size, size), dtype=np.float32)
    tex = np.empty((n, size, size), dtype=np.float32)
    for s in np.unique(y):
        for k in np.unique(sub[y == s]):
            idx = np.flatnonzero((y == s) & (sub == k))
            # One pixel of soft edge: anti-aliasing without supersampling.
            mask[idx] = np.clip(0.5 - _OUTLINES[s][k](u[idx], v[idx]) * r[idx], 0.0, 1.0)
    for t in np.unique(texture):
        idx = np.flatnonzero(texture == t)
        tex[idx] = _TEXTURES[t](u[idx], v[idx], r[idx], period[idx, None, None], phase[idx])

    fill = colours["object"][:, :, None, None] * (1.0 - tex[:, None]) + colours["texture"][:, :, None, None] * tex[:, None]
    m = mask[:, None]
    image = background * (1.0 - m) + fill * m
    image += rng.standard_normal(image.shape, dtype=np.float32) * noise_std[:, None, None, None]
    return np.clip(image * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)


def _draw_colours(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Object, texture and background colours (n, 3) in [0, 1]; hues carry no label information."""
    value_bg = rng.uniform(0.1, 0.9, n)
    # The object stands out from the background in brightness by at least 0.3.
    gap = rng.uniform(0.3, 0.55, n)
    up = np.where(value_bg + gap <= 1.0, True, np.where(value_bg - gap >= 0.0, False, rng.random(n) < 0.5))
    value_obj = np.clip(np.where(up, value_bg + gap, value_bg - gap), 0.05, 1.0)
    # The texture's second colour: another hue and a clearly different brightness.
    tex_gap = rng.uniform(0.3, 0.5, n)
    value_tex = np.where(value_obj > 0.5, value_obj - tex_gap, value_obj + tex_gap)
    hue_obj = rng.random(n)
    hue_tex = (hue_obj + rng.uniform(0.25, 0.75, n)) % 1.0
    hue_bg = rng.random(n)
    return {
        "object": _hsv_to_rgb(hue_obj, rng.uniform(0.4, 1.0, n), value_obj),
        "texture": _hsv_to_rgb(hue_tex, rng.uniform(0.4, 1.0, n), np.clip(value_tex, 0.0, 1.0)),
        "background": _hsv_to_rgb(hue_bg, rng.uniform(0.0, 0.5, n), value_bg),
    }


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    i = np.floor(h * 6.0).astype(np.int64) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = np.stack(
        [
            np.stack([v, t, p], 1),
            np.stack([q, v, p], 1),
            np.stack([p, v, t], 1),
            np.stack([p, q, v], 1),
            np.stack([t, p, v], 1),
            np.stack([v, p, q], 1),
        ],
        0,
    )
    return table[i, np.arange(h.shape[0])].astype(np.float32)


def _upsample_matrix(low: int, high: int) -> np.ndarray:
    """(high, low) bilinear interpolation weights, corners aligned."""
    pos = np.linspace(0.0, low - 1.0, high)
    left = np.clip(np.floor(pos).astype(np.int64), 0, low - 2)
    frac = pos - left
    w = np.zeros((high, low), dtype=np.float32)
    w[np.arange(high), left] = 1.0 - frac
    w[np.arange(high), left + 1] = frac
    return w


def _background(n: int, colour: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A smooth random colour field around ``colour`` with 0–3 small clutter blobs, (n, 3, 32, 32)."""
    low = 4
    w = _upsample_matrix(low, IMAGE_SIZE)
    field = rng.uniform(-0.12, 0.12, (n, 3, low, low)).astype(np.float32)
    image = colour[:, :, None, None] + np.einsum("ij,ncjk,lk->ncil", w, field, w, optimize=True)
    grid = np.arange(IMAGE_SIZE, dtype=np.float32)
    for _ in range(3):
        present = rng.random(n) < 0.5
        cx, cy = rng.uniform(0, IMAGE_SIZE - 1, (2, n)).astype(np.float32)
        rad = rng.uniform(0.8, 2.0, n).astype(np.float32)
        tint = rng.uniform(-0.25, 0.25, (n, 3)).astype(np.float32)
        d = np.sqrt((grid[None, None, :] - cx[:, None, None]) ** 2 + (grid[None, :, None] - cy[:, None, None]) ** 2)
        blob = np.clip(rad[:, None, None] + 0.5 - d, 0.0, 1.0) * present[:, None, None]
        image = image + blob[:, None] * tint[:, :, None, None]
    return np.clip(image, 0.0, 1.0)


# --- outlines: signed distance (negative inside) in units of the object radius ----------------------


def _circle(u: _Field, v: _Field, r: float, cx: float = 0.0, cy: float = 0.0) -> _Field:
    return np.sqrt((u - cx) ** 2 + (v - cy) ** 2) - r


def _box(u: _Field, v: _Field, hw: float, hh: float, cx: float = 0.0, cy: float = 0.0) -> _Field:
    qx = np.abs(u - cx) - hw
    qy = np.abs(v - cy) - hh
    outside = np.sqrt(np.maximum(qx, 0.0) ** 2 + np.maximum(qy, 0.0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0.0)


def _polygon(u: _Field, v: _Field, sides: int, r: float) -> _Field:
    """Regular polygon with circumradius ``r``, one vertex pointing up."""
    sector = 2.0 * np.pi / sides
    ang = np.arctan2(u, -v)
    phi = np.mod(ang + sector / 2.0, sector) - sector / 2.0
    # Distance to the nearest edge line (exact inside, close enough outside at this scale).
    return np.sqrt(u * u + v * v) * np.cos(np.abs(phi) - sector / 2.0) - r * np.cos(sector / 2.0)


def _star(u: _Field, v: _Field, points: int, r_out: float, r_in: float) -> _Field:
    sector = 2.0 * np.pi / points
    ang = np.arctan2(u, -v)
    t = np.abs(np.mod(ang, sector) / sector * 2.0 - 1.0)  # 0 at a tip, 1 between tips
    reach = r_out + (r_in - r_out) * t
    return (np.sqrt(u * u + v * v) - reach) * 0.55


def _union(*fields: _Field) -> _Field:
    return np.minimum.reduce(fields)


def _heart(u: _Field, v: _Field) -> _Field:
    lobes = _union(_circle(u, v, 0.45, -0.42, -0.3), _circle(u, v, 0.45, 0.42, -0.3))
    point = np.maximum.reduce([0.816 * u + 0.578 * v - 0.52, -0.816 * u + 0.578 * v - 0.52, -v - 0.3])
    return _union(lobes, point)


def _arrow(u: _Field, v: _Field) -> _Field:
    head = _polygon(u, (v + 0.4) / 0.8, 3, 0.9) * 0.8
    return _union(head, _box(u, v, 0.28, 0.55, 0.0, 0.4))


def _teardrop(u: _Field, v: _Field) -> _Field:
    # A disk with a cone whose sides touch it, ending in a point at the top.
    cone = np.maximum.reduce([0.866 * u - 0.5 * (v + 0.95), -0.866 * u - 0.5 * (v + 0.95), v - 0.25])
    return _union(_circle(u, v, 0.6, 0.0, 0.25), cone)


def _bowtie(u: _Field, v: _Field) -> _Field:
    # Two triangles meeting at their tips in the centre.
    left = np.maximum.reduce([-u - 0.95, u, np.abs(v) - 0.9 * (-u) * 0.75 - 0.05])
    right = np.maximum.reduce([u - 0.95, -u, np.abs(v) - 0.9 * u * 0.75 - 0.05])
    return _union(left, right) * 0.8


def _l_shape(u: _Field, v: _Field) -> _Field:
    return _union(_box(u, v, 0.36, 0.9, -0.3, 0.0), _box(u, v, 0.75, 0.36, 0.09, 0.55))


#: Base outline of each superclass and the width of the rim (in object radii) that ``hollow`` keeps.
_FAMILIES: tuple[tuple[_Outline, float], ...] = (
    (lambda u, v: _circle(u, v, 0.9), 0.3),
    (lambda u, v: _polygon(u, v + 0.2, 3, 1.15), 0.22),
    (lambda u, v: _box(u, v, 0.75, 0.75), 0.27),
    (lambda u, v: _star(u, v, 5, 1.15, 0.5), 0.16),
    (lambda u, v: _union(_box(u, v, 0.95, 0.33), _box(u, v, 0.33, 0.95)), 0.15),
    (_heart, 0.22),
    (_arrow, 0.16),
    (_teardrop, 0.25),
    (_bowtie, 0.18),
    (_l_shape, 0.14),
)


def _modified(base: _Outline, rim: float, modifier: int | None) -> _Outline:
    """``base`` with one of :data:`MODIFIERS` applied (None: unchanged)."""
    if modifier is None:
        return base
    name = MODIFIERS[modifier]
    if name == "hollow":

        def hollow(u: _Field, v: _Field) -> _Field:
            d = base(u, v)
            return np.maximum(d, -(d + rim))

        return hollow
    if name == "elongated":
        return lambda u, v: base(u / 1.18, v / 0.8) * 0.8
    if name == "doubled":
        return lambda u, v: _union(base((u - 0.38) / 0.68, v / 0.68), base((u + 0.38) / 0.68, v / 0.68)) * 0.68
    # notched: a round bite out of one side
    return lambda u, v: np.maximum(base(u, v), -_circle(u, v, 0.5, 0.0, -0.85))


_OUTLINES: tuple[tuple[_Outline, ...], ...] = tuple(
    tuple(_modified(base, rim, modifier_index(s, k)) for k in range(4)) for s, (base, rim) in enumerate(_FAMILIES)
)


# --- textures: 0 → object colour, 1 → texture colour; in object coordinates so they rotate with it --


def _soft(x: _Field, sharpness: float = 1.5) -> _Field:
    return np.clip(0.5 + sharpness * x, 0.0, 1.0)


def _wave(coord_px: _Field, period: _Field, phase: _Field) -> _Field:
    return np.sin(2.0 * np.pi * (coord_px / period + phase))


def _tex_solid(u: _Field, v: _Field, r: _Field, p: _Field, ph: np.ndarray) -> _Field:
    return np.zeros_like(u)


def _tex_stripes(u: _Field, v: _Field, r: _Field, p: _Field, ph: np.ndarray) -> _Field:
    return _soft(_wave(u * r, p, ph[:, 0, None, None]))


def _tex_checker(u: _Field, v: _Field, r: _Field, p: _Field, ph: np.ndarray) -> _Field:
    return _soft(2.0 * _wave(u * r, 1.3 * p, ph[:, 0, None, None]) * _wave(v * r, 1.3 * p, ph[:, 1, None, None]))


def _tex_dots(u: _Field, v: _Field, r: _Field, p: _Field, ph: np.ndarray) -> _Field:
    cell = 1.2 * p
    fu = np.mod(u * r / cell + ph[:, 0, None, None], 1.0) - 0.5
    fv = np.mod(v * r / cell + ph[:, 1, None, None], 1.0) - 0.5
    return np.clip(0.5 + 0.3 * cell - np.sqrt(fu * fu + fv * fv) * cell, 0.0, 1.0)


def _tex_rings(u: _Field, v: _Field, r: _Field, p: _Field, ph: np.ndarray) -> _Field:
    return _soft(_wave(np.sqrt(u * u + v * v) * r, p, ph[:, 0, None, None]))


def _tex_sectors(u: _Field, v: _Field, r: _Field, p: _Field, ph: np.ndarray) -> _Field:
    return _soft(2.0 * np.sin(6.0 * np.arctan2(u, v) + 2.0 * np.pi * ph[:, 0, None, None]))


def _tex_gradient(u: _Field, v: _Field, r: _Field, p: _Field, ph: np.ndarray) -> _Field:
    return np.clip((u + 1.0) / 2.0, 0.0, 1.0)


def _tex_grid(u: _Field, v: _Field, r: _Field, p: _Field, ph: np.ndarray) -> _Field:
    cell = 1.3 * p
    fu = np.abs(np.mod(u * r / cell + ph[:, 0, None, None], 1.0) - 0.5) * cell
    fv = np.abs(np.mod(v * r / cell + ph[:, 1, None, None], 1.0) - 0.5) * cell
    return np.clip(np.maximum(fu, fv) - 0.5 * cell + 1.2, 0.0, 1.0)


def _tex_zigzag(u: _Field, v: _Field, r: _Field, p: _Field, ph: np.ndarray) -> _Field:
    tri = np.abs(np.mod(v * r / p + ph[:, 1, None, None], 1.0) - 0.5) * p * 1.5
    return _soft(_wave(u * r + tri, p, ph[:, 0, None, None]))


def _tex_eye(u: _Field, v: _Field, r: _Field, p: _Field, ph: np.ndarray) -> _Field:
    return np.clip(0.5 + (0.4 - np.sqrt(u * u + v * v)) * r, 0.0, 1.0)


_Texture = Callable[[_Field, _Field, _Field, _Field, np.ndarray], _Field]
_TEXTURES: tuple[_Texture, ...] = (
    _tex_solid,
    _tex_stripes,
    _tex_checker,
    _tex_dots,
    _tex_rings,
    _tex_sectors,
    _tex_gradient,
    _tex_grid,
    _tex_zigzag,
    _tex_eye,
)
