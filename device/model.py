"""The pre-activation ResNet-26 of the TBFT paper (its configuration is in :mod:`device.config`).

The module names mirror the paper's released checkpoint (``conv1``, ``layer{1,2,3}.{0..3}.*``, ``bn``,
``fc``) so that its state dict loads strictly. Input normalisation lives in the model as
non-persistent buffers: it travels with the configuration, not with the state dict.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from device.config import POOL_KERNEL, ModelConfig

__all__ = ["STAGES", "ModelConfig", "PreActBlock", "ResNet26", "count_parameters"]

#: The network's stages in forward order. Blocks (see ``device.blocks``) are unions of stages.
STAGES: tuple[str, ...] = ("stem", "layer1", "layer2", "layer3", "head", "fc")


class PreActBlock(nn.Module):
    """Pre-activation basic block: bn1 → ReLU → conv1 → bn2 → ReLU → conv2, plus the shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.stride = stride
        self.extra_channels = planes - in_planes

    def shortcut(self, x: Tensor) -> Tensor:
        """Parameter-free shortcut: average-pool by the stride, then zero-pad the new channels."""
        if self.stride != 1:
            x = F.avg_pool2d(x, self.stride)
        if self.extra_channels > 0:
            # Zero channels appended at the end, as the paper's concatenation of zero copies does.
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return x

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + self.shortcut(x)


class ResNet26(nn.Module):
    """Pre-activation ResNet-26 (CIFAR style): 366,938 parameters at 10 classes, width 1."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        c = self.config
        widths = (16 * c.width, 32 * c.width, 64 * c.width)
        self.register_buffer("input_mean", torch.tensor(c.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(c.std).view(1, -1, 1, 1), persistent=False)
        self.conv1 = nn.Conv2d(c.in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.layer1 = self._make_layer(widths[0], widths[0], stride=1)
        self.layer2 = self._make_layer(widths[0], widths[1], stride=2)
        self.layer3 = self._make_layer(widths[1], widths[2], stride=2)
        self.bn = nn.BatchNorm2d(widths[2])
        self.fc = nn.Linear(c.fc_in_features, c.num_classes)
        self._init_weights()

    @staticmethod
    def _make_layer(in_planes: int, planes: int, stride: int, blocks: int = 4) -> nn.Sequential:
        layers = [PreActBlock(in_planes, planes, stride)]
        layers += [PreActBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def stage_modules(self, stage: str) -> list[nn.Module]:
        """The modules that make up one of :data:`STAGES`."""
        modules: dict[str, list[nn.Module]] = {
            "stem": [self.conv1],
            "layer1": [self.layer1],
            "layer2": [self.layer2],
            "layer3": [self.layer3],
            "head": [self.bn],
            "fc": [self.fc],
        }
        try:
            return modules[stage]
        except KeyError:
            raise ValueError(f"unknown stage {stage!r}; stages are {STAGES}") from None

    def run_stage(self, stage: str, x: Tensor) -> Tensor:
        """Apply one stage. ``stem`` takes raw [0, 1] input; ``head`` returns pooled features."""
        if stage == "stem":
            return self.conv1((x - self.input_mean) / self.input_std)
        if stage == "layer1":
            return self.layer1(x)
        if stage == "layer2":
            return self.layer2(x)
        if stage == "layer3":
            return self.layer3(x)
        if stage == "head":
            out = F.avg_pool2d(F.relu(self.bn(x)), POOL_KERNEL)
            return out.flatten(1)
        if stage == "fc":
            return self.fc(x)
        raise ValueError(f"unknown stage {stage!r}; stages are {STAGES}")

    def forward_stages(self, x: Tensor, start: int = 0, stop: int = len(STAGES)) -> Tensor:
        """Run ``STAGES[start:stop]`` on ``x`` (the output of stage ``start - 1``, or raw input)."""
        for stage in STAGES[start:stop]:
            x = self.run_stage(stage, x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_stages(x)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable-shaped parameters (BatchNorm buffers excluded)."""
    return sum(p.numel() for p in module.parameters())
