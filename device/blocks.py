"""The block registry: which part of the network a job trains, and what lies in front of it.

A block is a contiguous run of the model's :data:`~device.model.STAGES`. Everything before it (the
prefix) is frozen during a job, so its outputs can be computed once and cached; everything after it
(the suffix) is frozen too but must be run every step, because gradients flow back through it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from device.model import STAGES, ResNet26

#: All strategies a job can run, in front-to-rear order, then the two whole-model ones.
BLOCK_NAMES: tuple[str, ...] = ("block1", "block2", "block3", "fc", "full", "bn")


@dataclass(frozen=True)
class BlockSpec:
    """One trainable unit: stages ``STAGES[start:stop]``.

    ``trains_weights`` is False for ``bn``, which only re-estimates BatchNorm statistics with
    forward passes and never back-propagates.
    """

    name: str
    start: int
    stop: int
    trains_weights: bool
    description: str

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages this block trains."""
        return STAGES[self.start : self.stop]

    @property
    def prefix_stages(self) -> tuple[str, ...]:
        """The frozen stages in front of the block (their outputs are cacheable)."""
        return STAGES[: self.start]

    @property
    def suffix_stages(self) -> tuple[str, ...]:
        """The frozen stages behind the block (run every step; gradients pass through)."""
        return STAGES[self.stop :]


_BLOCKS: dict[str, BlockSpec] = {
    spec.name: spec
    for spec in (
        BlockSpec("block1", 0, 2, True, "front: conv1 + layer1 (input-level drift)"),
        BlockSpec("block2", 2, 3, True, "layer2"),
        BlockSpec("block3", 3, 4, True, "middle: layer3 (feature-level drift)"),
        BlockSpec("fc", 5, 6, True, "rear: the classifier (output-level drift)"),
        BlockSpec("full", 0, len(STAGES), True, "everything, the final bn included"),
        BlockSpec("bn", 0, len(STAGES), False, "re-estimate BatchNorm statistics only (forward passes)"),
    )
}


def get_block(name: str) -> BlockSpec:
    """The :class:`BlockSpec` called ``name``; a ValueError lists the valid names otherwise."""
    try:
        return _BLOCKS[name]
    except KeyError:
        raise ValueError(f"unknown block {name!r}; choose one of {', '.join(BLOCK_NAMES)}") from None


def stage_module_list(model: ResNet26, stages: tuple[str, ...]) -> list[nn.Module]:
    """The modules that make up ``stages``, in order."""
    return [module for stage in stages for module in model.stage_modules(stage)]


def block_modules(model: ResNet26, block: str | BlockSpec) -> list[nn.Module]:
    """The modules a block trains (for ``bn``: every module, of which only BatchNorm changes)."""
    spec = get_block(block) if isinstance(block, str) else block
    return stage_module_list(model, spec.stages)


def block_parameter_names(model: ResNet26, block: str | BlockSpec) -> list[str]:
    """Names (state-dict keys) of the parameters a block trains; empty for ``bn``."""
    spec = get_block(block) if isinstance(block, str) else block
    if not spec.trains_weights:
        return []
    owned = {id(p) for module in block_modules(model, spec) for p in module.parameters()}
    return [name for name, p in model.named_parameters() if id(p) in owned]


def block_state_keys(model: ResNet26, block: str | BlockSpec) -> list[str]:
    """State-dict keys (parameters and buffers) that belong to the block's modules."""
    spec = get_block(block) if isinstance(block, str) else block
    owned = {id(t) for module in block_modules(model, spec) for t in (*module.parameters(), *module.buffers())}
    return [name for name, t in model.state_dict(keep_vars=True).items() if id(t) in owned]


def count_block_parameters(model: ResNet26, block: str | BlockSpec) -> int:
    """Number of scalar parameters a block trains."""
    names = set(block_parameter_names(model, block))
    return sum(p.numel() for n, p in model.named_parameters() if n in names)
