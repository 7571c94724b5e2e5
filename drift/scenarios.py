"""Drift scenarios: drifted training, validation and test samples for one drift type.

Used by the benchmarks, ``tbftd finetune`` and the demo. Generated scenarios stand on the Shapes-40
data (:mod:`drift.shapes`) that the shipped base model was trained on:

- ``input``: held-out source images under a CIFAR-10-C corruption (default gaussian_noise, 5);
- ``feature``: images of the target sub-population (subclasses the base model never saw);
- ``output``: held-out source images with their labels flipped (c → classes − 1 − c).

Real-data scenarios (:func:`array_scenario`) apply the input and output shifts to given arrays.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from drift.corruptions import corrupt
from drift.labels import LabelMap, flip
from drift.shapes import NUM_SUPERCLASSES, generate
from drift.types import DriftType, parse_drift_type

#: Subclasses of each superclass the base model is trained on, and the ones it meets later.
SOURCE_SUBCLASSES: tuple[int, ...] = (0, 1)
TARGET_SUBCLASSES: tuple[int, ...] = (2, 3)
#: Mixed into seeds so scenario images never coincide with the base model's training images.
_SCENARIO_SEED_SALT = 0x5CE7A


@dataclass(frozen=True)
class Split:
    """Images (N, C, H, W) uint8 and int64 labels."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True)
class DriftScenario:
    """Samples of one drift situation: ``train`` to fine-tune on, ``val`` to select weights, ``test``
    to report accuracy on (never seen by the job)."""

    name: str
    drift: DriftType
    description: str
    train: Split
    val: Split
    test: Split


def shapes_scenario(
    drift: DriftType | str,
    train_size: int = 1000,
    val_size: int = 300,
    test_size: int = 1000,
    seed: int = 0,
    corruption: str = "gaussian_noise",
    severity: int = 5,
) -> DriftScenario:
    """A generated scenario on Shapes-40 (see the module docstring for what each drift does)."""
    kind = parse_drift_type(drift)
    total = train_size + val_size + test_size
    seeds = np.random.SeedSequence([seed, _SCENARIO_SEED_SALT, list(DriftType).index(kind)])
    data_seed, shift_seed = (int(s.generate_state(1)[0]) for s in seeds.spawn(2))
    if kind is DriftType.feature:
        data = generate(total, data_seed, subclasses=TARGET_SUBCLASSES)
        x, y = data.x, data.y
        description = f"target sub-population: subclasses {TARGET_SUBCLASSES} (base saw {SOURCE_SUBCLASSES})"
    else:
        data = generate(total, data_seed, subclasses=SOURCE_SUBCLASSES)
        x, y = data.x, data.y
        if kind is DriftType.input:
            x = corrupt(x, corruption, severity, seed=shift_seed % (2**32))
            description = f"{corruption} at severity {severity}"
        else:
            label_map = flip(NUM_SUPERCLASSES)
            y = label_map.apply(y)
            description = f"labels remapped ({label_map.name})"
    name = f"shapes/{kind.value}"
    return DriftScenario(name, kind, description, *_split(x, y, (train_size, val_size, test_size)))


def array_scenario(
    drift: DriftType | str,
    pool: Split,
    held_out: Split,
    train_size: int = 1000,
    val_fraction: float = 0.5,
    seed: int = 0,
    corruption: str = "gaussian_noise",
    severity: int = 5,
    label_map: LabelMap | None = None,
    name: str = "data",
    val_size: int | None = None,
) -> DriftScenario:
    """A scenario on real arrays: fine-tune on ``pool[:train_size]``, split ``held_out`` into
    validation and test, or with ``val_size`` validate on the next ``val_size`` images of ``pool``
    and test on all of ``held_out``. Only ``input`` and ``output`` drift can be made from plain
    labelled data."""
    kind = parse_drift_type(drift)
    wanted = train_size + (val_size or 0)
    if wanted > len(pool):
        raise ValueError(f"{wanted} training and validation images exceed the {len(pool)} available")
    num_classes = int(max(pool.y.max(), held_out.y.max())) + 1
    xs = [pool.x[:wanted], held_out.x]
    ys = [pool.y[:wanted], held_out.y]
    if kind is DriftType.input:
        xs = [corrupt(x, corruption, severity, seed=seed + i) for i, x in enumerate(xs)]
        description = f"{corruption} at severity {severity}"
    elif kind is DriftType.output:
        label_map = label_map or flip(num_classes)
        ys = [label_map.apply(y) for y in ys]
        description = f"labels remapped ({label_map.name})"
    else:
        raise ValueError("feature drift needs data with a sub-population structure; use shapes_scenario")
    if val_size:
        train = Split(xs[0][:train_size], ys[0][:train_size].astype(np.int64))
        val = Split(xs[0][train_size:], ys[0][train_size:].astype(np.int64))
        return DriftScenario(f"{name}/{kind.value}", kind, description, train, val, Split(xs[1], ys[1].astype(np.int64)))
    n_val = round(len(held_out) * val_fraction)
    return DriftScenario(
        f"{name}/{kind.value}",
        kind,
        description,
        Split(xs[0], ys[0].astype(np.int64)),
        Split(xs[1][:n_val], ys[1][:n_val].astype(np.int64)),
        Split(xs[1][n_val:], ys[1][n_val:].astype(np.int64)),
    )


def _split(x: np.ndarray, y: np.ndarray, sizes: Sequence[int]) -> list[Split]:
    bounds = np.cumsum([0, *sizes])
    return [Split(x[a:b], y[a:b].astype(np.int64)) for a, b in itertools.pairwise(bounds)]
