"""Drift types and the drift → block mapping."""

from __future__ import annotations

import dataclasses

import pytest

from drift.types import (
    BLOCK_NAMES,
    DRIFT_TYPES,
    PAPER_MAPPING,
    BlockMapping,
    DriftType,
    block_for,
    parse_drift_type,
    resolve_target,
)


def test_drift_types_are_strings_with_the_papers_names() -> None:
    assert [d.value for d in DriftType] == ["input", "feature", "output"]
    assert DRIFT_TYPES == ("input", "feature", "output")
    assert DriftType("feature") is DriftType.feature
    assert DriftType.output == "output"
    assert str(DriftType.input) == "input"
    assert f"{DriftType.input}" == "input"


def test_paper_mapping() -> None:
    assert block_for("input") == "block1"
    assert block_for(DriftType.feature) == "block3"
    assert block_for("output") == "fc"
    assert PAPER_MAPPING.to_dict() == {"input": "block1", "feature": "block3", "output": "fc"}


def test_a_partial_override_keeps_the_other_defaults() -> None:
    mapping = {"feature": "block2"}
    assert block_for("feature", mapping) == "block2"
    assert block_for("input", mapping) == "block1"
    assert block_for("output", mapping) == "fc"
    assert BlockMapping.from_mapping(mapping) == BlockMapping(feature="block2")


def test_mapping_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        PAPER_MAPPING.input = "full"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"input": "block4"}, "unknown block 'block4'"),
        ({"colour": "block1"}, "unknown drift type 'colour'"),
        ({"output": 3}, "unknown block 3"),
    ],
)
def test_bad_mappings_are_rejected(mapping: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        block_for("input", mapping)


def test_bad_block_in_the_dataclass_is_rejected() -> None:
    with pytest.raises(ValueError, match="'output' maps to unknown block 'head'"):
        BlockMapping(output="head")


def test_unknown_drift_type_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="input, feature, output"):
        parse_drift_type("Input")
    with pytest.raises(ValueError, match="unknown drift type"):
        block_for("label")


def test_resolve_target_accepts_drift_types_and_block_names() -> None:
    assert resolve_target("input") == "block1"
    assert resolve_target(DriftType.output) == "fc"
    assert resolve_target("feature", BlockMapping(feature="full")) == "full"
    for name in BLOCK_NAMES:
        assert resolve_target(name) == name
    # An explicit block is not remapped.
    assert resolve_target("block1", {"input": "block2"}) == "block1"


@pytest.mark.parametrize("hint", ["", "layer3", "FULL", None, 1])
def test_resolve_target_rejects_everything_else(hint: object) -> None:
    with pytest.raises(ValueError, match="expected a drift type .* or a block name"):
        resolve_target(hint)  # type: ignore[arg-type]


def test_block_names_agree_with_the_learner() -> None:
    blocks = pytest.importorskip("device.blocks")
    assert BLOCK_NAMES == blocks.BLOCK_NAMES
