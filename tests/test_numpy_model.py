"""The numpy inference path gives the torch model's predictions, and its weights files are safe."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from device.checkpoint import save_checkpoint
from device.inference import predict
from device.model import ModelConfig, ResNet26
from device.numpy_model import NumpyResNet26, WeightsError, load_weights, save_weights, weights_path_for
from device.shipped import SHIPPED_BASE_WEIGHTS, load_shipped_base_model
from device.weights_export import convert_checkpoint, export_weights
from device.weights_export import main as export_main


def trained_looking_model(config: ModelConfig, seed: int = 0) -> ResNet26:
    """A model whose BatchNorm layers do something: random affine parameters and statistics."""
    torch.manual_seed(seed)
    model = ResNet26(config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def numpy_twin(model: ResNet26) -> NumpyResNet26:
    return NumpyResNet26(model.config, {k: v.numpy() for k, v in model.state_dict().items()})


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(),
        ModelConfig(num_classes=4, in_channels=1, mean=(0.4,), std=(0.3,)),
        ModelConfig(num_classes=7, width=2),
        ModelConfig(num_classes=5, input_size=64),
    ],
    ids=["default", "grey", "wide", "64px"],
)
def test_numpy_forward_matches_torch(config: ModelConfig) -> None:
    model = trained_looking_model(config)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (19, *config.input_shape), dtype=np.uint8)  # not a multiple of the chunk
    expected = predict(model, images)
    got = numpy_twin(model).predict(images)
    np.testing.assert_allclose(got.probabilities, expected.probabilities, atol=1e-5)
    assert np.array_equal(got.classes, expected.classes)

    floats = rng.random((3, *config.input_shape), dtype=np.float32)
    np.testing.assert_allclose(numpy_twin(model).predict(floats).probabilities, predict(model, floats).probabilities,
                               atol=1e-5)


def test_an_empty_batch_and_a_wrong_shape() -> None:
    twin = numpy_twin(trained_looking_model(ModelConfig()))
    assert twin.predict(np.zeros((0, 3, 32, 32), np.uint8)).probabilities.shape == (0, 10)
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\)"):
        twin.predict(np.zeros((2, 3, 28, 28), np.uint8))


def test_weights_files_round_trip(tmp_path: Path) -> None:
    model = trained_looking_model(ModelConfig(num_classes=4), seed=3)
    path = export_weights(model, tmp_path / "m.npz")
    loaded = load_weights(path)
    assert loaded.config == model.config
    images = np.random.default_rng(2).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    np.testing.assert_allclose(loaded.predict(images).probabilities, predict(model, images).probabilities, atol=1e-5)
    assert path.stat().st_mode & 0o777 == 0o644
    assert not list(tmp_path.glob(".partial-*"))


def test_bad_weights_files_are_named_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(WeightsError, match="not a readable weights file"):
        load_weights(garbage)

    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.zeros(3))
    with pytest.raises(WeightsError, match="not a tbftd-weights file"):
        load_weights(plain)

    model = trained_looking_model(ModelConfig())
    state = {k: v.numpy() for k, v in model.state_dict().items() if k != "layer2.1.conv1.weight"}
    save_weights(tmp_path / "partial.npz", model.config, state)
    with pytest.raises(WeightsError, match="layer2.1.conv1.weight"):
        load_weights(tmp_path / "partial.npz")

    state = {k: v.numpy() for k, v in model.state_dict().items()}
    save_weights(tmp_path / "other.npz", ModelConfig(num_classes=3), state)
    with pytest.raises(WeightsError, match="fc.weight"):
        load_weights(tmp_path / "other.npz")


def test_weights_files_hold_no_pickles(tmp_path: Path) -> None:
    path = export_weights(trained_looking_model(ModelConfig()), tmp_path / "m.npz")
    with zipfile.ZipFile(path) as archive, archive.open("config.npy") as member:
        header = member.read(128)
    assert b"'descr': '<U" in header  # a string array, loadable with allow_pickle=False


def test_the_shipped_weights_are_the_shipped_checkpoint() -> None:
    checkpoint = load_shipped_base_model()
    served = load_weights(SHIPPED_BASE_WEIGHTS)
    assert served.config == checkpoint.config
    images = np.random.default_rng(4).integers(0, 256, (8, *checkpoint.config.input_shape), dtype=np.uint8)
    np.testing.assert_allclose(served.predict(images).probabilities, predict(checkpoint.model, images).probabilities,
                               atol=1e-5)


def test_conversion_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = trained_looking_model(ModelConfig(num_classes=4))
    checkpoint = save_checkpoint(tmp_path / "m.pt", model)
    assert export_main([str(checkpoint), str(weights_path_for(checkpoint))]) == 0
    assert load_weights(tmp_path / "m.npz").config == model.config
    (tmp_path / "bad.pt").write_text("nonsense")
    assert export_main([str(tmp_path / "bad.pt"), str(tmp_path / "bad.npz")]) == 2
    assert "not a loadable PyTorch checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "bad.npz").exists()
    assert convert_checkpoint(checkpoint, tmp_path / "again.npz").exists()


def test_the_daemon_process_does_not_import_torch() -> None:
    # What the API process imports to serve; torch would add about 200 MB of resident memory.
    code = ("import sys, service.cli, service.app, service.serve, service.jobs, service.model_registry; "
            "service.cli.build_parser(); print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:5])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
