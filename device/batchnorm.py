"""Re-estimating BatchNorm statistics on new data with forward passes only (the ``bn`` strategy)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from device.samples import Samples


def batchnorm_layers(modules: Iterable[nn.Module]) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer inside ``modules``."""
    return [m for root in modules for m in root.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class StopRequested(Exception):
    """Raised inside the learner when the caller's ``should_stop`` answers True."""


def recalibrate_batchnorm(
    model: nn.Module,
    samples: Samples,
    batch_size: int = 128,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """Replace every BatchNorm layer's running mean and variance with estimates on ``samples``.

    Runs the whole model forward in train mode under ``no_grad`` with cumulative averaging
    (``momentum=None``), so every batch counts equally and the result does not depend on the
    layer's previous statistics. Affine weights are untouched. Returns the number of batches seen.
    Raises :class:`StopRequested` (leaving statistics partly updated) if ``should_stop`` says so.
    """
    layers = batchnorm_layers([model])
    saved_momentum = [(layer, layer.momentum) for layer in layers]
    was_training = model.training
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
    model.train()
    batches = 0
    try:
        with torch.no_grad():
            for index in torch.arange(len(samples)).split(batch_size):
                if should_stop is not None and should_stop():
                    raise StopRequested
                model(samples.images(index))
                batches += 1
    finally:
        for layer, momentum in saved_momentum:
            layer.momentum = momentum
        model.train(was_training)
    return batches
