from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from device import checkpoint as checkpoint_module
from device.checkpoint import (
    PARTIAL_PREFIX,
    CheckpointError,
    load_checkpoint,
    remove_partial_files,
    save_checkpoint,
)
from device.model import ModelConfig, ResNet26

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "tbft-resnet26-cifar10.pth"


def test_round_trip_restores_config_weights_and_extra(tmp_path: Path) -> None:
    config = ModelConfig(num_classes=7, mean=(0.4, 0.45, 0.5), std=(0.2, 0.25, 0.3))
    model = ResNet26(config)
    with torch.no_grad():
        model.layer2[0].bn1.running_mean.add_(1.5)
    path = save_checkpoint(tmp_path / "m.pt", model, extra={"dataset": "shapes", "accuracy": 0.9})
    loaded = load_checkpoint(path)
    assert loaded.config == config
    assert loaded.extra == {"dataset": "shapes", "accuracy": 0.9}
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key]), key
    assert torch.allclose(loaded.model.input_std.flatten(), torch.tensor(config.std))


def test_written_checkpoints_are_readable_by_others(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", ResNet26(ModelConfig(num_classes=3)))
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(("classes", "size", "width"), [(10, 32, 1), (17, 128, 1), (5, 64, 2)])
def test_a_bare_state_dict_loads_with_the_architecture_read_from_its_tensors(
    tmp_path: Path, classes: int, size: int, width: int
) -> None:
    config = ModelConfig(num_classes=classes, input_size=size, width=width)
    saved = ResNet26(config)
    path = tmp_path / "paper.pth"
    torch.save(saved.state_dict(), path)
    loaded = load_checkpoint(path)
    assert loaded.config == config
    assert loaded.extra["config_inferred"] == config.to_dict()
    x = torch.rand(2, 3, size, size)
    assert torch.equal(loaded.model(x), saved.eval()(x))
    assert load_checkpoint(path, config=config).extra == {}


def test_a_bare_state_dict_that_is_no_resnet26_says_which_tensor_does_not_fit(tmp_path: Path) -> None:
    state = ResNet26().state_dict()
    state["fc.weight"] = torch.zeros(10, 100)  # 100 features: no square pooling of 64 channels
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="fc.weight reads 100 features"):
        load_checkpoint(path)
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="no 4-d 'conv1.weight'"):
        load_checkpoint(path)


def test_mismatched_checkpoints_name_the_keys_and_shapes(tmp_path: Path) -> None:
    state = ResNet26().state_dict()
    state.pop("layer3.3.conv2.weight")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path, config=ModelConfig())
    assert "missing keys (1): layer3.3.conv2.weight" in str(error.value)
    assert "unexpected keys (1): extra.weight" in str(error.value)

    torch.save(ResNet26(ModelConfig(num_classes=17)).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"fc.weight: checkpoint \(17, 64\) vs model \(10, 64\)"):
        load_checkpoint(path, config=ModelConfig(num_classes=10))


def test_stored_config_must_agree_with_a_requested_one(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", ResNet26(ModelConfig(num_classes=5)))
    with pytest.raises(CheckpointError, match="differs"):
        load_checkpoint(path, config=ModelConfig(num_classes=10))


def test_garbage_files_are_reported_not_crashed_on(tmp_path: Path) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a loadable"):
        load_checkpoint(path)


def test_checkpoint_saved_on_a_gpu_loads_on_the_cpu(tmp_path: Path) -> None:
    """Tag every storage as 'cuda:0' while saving, as a GPU machine would write it."""
    registry = torch.serialization._package_registry

    def tag_as_cuda(obj: object) -> str | None:
        return "cuda:0" if getattr(obj, "device", None) is not None and obj.device.type == "cpu" else None

    def never(obj: object, location: str) -> None:
        return None

    entry = (-1, tag_as_cuda, never)
    registry.append(entry)
    registry.sort(key=lambda item: item[0])
    try:
        path = save_checkpoint(tmp_path / "gpu.pt", ResNet26())
    finally:
        registry.remove(entry)
    raw = path.read_bytes()
    assert b"cuda:0" in raw
    loaded = load_checkpoint(path)
    assert next(loaded.model.parameters()).device.type == "cpu"


@pytest.mark.skipif(not REFERENCE.exists(), reason="the paper's checkpoint is not beside this checkout")
def test_the_papers_released_checkpoint_loads_strictly() -> None:
    loaded = load_checkpoint(REFERENCE, config=ModelConfig())
    assert loaded.model.fc.in_features == 64


def test_writes_are_atomic_when_the_write_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_checkpoint(tmp_path / "m.pt", ResNet26(ModelConfig(num_classes=3)))
    before = path.read_bytes()

    def failing_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, ResNet26(ModelConfig(num_classes=4)))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path).config.num_classes == 3
    assert not list(tmp_path.glob(PARTIAL_PREFIX + "*"))


CRASH_MID_WRITE = """
import os, sys
from device import checkpoint
from device.model import ModelConfig, ResNet26
checkpoint.os.replace = lambda *a, **k: os._exit(17)  # die after the temp file is written
checkpoint.save_checkpoint(sys.argv[1], ResNet26(ModelConfig(num_classes=4)))
"""


def test_a_crash_mid_write_leaves_the_old_file_and_a_removable_partial(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", ResNet26(ModelConfig(num_classes=3)))
    child = subprocess.run([sys.executable, "-c", CRASH_MID_WRITE, str(path)], check=False, timeout=120)
    assert child.returncode == 17
    partials = list(tmp_path.glob(PARTIAL_PREFIX + "*"))
    assert len(partials) == 1
    assert load_checkpoint(path).config.num_classes == 3
    assert remove_partial_files(tmp_path) == partials
    assert not list(tmp_path.glob(PARTIAL_PREFIX + "*"))
