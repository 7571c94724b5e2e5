"""Small generated sample sets for tests: no downloads, no reference files."""

from __future__ import annotations

import torch

from device.samples import Samples


def random_samples(count: int, seed: int, num_classes: int = 10, size: int = 32) -> Samples:
    """Uniform-noise uint8 images with random labels: nothing to learn, only mechanics to exercise."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    y = torch.randint(0, num_classes, (count,), generator=generator)
    return Samples(x, y)


PALETTE = ((220, 30, 30), (30, 220, 30), (30, 30, 220), (220, 220, 30))


def colour_samples(count: int, seed: int) -> Samples:
    """Noisy images whose class (0..3) is their dominant colour: quickly learnable by any block."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(count) % len(PALETTE)
    colours = torch.tensor(PALETTE, dtype=torch.float32)[y].view(count, 3, 1, 1)
    x = colours + 25 * torch.randn(count, 3, 32, 32, generator=generator)
    return Samples(x.clamp(0, 255).to(torch.uint8), y)
