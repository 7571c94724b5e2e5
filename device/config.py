"""The network's configuration: everything needed to rebuild a ResNet-26, without importing torch.

Kept apart from :mod:`device.model` so that the daemon's API process, which serves predictions
with :mod:`device.numpy_model`, can read a model's shape and normalisation without torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

#: Spatial reduction of the stem and the three layers (stride 1, 1, 2, 2) at the head's input.
DOWNSAMPLE = 4
#: The head's average-pool kernel: 8×8 at 32 px, so 128 px input pools to 4×4 (the paper's 1024-input fc).
POOL_KERNEL = 8


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network without guessing.

    ``input_size`` is the side of the square input in pixels; inputs are float tensors in [0, 1]
    of shape ``(N, in_channels, input_size, input_size)`` and are normalised inside the model.
    """

    arch: str = "preact-resnet26"
    num_classes: int = 10
    in_channels: int = 3
    width: int = 1
    input_size: int = 32
    mean: tuple[float, ...] = field(default=(0.5, 0.5, 0.5))
    std: tuple[float, ...] = field(default=(0.5, 0.5, 0.5))

    def __post_init__(self) -> None:
        if self.arch != "preact-resnet26":
            raise ValueError(f"unknown architecture {self.arch!r} (known: 'preact-resnet26')")
        if self.num_classes < 1 or self.in_channels < 1 or self.width < 1:
            raise ValueError("num_classes, in_channels and width must be positive")
        if self.input_size % (DOWNSAMPLE * POOL_KERNEL) != 0:
            raise ValueError(
                f"input_size must be a multiple of {DOWNSAMPLE * POOL_KERNEL} px, got {self.input_size}"
            )
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError("mean and std need one value per input channel")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one sample, channels first."""
        return (self.in_channels, self.input_size, self.input_size)

    @property
    def fc_in_features(self) -> int:
        """Width of the pooled feature vector that ``fc`` reads."""
        pooled_side = self.input_size // DOWNSAMPLE // POOL_KERNEL
        return 64 * self.width * pooled_side * pooled_side

    def to_dict(self) -> dict[str, Any]:
        """A plain-JSON form, as stored in checkpoints."""
        data = asdict(self)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data

    @classmethod
    def from_tensor_shapes(cls, shapes: Mapping[str, tuple[int, ...]]) -> ModelConfig:
        """The configuration a bare ResNet-26 state dict was trained with, read from its tensors'
        shapes: classes from ``fc``'s rows, input channels and width from ``conv1``, and the input
        size from ``fc``'s width (the pooled side is fixed by the head: 32 px pools to 1×1 and a
        64-wide ``fc``, 128 px to 4×4 and 1024). Normalisation is not in the tensors: the paper's
        mean and std of 0.5. A ValueError names the tensor that does not fit."""
        for key, rank in (("conv1.weight", 4), ("fc.weight", 2)):
            if key not in shapes or len(shapes[key]) != rank:
                raise ValueError(f"no {rank}-d {key!r} tensor: not a pre-activation ResNet-26 state dict")
        stem_out, in_channels = shapes["conv1.weight"][:2]
        num_classes, fc_in = shapes["fc.weight"]
        if stem_out % 16 != 0:
            raise ValueError(f"conv1.weight has {stem_out} output channels; a ResNet-26 stem has 16 per unit of width")
        width = stem_out // 16
        cells, rest = divmod(fc_in, 64 * width)
        side = math.isqrt(cells)
        if rest or side * side != cells or side == 0:
            raise ValueError(f"fc.weight reads {fc_in} features, not {64 * width} channels pooled over a square")
        return cls(num_classes=num_classes, in_channels=in_channels, width=width,
                   input_size=side * DOWNSAMPLE * POOL_KERNEL,
                   mean=(0.5,) * in_channels, std=(0.5,) * in_channels)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, not silently dropped."""
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model configuration keys: {sorted(unknown)}")
        values = dict(data)
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)
