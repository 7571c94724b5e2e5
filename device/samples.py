"""Labelled samples in memory, in the layout the learner reads: (N, C, H, W) images and labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Samples:
    """Images (uint8 in 0..255 or float32 in [0, 1]) and int64 labels.

    uint8 is kept as is and converted per batch, so a job's samples take a quarter of the memory.
    """

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if self.x.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(self.x.shape)}")
        if self.x.dtype not in (torch.uint8, torch.float32):
            raise ValueError(f"images must be uint8 or float32, got {self.x.dtype}")
        if self.y.dim() != 1 or self.y.shape[0] != self.x.shape[0]:
            raise ValueError(f"labels must be (N,) with N = {self.x.shape[0]}, got {tuple(self.y.shape)}")
        if self.y.dtype != torch.int64:
            raise ValueError(f"labels must be int64, got {self.y.dtype}")

    @classmethod
    def from_arrays(cls, x: np.ndarray | Tensor, y: np.ndarray | Tensor) -> Samples:
        """Wrap numpy arrays or tensors (labels are converted to int64)."""
        x_t = torch.as_tensor(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
        y_t = torch.as_tensor(np.asarray(y)) if isinstance(y, np.ndarray) else y
        return cls(x_t, y_t.to(torch.int64))

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def images(self, index: Tensor | slice | None = None) -> Tensor:
        """Float32 images in [0, 1] for ``index`` (all when None)."""
        x = self.x if index is None else self.x[index]
        return as_float_images(x)

    def subset(self, index: Tensor) -> Samples:
        """The samples at ``index``."""
        return Samples(self.x[index], self.y[index])


def as_float_images(x: Tensor) -> Tensor:
    """uint8 0..255 → float32 0..1; float32 passes through; other floats become float32."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    return x if x.dtype == torch.float32 else x.to(torch.float32)
