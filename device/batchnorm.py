"""Re-estimating BatchNorm statistics on new data with forward passes only (the ``bn`` strategy)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Self

import torch
from torch import Tensor, nn
from torch.nn import functional as F

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


#: Samples of each training batch from which :class:`RunningStatisticsTracker` updates statistics.
TRACKING_SAMPLES = 32


class RunningStatisticsTracker:
    """Keeps eval-mode BatchNorm layers' running statistics following the data they see in training.

    Before each forward pass made with gradients enabled (a training step, not a validation pass),
    every tracked layer's running mean and variance move towards those of (up to 32 samples of)
    the batch, by the layer's momentum, as train mode would do; the layer still normalises with its running statistics, as
    in eval mode. Nothing back-propagates through batch statistics, which on a CPU costs about as
    much as the convolutions' own backward pass. Use as a context manager; hooks go on exit.
    """

    def __init__(self, layers: Iterable[nn.modules.batchnorm._BatchNorm]) -> None:
        self.layers = list(layers)
        self._handles: list[Any] = []

    def __enter__(self) -> Self:
        self._handles = [layer.register_forward_pre_hook(self._update) for layer in self.layers]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @staticmethod
    def _update(layer: nn.modules.batchnorm._BatchNorm, args: tuple[Tensor, ...]) -> None:
        if not torch.is_grad_enabled() or layer.training or layer.running_mean is None:
            return
        x = args[0]
        if x.numel() // x.shape[1] < 2:
            return
        with torch.no_grad():
            # The fused kernel updates the running statistics in place, twice as fast as var_mean
            # over (N, H, W) on a CPU; its normalised output is discarded. At most
            # TRACKING_SAMPLES of the batch are used: the momentum averages over many batches.
            F.batch_norm(x.detach()[:TRACKING_SAMPLES], layer.running_mean, layer.running_var, training=True,
                         momentum=0.1 if layer.momentum is None else layer.momentum, eps=layer.eps)
            if layer.num_batches_tracked is not None:
                layer.num_batches_tracked.add_(1)
