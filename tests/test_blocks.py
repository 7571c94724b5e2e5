from __future__ import annotations

import pytest

from device.blocks import BLOCK_NAMES, block_parameter_names, count_block_parameters, get_block
from device.model import ResNet26, count_parameters


@pytest.mark.parametrize(
    "block, expected",
    [("block1", 19_120), ("block2", 69_600), ("block3", 277_440), ("fc", 650), ("full", 366_938), ("bn", 0)],
)
def test_block_parameter_counts_match_the_paper(block: str, expected: int) -> None:
    assert count_block_parameters(ResNet26(), block) == expected


def test_single_blocks_partition_the_model_apart_from_the_final_bn() -> None:
    model = ResNet26()
    owned: list[str] = []
    for block in ("block1", "block2", "block3", "fc"):
        owned += block_parameter_names(model, block)
    assert len(owned) == len(set(owned)), "blocks overlap"
    leftover = {name for name, _ in model.named_parameters()} - set(owned)
    assert leftover == {"bn.weight", "bn.bias"}
    assert set(block_parameter_names(model, "full")) == {name for name, _ in model.named_parameters()}
    assert count_parameters(model) == count_block_parameters(model, "full")


def test_blocks_know_what_lies_in_front_of_them() -> None:
    assert get_block("block1").prefix_stages == ()
    assert get_block("block2").prefix_stages == ("stem", "layer1")
    assert get_block("block3").prefix_stages == ("stem", "layer1", "layer2")
    assert get_block("fc").prefix_stages == ("stem", "layer1", "layer2", "layer3", "head")
    assert get_block("block3").suffix_stages == ("head", "fc")
    assert not get_block("bn").trains_weights


def test_unknown_block_names_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="block1, block2, block3, fc, full, bn"):
        get_block("layer4")
    assert BLOCK_NAMES == ("block1", "block2", "block3", "fc", "full", "bn")
