"""Source statistics: what the drift detector compares new samples against.

Two kinds, both plain JSON so they travel in a checkpoint's ``extra`` metadata:

- **BatchNorm inputs**: per layer, the per-channel mean and variance of what the layer sees. For a
  model trained on the source data the running buffers already hold them, which is all the paper's
  released checkpoint offers (``samples == 0``); computed on held-out source images they are exact
  for the final weights.
- **Pixels**: per-image features (channel means, channel contrast, high-frequency energy,
  saturation) summarised by their mean and spread across source images, so that a shift can be
  read as an effect size that does not depend on how many new samples there are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from device.model import ResNet26
from device.samples import Samples

#: Key of the source statistics in a checkpoint's ``extra`` metadata.
CHECKPOINT_KEY = "source_statistics"
#: Version of the JSON layout written by :meth:`SourceStatistics.to_dict`.
FORMAT_VERSION = 1
#: Images that source statistics are computed on at most (a seeded random subset beyond that).
DEFAULT_MAX_SAMPLES = 2048
#: Names of the per-image pixel features, in the order :func:`pixel_features` returns them.
PIXEL_FEATURES: tuple[str, ...] = (
    "mean_r", "mean_g", "mean_b",
    "contrast_r", "contrast_g", "contrast_b",
    "log_hf_energy",
    "log_sharpness",
    "saturation",
)
# Keeps the logarithm of the high-frequency energy finite on flat images (units: squared [0, 1] steps).
_HF_FLOOR = 1e-6

BNStats = dict[str, tuple[list[float], list[float]]]


@dataclass(frozen=True)
class SourceStatistics:
    """What the detector compares new samples against, stored with each model version (JSON-able).

    ``bn`` maps a BatchNorm layer's name to the (mean, variance) per channel of its input at the
    source. ``pixel`` holds ``{"features": [...], "mean": [...], "std": [...]}``: the mean and the
    spread across source images of each per-image pixel feature (see :data:`PIXEL_FEATURES`), or
    None when unknown (the paper's checkpoint). ``accuracy`` is the source-level accuracy (0..1)
    when known; ``samples`` how many images the statistics were computed on (0: BN buffers only).
    """

    bn: BNStats
    pixel: dict[str, Any] | None
    accuracy: float | None
    samples: int

    def to_dict(self) -> dict[str, Any]:
        """A plain-JSON form (floats rounded to 6 significant digits to keep checkpoints small)."""
        return {
            "version": FORMAT_VERSION,
            "bn": {name: [_rounded(mean), _rounded(var)] for name, (mean, var) in self.bn.items()},
            "pixel": None if self.pixel is None else {
                "features": list(self.pixel["features"]),
                "mean": _rounded(self.pixel["mean"]),
                "std": _rounded(self.pixel["std"]),
            },
            "accuracy": self.accuracy,
            "samples": self.samples,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SourceStatistics:
        """Inverse of :meth:`to_dict`; a ValueError says what is malformed."""
        version = data.get("version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(f"source statistics version {version} is not supported")
        try:
            bn = {
                str(name): ([float(v) for v in pair[0]], [float(v) for v in pair[1]])
                for name, pair in dict(data["bn"]).items()
            }
            pixel_data = data.get("pixel")
            pixel = None if pixel_data is None else {
                "features": [str(f) for f in pixel_data["features"]],
                "mean": [float(v) for v in pixel_data["mean"]],
                "std": [float(v) for v in pixel_data["std"]],
            }
            accuracy = None if data.get("accuracy") is None else float(data["accuracy"])
            samples = int(data.get("samples", 0))
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"malformed source statistics: {exc!r}") from exc
        for name, (mean, var) in bn.items():
            if len(mean) != len(var):
                raise ValueError(f"source statistics of {name}: {len(mean)} means but {len(var)} variances")
        if pixel is not None and not len(pixel["features"]) == len(pixel["mean"]) == len(pixel["std"]):
            raise ValueError("source pixel statistics: features, mean and std differ in length")
        return cls(bn=bn, pixel=pixel, accuracy=accuracy, samples=samples)

    @classmethod
    def from_model(
        cls,
        model: ResNet26,
        samples: Samples | None = None,
        accuracy: float | None = None,
        max_samples: int = DEFAULT_MAX_SAMPLES,
    ) -> SourceStatistics:
        """Statistics of ``model``'s source: from ``samples`` (source images) when given, else from
        its BatchNorm running buffers alone (then ``pixel`` is None and ``samples`` 0)."""
        if samples is None or len(samples) == 0:
            return cls(bn=buffer_statistics(model), pixel=None, accuracy=accuracy, samples=0)
        if len(samples) > max_samples:
            generator = torch.Generator().manual_seed(0)
            samples = samples.subset(torch.randperm(len(samples), generator=generator)[:max_samples])
        images = samples.images()
        bn = {name: (mean.tolist(), var.tolist()) for name, (mean, var) in batchnorm_input_statistics(model, images).items()}
        features = pixel_features(images)
        pixel = {
            "features": list(PIXEL_FEATURES),
            "mean": features.mean(0).tolist(),
            "std": features.std(0).tolist(),
        }
        return cls(bn=bn, pixel=pixel, accuracy=accuracy, samples=len(samples))


def source_statistics_of(checkpoint_extra: Mapping[str, Any] | None, model: ResNet26) -> SourceStatistics:
    """The statistics stored in a checkpoint's ``extra`` under :data:`CHECKPOINT_KEY`; without
    them (or if they do not fit the model), those of ``model``'s BatchNorm buffers."""
    stored = (checkpoint_extra or {}).get(CHECKPOINT_KEY)
    if stored is not None:
        try:
            statistics = SourceStatistics.from_dict(stored)
        except ValueError:
            statistics = None
        if statistics is not None and _fits(statistics, model):
            return statistics
    accuracy = (checkpoint_extra or {}).get("val_accuracy")
    return SourceStatistics.from_model(model, accuracy=float(accuracy) if isinstance(accuracy, (int, float)) else None)


def _fits(statistics: SourceStatistics, model: ResNet26) -> bool:
    layers = dict(named_batchnorm_layers(model))
    return set(statistics.bn) == set(layers) and all(
        len(statistics.bn[name][0]) == layer.num_features for name, layer in layers.items()
    )


def named_batchnorm_layers(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """Every BatchNorm layer of ``model`` with its module name, in forward (definition) order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def buffer_statistics(model: nn.Module) -> BNStats:
    """(running mean, running variance) of every BatchNorm layer, as lists."""
    out: BNStats = {}
    for name, layer in named_batchnorm_layers(model):
        if layer.running_mean is None or layer.running_var is None:
            raise ValueError(f"BatchNorm layer {name} tracks no running statistics")
        out[name] = (layer.running_mean.tolist(), layer.running_var.tolist())
    return out


def batchnorm_input_statistics(
    model: ResNet26, images: Tensor, batch_size: int = 256
) -> dict[str, tuple[Tensor, Tensor]]:
    """Per BatchNorm layer, the per-channel mean and (biased) variance of its input over
    ``images`` (float [0, 1]), with the model in eval mode, as it runs at inference."""
    return observe(model, images, batch_size)[0]


def observe(
    model: ResNet26, images: Tensor, batch_size: int = 256
) -> tuple[dict[str, tuple[Tensor, Tensor]], Tensor]:
    """One eval-mode forward pass over ``images``: the BatchNorm input statistics (as
    :func:`batchnorm_input_statistics`) and the logits (N, classes), for the price of one."""
    layers = named_batchnorm_layers(model)
    sums: dict[str, list[Tensor]] = {}
    count: dict[str, int] = {name: 0 for name, _ in layers}

    def hook_for(name: str):
        def hook(_: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = args[0].detach()
            n = x.numel() // x.shape[1]
            # The fused BatchNorm kernel computes the batch moments about twice as fast as var_mean
            # on a CPU; with momentum 1 its "running" buffers are exactly this batch's (unbiased) moments.
            mean = torch.zeros(x.shape[1], dtype=x.dtype)
            var = torch.ones(x.shape[1], dtype=x.dtype)
            F.batch_norm(x, mean, var, training=True, momentum=1.0, eps=1e-5)
            var = var * ((n - 1) / n) if n > 1 else var.zero_()
            # Per-batch moments in float32, accumulated in float64 (Chan et al. would be overkill).
            s1, s2 = mean.double() * n, (var.double() + mean.double() ** 2) * n
            if name in sums:
                sums[name][0] += s1
                sums[name][1] += s2
            else:
                sums[name] = [s1, s2]
            count[name] += n
        return hook

    handles = [layer.register_forward_pre_hook(hook_for(name)) for name, layer in layers]
    was_training = model.training
    model.eval()
    logits = []
    try:
        with torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                logits.append(model(images[start : start + batch_size]))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    out = {}
    for name, _ in layers:
        s1, s2 = sums[name]
        mean = s1 / count[name]
        var = (s2 / count[name] - mean * mean).clamp_min(0.0)
        out[name] = (mean.float(), var.float())
    return out, torch.cat(logits) if logits else torch.empty(0, model.config.num_classes)


def pixel_features(images: Tensor) -> Tensor:
    """Per-image pixel features (N, len(PIXEL_FEATURES)) of float [0, 1] RGB images (N, 3, H, W).

    Channel means (light, colour cast), channel standard deviations (contrast), the logarithm of
    the mean squared difference between neighbouring pixels (high-frequency energy: noise raises
    it, blur and pixelation lower it), the logarithm of its ratio to the same at a distance of two
    pixels (sharpness: blur and pixelation lower it, noise raises it, and it depends far less on
    what the image shows than the energy itself) and the mean saturation (max − min over
    channels). Images with other than three channels get the first channel's values repeated.
    """
    x = images.double()
    if x.shape[1] != 3:
        x = x[:, :1].expand(-1, 3, -1, -1)
    flat = x.flatten(2)
    means = flat.mean(2)
    stds = flat.std(2, unbiased=False)
    near = _difference_energy(x, 1)
    far = _difference_energy(x, 2)
    log_hf = torch.log(near + _HF_FLOOR)
    log_sharpness = log_hf - torch.log(far + _HF_FLOOR)
    saturation = (x.amax(1) - x.amin(1)).flatten(1).mean(1)
    return torch.cat([means, stds, log_hf[:, None], log_sharpness[:, None], saturation[:, None]], dim=1).float()


def _difference_energy(x: Tensor, lag: int) -> Tensor:
    """Mean squared difference between pixels ``lag`` apart, horizontally and vertically, per image."""
    dx = (x[..., :, lag:] - x[..., :, :-lag]).pow(2).mean((1, 2, 3))
    dy = (x[..., lag:, :] - x[..., :-lag, :]).pow(2).mean((1, 2, 3))
    return 0.5 * (dx + dy)


def _rounded(values: list[float]) -> list[float]:
    return [float(f"{v:.6g}") if math.isfinite(v) else v for v in values]
