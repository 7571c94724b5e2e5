"""The three kinds of data drift and the block each one is fine-tuned with.

The paper's rule: input-level drift → ``block1`` (front), feature-level drift → ``block3``
(middle), output-level drift → ``fc`` (rear). :class:`BlockMapping` holds that rule and lets a
deployment change it; :func:`resolve_target` turns a job's hint (a drift type, or an explicit
block name such as ``full`` or ``bn``) into the block to train.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import Enum

# The same tuple as ``device.blocks.BLOCK_NAMES`` (a test checks they agree). Held as a literal so
# that resolving a hint does not import torch through ``device``.
BLOCK_NAMES: tuple[str, ...] = ("block1", "block2", "block3", "fc", "full", "bn")


class DriftType(str, Enum):
    """A kind of data drift, named as in the paper."""

    input = "input"
    feature = "feature"
    output = "output"

    def __str__(self) -> str:
        return self.value


DRIFT_TYPES: tuple[str, ...] = tuple(d.value for d in DriftType)


def parse_drift_type(value: DriftType | str) -> DriftType:
    """``value`` as a :class:`DriftType`; a ValueError names the valid ones otherwise."""
    if isinstance(value, DriftType):
        return value
    if isinstance(value, str):
        try:
            return DriftType(value)
        except ValueError:
            pass
    raise ValueError(f"unknown drift type {value!r}; choose one of {', '.join(DRIFT_TYPES)}")


def check_block_name(name: str) -> str:
    """``name`` unchanged if it is a block name; a ValueError names the valid ones otherwise."""
    if not isinstance(name, str) or name not in BLOCK_NAMES:
        raise ValueError(f"unknown block {name!r}; choose one of {', '.join(BLOCK_NAMES)}")
    return name


@dataclass(frozen=True)
class BlockMapping:
    """Which block is fine-tuned for each drift type. The defaults are the paper's."""

    input: str = "block1"
    feature: str = "block3"
    output: str = "fc"

    def __post_init__(self) -> None:
        for drift in DriftType:
            block = getattr(self, drift.value)
            if not isinstance(block, str) or block not in BLOCK_NAMES:
                raise ValueError(
                    f"drift type {drift.value!r} maps to unknown block {block!r}; "
                    f"choose one of {', '.join(BLOCK_NAMES)}"
                )

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, str]) -> BlockMapping:
        """Override some or all of the paper's choices, e.g. ``{"feature": "block2"}``.

        Keys must be drift types and values block names; anything else is a ValueError.
        """
        overrides: dict[str, str] = {}
        for key, block in mapping.items():
            drift = parse_drift_type(key)
            overrides[drift.value] = check_block_name(block)
        return cls(**overrides)

    def block_for(self, drift: DriftType | str) -> str:
        """The block that is fine-tuned for ``drift``."""
        return str(getattr(self, parse_drift_type(drift).value))

    def to_dict(self) -> dict[str, str]:
        """Drift type → block name, as plain strings."""
        return asdict(self)


#: The paper's mapping: input → block1, feature → block3, output → fc.
PAPER_MAPPING = BlockMapping()


def _as_mapping(mapping: BlockMapping | Mapping[str, str] | None) -> BlockMapping:
    if mapping is None:
        return PAPER_MAPPING
    if isinstance(mapping, BlockMapping):
        return mapping
    return BlockMapping.from_mapping(mapping)


def block_for(drift: DriftType | str, mapping: BlockMapping | Mapping[str, str] | None = None) -> str:
    """The block fine-tuned for ``drift`` under ``mapping`` (the paper's when None).

    A plain mapping may override only some drift types; the others keep the paper's blocks.
    """
    return _as_mapping(mapping).block_for(drift)


def resolve_target(hint: DriftType | str, mapping: BlockMapping | Mapping[str, str] | None = None) -> str:
    """The block a job trains, from a drift-type hint or an explicit block name.

    ``"input"`` / ``"feature"`` / ``"output"`` go through ``mapping``; a block name (``"block1"``,
    ``"block2"``, ``"block3"``, ``"fc"``, ``"full"``, ``"bn"``) is returned as is. Anything else is
    a ValueError that lists both kinds of valid hint.
    """
    resolved = _as_mapping(mapping)
    if isinstance(hint, DriftType) or hint in DRIFT_TYPES:
        return resolved.block_for(hint)
    if isinstance(hint, str) and hint in BLOCK_NAMES:
        return hint
    raise ValueError(
        f"unknown target {hint!r}: expected a drift type ({', '.join(DRIFT_TYPES)}) "
        f"or a block name ({', '.join(BLOCK_NAMES)})"
    )
