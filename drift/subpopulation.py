"""Feature-level (sub-population) shift, BREEDS style, for any data labelled superclass → subclass.

Each sample carries a superclass label ``y`` (what the model predicts) and a subclass index ``sub``
(0..num_subclasses-1 *within* its superclass). A :class:`SubpopulationSplit` names, per
superclass, the subclasses of the source (what the base model is trained on) and of the target
(the new sub-populations met after deployment). The labels do not change between source and
target; only which sub-populations make up each class does.

Datasets with global subclass ids (BREEDS uses ImageNet class ids) map them to within-superclass
indices first. Everything here is deterministic: a seed fixes every random choice.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Side = Literal["source", "target"]
SIDES: tuple[str, ...] = ("source", "target")


@dataclass(frozen=True)
class SubpopulationSplit:
    """Source and target subclasses of every superclass (``source[c]``, ``target[c]`` for class ``c``).

    Within a superclass the two sides are disjoint; a subclass on neither side is simply unused.
    """

    source: tuple[tuple[int, ...], ...]
    target: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if len(self.source) != len(self.target):
            raise ValueError("source and target must list the same number of superclasses")
        for c, (src, tgt) in enumerate(zip(self.source, self.target, strict=True)):
            if not src or not tgt:
                raise ValueError(f"superclass {c} needs at least one source and one target subclass")
            if len(set(src)) != len(src) or len(set(tgt)) != len(tgt):
                raise ValueError(f"superclass {c} lists a subclass twice")
            if set(src) & set(tgt):
                raise ValueError(f"superclass {c}: subclasses {sorted(set(src) & set(tgt))} are both source and target")
            if min(src + tgt) < 0:
                raise ValueError(f"superclass {c}: subclass indices must not be negative")

    @property
    def num_superclasses(self) -> int:
        return len(self.source)

    def subclasses(self, side: Side) -> tuple[tuple[int, ...], ...]:
        """``source`` or ``target``, by name."""
        if side == "source":
            return self.source
        if side == "target":
            return self.target
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")

    def mask(self, y: np.ndarray, sub: np.ndarray, side: Side) -> np.ndarray:
        """Boolean mask of the samples on ``side``; samples of unknown superclasses are on neither."""
        y = np.asarray(y, dtype=np.int64)
        sub = np.asarray(sub, dtype=np.int64)
        if y.shape != sub.shape or y.ndim != 1:
            raise ValueError("y and sub must be 1-D arrays of the same length")
        chosen = self.subclasses(side)
        width = max(max(s) for s in self.source + self.target) + 1
        table = np.zeros((self.num_superclasses, width), dtype=bool)
        for c, subs in enumerate(chosen):
            table[c, list(subs)] = True
        known = (y >= 0) & (y < self.num_superclasses) & (sub >= 0) & (sub < width)
        out = np.zeros(y.shape, dtype=bool)
        out[known] = table[y[known], sub[known]]
        return out

    def to_dict(self) -> dict[str, list[list[int]]]:
        """A plain-JSON form (for checkpoint metadata and reports)."""
        return {"source": [list(s) for s in self.source], "target": [list(t) for t in self.target]}


def make_split(
    num_superclasses: int,
    num_subclasses: int,
    num_source: int | None = None,
    seed: int | None = None,
) -> SubpopulationSplit:
    """Split each superclass's ``num_subclasses`` subclasses into source and target.

    ``num_source`` defaults to half. Without a seed the first ``num_source`` subclasses of every
    superclass are the source (0, 1 of 4) and the rest the target; with a seed each superclass gets
    its own random choice, as BREEDS draws them. Every subclass ends up on exactly one side.
    """
    if num_superclasses < 1 or num_subclasses < 2:
        raise ValueError("need at least one superclass and two subclasses per superclass")
    k = num_subclasses // 2 if num_source is None else int(num_source)
    if not 1 <= k < num_subclasses:
        raise ValueError(f"num_source must be in 1..{num_subclasses - 1}, got {num_source}")
    if seed is None:
        orders = [np.arange(num_subclasses)] * num_superclasses
    else:
        rng = np.random.default_rng(seed)
        orders = [rng.permutation(num_subclasses) for _ in range(num_superclasses)]
    return SubpopulationSplit(
        source=tuple(tuple(sorted(int(i) for i in order[:k])) for order in orders),
        target=tuple(tuple(sorted(int(i) for i in order[k:])) for order in orders),
    )


def split_indices(y: np.ndarray, sub: np.ndarray, split: SubpopulationSplit) -> tuple[np.ndarray, np.ndarray]:
    """(source indices, target indices) into ``y``/``sub``, ascending; disjoint by construction."""
    return (
        np.flatnonzero(split.mask(y, sub, "source")).astype(np.int64),
        np.flatnonzero(split.mask(y, sub, "target")).astype(np.int64),
    )


def sample_balanced(indices: np.ndarray, y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` of ``indices`` spread as evenly as possible over the classes in ``y[indices]``.

    Classes get ``n // classes`` each, the first ``n % classes`` (in class order) one more; a class
    with too few samples gives all it has and the shortfall is taken from the others. The result is
    in random order, fixed by ``seed``.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if n < 0 or n > len(indices):
        raise ValueError(f"cannot take {n} of {len(indices)} samples")
    rng = np.random.default_rng(seed)
    labels = np.asarray(y)[indices]
    classes = np.unique(labels)
    pools = [rng.permutation(indices[labels == c]) for c in classes]
    quota = np.array([n // len(classes)] * len(classes), dtype=np.int64)
    quota[: n % len(classes)] += 1
    quota = np.minimum(quota, [len(p) for p in pools])
    # Hand any shortfall to the classes that still have samples, one at a time, in class order.
    while quota.sum() < n:
        for i, pool in enumerate(pools):
            if quota.sum() < n and quota[i] < len(pool):
                quota[i] += 1
    chosen = np.concatenate([pool[:q] for pool, q in zip(pools, quota, strict=True)]) if len(pools) else indices[:0]
    return rng.permutation(chosen)


def partition(indices: np.ndarray, sizes: Sequence[int], seed: int) -> list[np.ndarray]:
    """Disjoint random parts of ``indices`` with the given sizes (e.g. train / validation / test)."""
    indices = np.asarray(indices, dtype=np.int64)
    if any(s < 0 for s in sizes) or sum(sizes) > len(indices):
        raise ValueError(f"sizes {list(sizes)} do not fit in {len(indices)} samples")
    shuffled = np.random.default_rng(seed).permutation(indices)
    bounds = np.cumsum([0, *sizes])
    return [shuffled[a:b] for a, b in itertools.pairwise(bounds)]
