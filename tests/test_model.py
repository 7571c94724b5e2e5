from __future__ import annotations

import pytest
import torch

from device.model import STAGES, ModelConfig, ResNet26, count_parameters


def paper_state_dict_keys() -> set[str]:
    """The key names of the paper's released checkpoint, written out from its documented layout."""
    keys = {"conv1.weight", "fc.weight", "fc.bias"}
    bn_fields = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys |= {f"bn.{f}" for f in bn_fields}
    for layer in (1, 2, 3):
        for block in range(4):
            prefix = f"layer{layer}.{block}"
            keys |= {f"{prefix}.{bn}.{f}" for bn in ("bn1", "bn2") for f in bn_fields}
            keys |= {f"{prefix}.conv1.weight", f"{prefix}.conv2.weight"}
    return keys


def test_parameter_count_matches_the_paper() -> None:
    assert count_parameters(ResNet26()) == 366_938


def test_state_dict_keys_are_the_papers() -> None:
    keys = set(ResNet26().state_dict())
    assert len(keys) == 152
    assert keys == paper_state_dict_keys()


def test_output_shapes_and_stage_sizes() -> None:
    model = ResNet26().eval()
    x = torch.rand(2, 3, 32, 32)
    shapes = []
    out = x
    with torch.no_grad():
        for index in range(len(STAGES)):
            out = model.forward_stages(out, index, index + 1)
            shapes.append(tuple(out.shape[1:]))
    assert shapes == [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8), (64,), (10,)]
    with torch.no_grad():
        assert torch.allclose(model(x), out)


def test_128px_input_uses_the_1024_input_head() -> None:
    model = ResNet26(ModelConfig(num_classes=17, input_size=128)).eval()
    assert model.fc.in_features == 1024
    with torch.no_grad():
        assert model(torch.rand(1, 3, 128, 128)).shape == (1, 17)


def test_width_channels_and_classes_are_configurable() -> None:
    model = ResNet26(ModelConfig(num_classes=4, in_channels=1, width=2, mean=(0.5,), std=(0.25,))).eval()
    assert model.fc.in_features == 128
    with torch.no_grad():
        assert model(torch.rand(3, 1, 32, 32)).shape == (3, 4)


def test_normalisation_is_applied_inside_the_model() -> None:
    torch.manual_seed(0)
    a = ResNet26(ModelConfig(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))).eval()
    b = ResNet26(ModelConfig(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))).eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(a(x), b(x * 2 - 1), atol=1e-5)
        assert not torch.allclose(a(x), b(x), atol=1e-3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_size": 30}, "multiple of 32"),
        ({"mean": (0.5,)}, "one value per input channel"),
        ({"std": (0.5, 0.0, 0.5)}, "positive"),
        ({"arch": "resnet50"}, "unknown architecture"),
    ],
)
def test_invalid_configurations_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


def test_config_round_trips_through_a_dict() -> None:
    config = ModelConfig(num_classes=17, input_size=128, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown model configuration keys"):
        ModelConfig.from_dict({**config.to_dict(), "depth": 50})
