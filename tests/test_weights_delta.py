"""Delta files: only what differs from the base is written, and the model they give predicts as the
full one does while sharing the base's unchanged arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from device.model import ModelConfig, ResNet26
from device.numpy_model import NumpyResNet26, WeightsError
from device.weights_delta import DELTA_SUFFIX, changed_arrays, is_delta_path, load_delta, save_delta


def numpy_state(model: ResNet26) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@pytest.fixture
def base() -> ResNet26:
    torch.manual_seed(0)
    return ResNet26(ModelConfig(num_classes=5)).eval()


def test_a_delta_holds_only_the_changed_arrays_and_rebuilds_the_model(base: ResNet26, tmp_path: Path) -> None:
    base_state = numpy_state(base)
    tuned = numpy_state(base)
    tuned["fc.weight"] = tuned["fc.weight"] + 0.5
    tuned["layer1.0.bn1.running_mean"] = tuned["layer1.0.bn1.running_mean"] + 0.1
    path = tmp_path / f"job-3{DELTA_SUFFIX}"

    written = save_delta(path, base.config, tuned, base_state, {"job_id": 3, "note": "fc"})

    assert sorted(written.arrays) == ["fc.weight", "layer1.0.bn1.running_mean"] and is_delta_path(path)
    full_bytes = sum(a.nbytes for a in base_state.values())
    assert path.stat().st_size < 0.1 * full_bytes  # the file is about its arrays, not the model
    loaded = load_delta(path)
    assert loaded.extra == {"job_id": 3, "note": "fc"} and loaded.config == base.config
    for name, array in loaded.apply(base_state).items():
        np.testing.assert_array_equal(array, tuned[name])


def test_the_served_model_shares_the_bases_unchanged_convolutions(base: ResNet26, tmp_path: Path) -> None:
    base_state = numpy_state(base)
    tuned = numpy_state(base)
    tuned["layer3.1.conv2.weight"] = tuned["layer3.1.conv2.weight"] * 0.9
    served_base = NumpyResNet26(base.config, base_state)
    delta = save_delta(tmp_path / f"a{DELTA_SUFFIX}", base.config, tuned, base_state)

    model = delta.model(served_base, base_state)

    full = NumpyResNet26(base.config, tuned)
    x = np.random.default_rng(0).random((4, *base.config.input_shape), dtype=np.float32)
    np.testing.assert_allclose(model.logits(x), full.logits(x), atol=1e-5)
    # Every convolution but the changed one is the base's own array, not a copy.
    shared = [name for name in model._columns if model._columns[name] is served_base._columns[name]]
    assert set(model._columns) - set(shared) == {"layer3.1.conv2.weight"}


def test_a_delta_for_another_base_is_refused(base: ResNet26, tmp_path: Path) -> None:
    other = numpy_state(ResNet26(ModelConfig(num_classes=7)))
    delta = save_delta(tmp_path / f"b{DELTA_SUFFIX}", ModelConfig(num_classes=7), other, {})
    with pytest.raises(WeightsError, match="another configuration"):
        delta.model(NumpyResNet26(base.config, numpy_state(base)), numpy_state(base))
    with pytest.raises(WeightsError, match="shape"):
        delta.apply(numpy_state(base))
    (tmp_path / f"c{DELTA_SUFFIX}").write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="not a readable delta file"):
        load_delta(tmp_path / f"c{DELTA_SUFFIX}")


def test_changed_arrays_compares_bits(base: ResNet26) -> None:
    state = numpy_state(base)
    same = {k: v.copy() for k, v in state.items()}
    assert changed_arrays(same, state) == {}
    same["bn.bias"][0] = np.nextafter(same["bn.bias"][0], np.float32(1))
    assert list(changed_arrays(same, state)) == ["bn.bias"]
