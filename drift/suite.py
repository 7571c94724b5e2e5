"""The drift scenario suite: named scenarios of known drift type, built deterministically from a seed.

Each :class:`SuiteScenario` is plain data: an input-level corruption (name and severity), a label
map, a sub-population shift, any combination of them, or none at all (a no-drift control). Its
*components* are the drift types present; its *true type* is the one a detector should name:

- one component: that component;
- a composite: the dominant component, by :data:`DOMINANCE` (output over input over feature). A
  label map leaves predictions wrong whatever the features are, so only the classifier can undo it
  (the base model scores 0.8% under a flip); a severe corruption costs the base model about twice
  what new sub-populations cost (README: 65 against 30 points);
- nothing: ``none``.

:func:`build_shapes` makes the train / validation / test samples of a scenario on Shapes-40 (the
shipped base model's data); :func:`build_arrays` on real labelled arrays (e.g. the CIFAR-10
subset), which have no sub-population labels, so :func:`data_suite` has no feature drift.
The same scenario, sizes and seed always give identical arrays, whatever else is built.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from drift.corruptions import corrupt
from drift.labels import LabelMap, flip, permutation
from drift.scenarios import SOURCE_SUBCLASSES, TARGET_SUBCLASSES, Split
from drift.shapes import NUM_SUBCLASSES, NUM_SUPERCLASSES, generate
from drift.subpopulation import make_split

NONE = "none"
#: The types a scenario can have, ``none`` for the no-drift controls.
TRUE_TYPES: tuple[str, ...] = ("input", "feature", "output", NONE)
#: A composite's true type is its first component in this order (see the module docstring).
DOMINANCE: tuple[str, ...] = ("output", "input", "feature")

#: Corruptions of the suite: three noises, a photometric, a weather and a digital shift.
SUITE_CORRUPTIONS: tuple[str, ...] = ("gaussian_noise", "shot_noise", "impulse_noise", "contrast", "fog", "pixelate")
SUITE_SEVERITIES: tuple[int, ...] = (3, 5)
LABEL_MAPS: tuple[str, ...] = ("flip", "permutation")
#: Sub-population shifts of Shapes-40 (the base model saw subclasses 0 and 1 of every superclass).
SUBPOPULATIONS: tuple[str, ...] = ("subclasses-2-3", "seeded-split")
#: The BREEDS-style split behind ``seeded-split``: per superclass a seeded random two of the four
#: subclasses, 12 of the 20 unseen by the base model (2 superclasses keep only seen ones).
SEEDED_SPLIT_SEED = 1

# Mixed into seeds so that suite images never coincide with the base model's or drift.scenarios'.
_SUITE_SEED_SALT = 0x5017E


@dataclass(frozen=True)
class SuiteScenario:
    """One scenario of the suite: which shifts it applies (None: not that one).

    ``replicate`` tells apart scenarios that apply the same shifts (the no-drift controls): it
    enters the name and therefore the seeds.
    """

    corruption: str | None = None
    severity: int | None = None
    label_map: str | None = None
    subpopulation: str | None = None
    replicate: str | None = None

    def __post_init__(self) -> None:
        if (self.corruption is None) != (self.severity is None):
            raise ValueError("a corruption needs a severity, and a severity a corruption")
        if self.label_map is not None and self.label_map not in LABEL_MAPS:
            raise ValueError(f"unknown label map {self.label_map!r}; choose one of {', '.join(LABEL_MAPS)}")
        if self.subpopulation is not None and self.subpopulation not in SUBPOPULATIONS:
            raise ValueError(f"unknown sub-population shift {self.subpopulation!r}; choose one of {', '.join(SUBPOPULATIONS)}")

    @property
    def components(self) -> tuple[str, ...]:
        """The drift types present, in the network's order (input, feature, output)."""
        present = {"input": self.corruption is not None, "feature": self.subpopulation is not None,
                   "output": self.label_map is not None}
        return tuple(kind for kind in ("input", "feature", "output") if present[kind])

    @property
    def composite(self) -> bool:
        """True when more than one kind of drift is present."""
        return len(self.components) > 1

    @property
    def true_type(self) -> str:
        """The drift type a detector should name (see :data:`DOMINANCE`)."""
        components = self.components
        if not components:
            return NONE
        return next(kind for kind in DOMINANCE if kind in components)

    @property
    def name(self) -> str:
        """E.g. ``input/gaussian_noise-5``, ``composite/contrast-5+permutation``, ``none/source-a``."""
        parts = []
        if self.corruption is not None:
            parts.append(f"{self.corruption}-{self.severity}")
        if self.subpopulation is not None:
            parts.append(self.subpopulation)
        if self.label_map is not None:
            parts.append(self.label_map)
        if not parts:
            parts.append(f"source-{self.replicate or 'a'}")
        elif self.replicate:
            parts.append(self.replicate)
        kind = "composite" if self.composite else self.true_type
        return f"{kind}/{'+'.join(parts)}"

    @property
    def description(self) -> str:
        """What the scenario does, in words."""
        said = []
        if self.corruption is not None:
            said.append(f"{self.corruption} at severity {self.severity}")
        if self.subpopulation == "subclasses-2-3":
            said.append(f"only unseen subclasses {TARGET_SUBCLASSES}")
        elif self.subpopulation == "seeded-split":
            said.append(f"a seeded BREEDS split (seed {SEEDED_SPLIT_SEED}), 12 of 20 subclasses unseen")
        if self.label_map == "flip":
            said.append("labels flipped (c → classes − 1 − c)")
        elif self.label_map == "permutation":
            said.append("labels permuted (a seeded derangement)")
        if not said:
            return "no drift: fresh source images"
        return "; ".join(said)


@dataclass(frozen=True)
class Sizes:
    """Samples per split: ``train`` to fine-tune on, ``val`` to select weights, ``test`` to report on."""

    train: int
    val: int
    test: int

    def __post_init__(self) -> None:
        if min(self.train, self.val, self.test) < 1:
            raise ValueError("every split needs at least one sample")

    @property
    def total(self) -> int:
        return self.train + self.val + self.test


@dataclass(frozen=True)
class ScenarioData:
    """The drifted samples of one scenario: fine-tune on ``train``, select on ``val``, report on ``test``."""

    scenario: SuiteScenario
    train: Split
    val: Split
    test: Split
    num_classes: int


def shapes_suite(quick: bool = False) -> tuple[SuiteScenario, ...]:
    """The Shapes-40 suite: corruptions × severities, label maps, sub-population shifts, composites,
    two no-drift controls. ``quick``: one scenario of each kind and a control (CI)."""
    if quick:
        return (
            SuiteScenario("gaussian_noise", 5),
            SuiteScenario(subpopulation="subclasses-2-3"),
            SuiteScenario(label_map="flip"),
            SuiteScenario("contrast", 5, label_map="permutation"),
            SuiteScenario(replicate="a"),
        )
    return (
        *(SuiteScenario(c, s) for c in SUITE_CORRUPTIONS for s in SUITE_SEVERITIES),
        *(SuiteScenario(subpopulation=p) for p in SUBPOPULATIONS),
        *(SuiteScenario(label_map=m) for m in LABEL_MAPS),
        SuiteScenario("gaussian_noise", 5, subpopulation="subclasses-2-3"),
        SuiteScenario("contrast", 5, label_map="permutation"),
        SuiteScenario(subpopulation="subclasses-2-3", label_map="flip"),
        SuiteScenario(replicate="a"),
        SuiteScenario(replicate="b"),
    )


def data_suite(quick: bool = False) -> tuple[SuiteScenario, ...]:
    """The suite for real labelled arrays: :func:`shapes_suite` without sub-population shifts
    (plain labelled data has no sub-population structure)."""
    return tuple(s for s in shapes_suite(quick) if s.subpopulation is None)


def select(suite: Sequence[SuiteScenario], patterns: Sequence[str] | None) -> tuple[SuiteScenario, ...]:
    """The scenarios whose name equals or starts with one of ``patterns`` (all when None).

    A pattern that matches nothing is a ValueError listing the names.
    """
    if not patterns:
        return tuple(suite)
    chosen = []
    for pattern in patterns:
        matches = [s for s in suite if s.name == pattern or s.name.startswith(pattern)]
        if not matches:
            raise ValueError(f"no scenario matches {pattern!r}; the suite has: {', '.join(s.name for s in suite)}")
        chosen.extend(m for m in matches if m not in chosen)
    return tuple(s for s in suite if s in chosen)


def scenario_seeds(scenario: SuiteScenario, seed: int, count: int) -> list[int]:
    """``count`` independent seeds for ``scenario`` under the run's ``seed`` (from its name, not its position)."""
    sequence = np.random.SeedSequence([int(seed), _SUITE_SEED_SALT, zlib.crc32(scenario.name.encode())])
    return [int(child.generate_state(1, dtype=np.uint32)[0]) for child in sequence.spawn(count)]


def label_map_of(scenario: SuiteScenario, num_classes: int, seed: int) -> LabelMap | None:
    """The scenario's label map at ``num_classes`` classes; the permutation is fixed by the run's seed."""
    if scenario.label_map is None:
        return None
    if scenario.label_map == "flip":
        return flip(num_classes)
    return permutation(num_classes, seed=int(seed))


def build_shapes(scenario: SuiteScenario, sizes: Sizes, seed: int = 0) -> ScenarioData:
    """The scenario's samples on Shapes-40: fresh images (never the base model's), shifted."""
    data_seed, corruption_seed = scenario_seeds(scenario, seed, 2)
    x, y = _shapes_images(scenario.subpopulation, sizes.total, data_seed)
    return _shifted(scenario, _split(x, y, sizes), NUM_SUPERCLASSES, corruption_seed, seed)


def shapes_source(size: int, seed: int = 0) -> Split:
    """Clean held-out source images (the base model's subclasses), for its source statistics."""
    sequence = np.random.SeedSequence([int(seed), _SUITE_SEED_SALT, zlib.crc32(b"source-statistics")])
    data = generate(size, int(sequence.generate_state(1, dtype=np.uint32)[0]), subclasses=SOURCE_SUBCLASSES)
    return Split(data.x, data.y)


def build_arrays(
    scenario: SuiteScenario, pool: Split, held_out: Split, sizes: Sizes, seed: int = 0, source_size: int = 0
) -> ScenarioData:
    """The scenario's samples from real arrays: ``train`` drawn from ``pool`` (never from its first
    ``source_size`` images after a seeded shuffle, which :func:`array_source` keeps for source
    statistics), ``val`` and ``test`` from ``held_out`` (the same images for every scenario of a run)."""
    if scenario.subpopulation is not None:
        raise ValueError("sub-population shifts need sub-population labels; real arrays have none")
    _, available = _pool_parts(pool, source_size, seed)
    if sizes.train > len(available):
        raise ValueError(
            f"{sizes.train} training samples requested, {len(available)} available after the source reserve"
        )
    if sizes.val >= len(held_out):
        raise ValueError(f"{sizes.val} validation samples leave no test samples of {len(held_out)}")
    data_seed, corruption_seed = scenario_seeds(scenario, seed, 2)
    train_index = np.random.default_rng(data_seed).permutation(available)[: sizes.train]
    order = _held_out_order(held_out, seed)
    val_index, test_index = order[: sizes.val], order[sizes.val : sizes.val + sizes.test]
    splits = [Split(pool.x[train_index], pool.y[train_index]),
              Split(held_out.x[val_index], held_out.y[val_index]),
              Split(held_out.x[test_index], held_out.y[test_index])]
    num_classes = int(max(pool.y.max(), held_out.y.max())) + 1
    return _shifted(scenario, splits, num_classes, corruption_seed, seed)


def array_source(pool: Split, source_size: int, seed: int = 0) -> Split:
    """The clean ``pool`` images kept for source statistics (see :func:`build_arrays`)."""
    reserved, _ = _pool_parts(pool, source_size, seed)
    return Split(pool.x[reserved], pool.y[reserved])


def array_source_accuracy_split(held_out: Split, sizes: Sizes, seed: int = 0) -> Split:
    """The clean ``held_out`` images that no scenario's validation or test split takes: where the
    base model's source accuracy is measured when ``pool`` is its training data (empty if none left)."""
    rest = _held_out_order(held_out, seed)[sizes.val + sizes.test :]
    return Split(held_out.x[rest], held_out.y[rest])


def _held_out_order(held_out: Split, seed: int) -> np.ndarray:
    return np.random.default_rng([int(seed), _SUITE_SEED_SALT]).permutation(len(held_out))


def _pool_parts(pool: Split, source_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0 <= source_size < len(pool):
        raise ValueError(f"source_size must be in 0..{len(pool) - 1}, got {source_size}")
    order = np.random.default_rng([int(seed), _SUITE_SEED_SALT, 1]).permutation(len(pool))
    return order[:source_size], order[source_size:]


def _shapes_images(subpopulation: str | None, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` class-balanced images of the sub-populations a scenario shows, in random order."""
    if subpopulation is None:
        data = generate(n, seed, subclasses=SOURCE_SUBCLASSES)
        return data.x, data.y
    if subpopulation == "subclasses-2-3":
        data = generate(n, seed, subclasses=TARGET_SUBCLASSES)
        return data.x, data.y
    target = make_split(NUM_SUPERCLASSES, NUM_SUBCLASSES, seed=SEEDED_SPLIT_SEED).target
    # Superclasses that share a choice of subclasses are drawn together, each group in proportion.
    groups: dict[tuple[int, ...], list[int]] = {}
    for superclass, subclasses in enumerate(target):
        groups.setdefault(subclasses, []).append(superclass)
    seeds = np.random.SeedSequence(seed).spawn(len(groups) + 1)
    counts = _shares(n, [len(members) for members in groups.values()])
    xs, ys = [], []
    for (subclasses, members), count, child in zip(groups.items(), counts, seeds, strict=False):
        child_seed = int(child.generate_state(1, dtype=np.uint32)[0])
        data = generate(count, child_seed, subclasses=subclasses, superclasses=members)
        xs.append(data.x)
        ys.append(data.y)
    order = np.random.default_rng(seeds[-1]).permutation(n)
    return np.concatenate(xs)[order], np.concatenate(ys)[order]


def _shares(n: int, weights: Sequence[int]) -> list[int]:
    """``n`` split in proportion to ``weights``, the remainder to the first parts."""
    total = sum(weights)
    counts = [n * w // total for w in weights]
    for i in range(n - sum(counts)):
        counts[i % len(counts)] += 1
    return counts


def _split(x: np.ndarray, y: np.ndarray, sizes: Sizes) -> list[Split]:
    bounds = np.cumsum([0, sizes.train, sizes.val, sizes.test])
    return [Split(x[a:b], y[a:b].astype(np.int64)) for a, b in itertools.pairwise(bounds)]


def _shifted(
    scenario: SuiteScenario, splits: list[Split], num_classes: int, corruption_seed: int, seed: int
) -> ScenarioData:
    """Apply the scenario's corruption (each split its own draws) and label map to clean splits."""
    label_map = label_map_of(scenario, num_classes, seed)
    shifted = []
    for i, split in enumerate(splits):
        x, y = split.x, split.y.astype(np.int64)
        if scenario.corruption is not None:
            x = corrupt(x, scenario.corruption, int(scenario.severity or 0), seed=(corruption_seed + i) % 2**32)
        if label_map is not None:
            y = label_map.apply(y)
        shifted.append(Split(x, y))
    train, val, test = shifted
    return ScenarioData(scenario, train, val, test, num_classes)
