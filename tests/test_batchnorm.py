from __future__ import annotations

import torch
from torch import nn

from device.batchnorm import RunningStatisticsTracker, recalibrate_batchnorm
from device.model import ResNet26
from tests.factories import colour_samples


def test_tracker_follows_training_batches_but_not_validation_and_normalises_in_eval_mode() -> None:
    layer = nn.BatchNorm2d(3).eval()
    x = torch.randn(16, 3, 4, 4) * 3 + 5
    with RunningStatisticsTracker([layer]):
        with torch.no_grad():
            layer(x)
        assert torch.equal(layer.running_mean, torch.zeros(3)), "validation passes must not move statistics"
        out = layer(x.requires_grad_())
        assert torch.allclose(layer.running_mean, 0.1 * x.detach().mean(dim=(0, 2, 3)), atol=1e-5)
        assert int(layer.num_batches_tracked) == 1
        # Normalised with the (just updated) running statistics, as in eval mode: no batch statistics.
        expected = (x.detach() - layer.running_mean.view(1, 3, 1, 1)) / torch.sqrt(layer.running_var.view(1, 3, 1, 1) + layer.eps)
        assert torch.allclose(out.detach(), expected, atol=1e-5)
    layer(x)
    assert int(layer.num_batches_tracked) == 1, "hooks are removed on exit"


def test_recalibration_replaces_statistics_with_the_data_s() -> None:
    torch.manual_seed(0)
    model = ResNet26().eval()
    samples = colour_samples(64, seed=0)
    batches = recalibrate_batchnorm(model, samples, batch_size=16)
    assert batches == 4
    first = model.layer1[0].bn1
    stem_out = model.forward_stages(samples.images(), 0, 1).detach()
    assert torch.allclose(first.running_mean, stem_out.mean(dim=(0, 2, 3)), atol=1e-4)
    assert first.momentum == 0.1 and not model.training, "momentum and the caller's mode are restored"
