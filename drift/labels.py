"""Output-level drift: label maps that change what the classes mean.

A :class:`LabelMap` sends every class ``c`` of the source task to ``mapping[c]``. All maps here keep
the label space (``num_classes`` outputs), so the classifier keeps its shape and only its weights
need to change, which is the situation the paper's output-level drift (CIFAR-Flip) describes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Rejection sampling accepts a permutation as a derangement with probability ≈ 1/e; after this many
# draws a failure means a bug, not bad luck.
_MAX_DERANGEMENT_DRAWS = 10_000


def _check_num_classes(num_classes: object, minimum: int = 1) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"num_classes must be an integer, got {num_classes!r}")
    if num_classes < minimum:
        raise ValueError(f"num_classes must be at least {minimum}, got {num_classes}")
    return int(num_classes)


@dataclass(frozen=True, eq=False)
class LabelMap:
    """A relabelling of ``num_classes`` classes: class ``c`` becomes ``mapping[c]``.

    ``mapping`` is kept as a read-only int64 copy with values in ``[0, num_classes)``.
    """

    name: str
    mapping: np.ndarray

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("a label map needs a non-empty name")
        array = np.asarray(self.mapping)
        if array.ndim != 1 or array.size == 0:
            raise ValueError(f"mapping must be a non-empty 1-D sequence, got shape {array.shape}")
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"mapping must hold integers, got dtype {array.dtype}")
        if array.min() < 0 or array.max() >= array.size:
            raise ValueError(
                f"mapping values must lie in [0, {array.size}) (one entry per class), "
                f"got {array.min()}..{array.max()}"
            )
        stored = array.astype(np.int64, copy=True)
        stored.flags.writeable = False
        object.__setattr__(self, "mapping", stored)

    @property
    def num_classes(self) -> int:
        """How many classes the map is defined on (and maps into)."""
        return int(self.mapping.size)

    @property
    def is_permutation(self) -> bool:
        """True when no two classes are sent to the same label (nothing is merged)."""
        return bool(np.unique(self.mapping).size == self.mapping.size)

    @property
    def fixed_points(self) -> tuple[int, ...]:
        """The classes that keep their label."""
        return tuple(int(c) for c in np.flatnonzero(self.mapping == np.arange(self.num_classes)))

    def apply(self, labels: Iterable[int] | np.ndarray) -> np.ndarray:
        """The new labels of ``labels`` (any shape of integers in ``[0, num_classes)``), as int64."""
        array = np.asarray(labels)
        if array.size and not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"labels must be integers, got dtype {array.dtype}")
        array = array.astype(np.int64, copy=False)
        if array.size and (array.min() < 0 or array.max() >= self.num_classes):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}), got {array.min()}..{array.max()}"
            )
        return self.mapping[array]

    def to_dict(self) -> dict[str, Any]:
        """A plain-JSON form: name and mapping."""
        return {"name": self.name, "mapping": [int(v) for v in self.mapping]}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LabelMap):
            return NotImplemented
        return self.name == other.name and np.array_equal(self.mapping, other.mapping)

    def __hash__(self) -> int:
        return hash((self.name, self.mapping.tobytes()))

    def __repr__(self) -> str:
        return f"LabelMap(name={self.name!r}, mapping={self.mapping.tolist()})"


def identity(num_classes: int) -> LabelMap:
    """Every class keeps its label (no output-level drift)."""
    n = _check_num_classes(num_classes)
    return LabelMap("identity", np.arange(n))


def flip(num_classes: int) -> LabelMap:
    """``c → num_classes − 1 − c``: CIFAR-Flip's ``c → 9 − c`` at 10 classes.

    An involution; with an odd class count the middle class keeps its label.
    """
    n = _check_num_classes(num_classes, minimum=2)
    return LabelMap("flip", np.arange(n)[::-1])


def permutation(num_classes: int, seed: int = 0) -> LabelMap:
    """A random relabelling in which no class keeps its label (a derangement), fixed by ``seed``.

    Drawn uniformly among derangements by rejection from ``np.random.default_rng(seed)``.
    """
    n = _check_num_classes(num_classes, minimum=2)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    classes = np.arange(n)
    for _ in range(_MAX_DERANGEMENT_DRAWS):
        candidate = rng.permutation(n)
        if not np.any(candidate == classes):
            return LabelMap(f"permutation(seed={int(seed)})", candidate)
    raise RuntimeError(f"no derangement of {n} classes after {_MAX_DERANGEMENT_DRAWS} draws")


def merge(num_classes: int, groups: Sequence[Sequence[int]]) -> LabelMap:
    """Merge each group of classes into its smallest member; classes in no group are unchanged.

    ``merge(10, [[0, 1], [2, 3]])`` maps 1 → 0 and 3 → 2. The label space keeps ``num_classes``
    entries (the absorbed labels just stop occurring), so the classifier keeps its shape. Groups
    need at least two distinct classes each and may not overlap.
    """
    n = _check_num_classes(num_classes, minimum=2)
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence) or len(groups) == 0:
        raise ValueError("groups must be a non-empty sequence of class groups, e.g. [[0, 1], [2, 3]]")
    mapping = np.arange(n)
    seen: set[int] = set()
    for group in groups:
        if isinstance(group, (str, bytes)) or not isinstance(group, Sequence):
            raise ValueError(f"each group must be a sequence of class indices, got {group!r}")
        members: list[int] = []
        for member in group:
            if isinstance(member, bool) or not isinstance(member, (int, np.integer)):
                raise ValueError(f"class indices must be integers, got {member!r} in {list(group)!r}")
            if not 0 <= member < n:
                raise ValueError(f"class {member} is out of range for {n} classes")
            members.append(int(member))
        if len(set(members)) != len(members):
            raise ValueError(f"group {members} repeats a class")
        if len(members) < 2:
            raise ValueError(f"group {members} must merge at least two classes")
        overlap = seen.intersection(members)
        if overlap:
            raise ValueError(f"classes {sorted(overlap)} appear in more than one group")
        seen.update(members)
        mapping[members] = min(members)
    description = ",".join("[" + ",".join(str(int(m)) for m in g) + "]" for g in groups)
    return LabelMap(f"merge({description})", mapping)
