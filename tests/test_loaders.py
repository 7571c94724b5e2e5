"""Loaders, on small files of each format written by the tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from drift.loaders import (
    cifar10c_corruptions,
    load_cifar10,
    load_cifar10c,
    load_npy,
    load_npz,
    to_channels_first,
)


def _images(count: int, seed: int = 0, shape: tuple[int, int, int] = (3, 8, 8)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, *shape), dtype=np.uint8)


def test_to_channels_first() -> None:
    chw = _images(2)
    hwc = np.ascontiguousarray(chw.transpose(0, 2, 3, 1))
    assert to_channels_first(chw) is chw
    converted = to_channels_first(hwc)
    assert np.array_equal(converted, chw)
    assert converted.flags.c_contiguous
    gray = _images(2, shape=(1, 8, 8))
    assert np.array_equal(to_channels_first(gray[:, 0]), gray)
    assert np.array_equal(to_channels_first(gray.transpose(0, 2, 3, 1)), gray)
    with pytest.raises(ValueError, match="cannot tell the channel axis"):
        to_channels_first(np.zeros((2, 8, 8, 5), dtype=np.uint8))
    with pytest.raises(ValueError, match="got shape"):
        to_channels_first(np.zeros((8, 8), dtype=np.uint8))


def test_load_npy_pair_converts_hwc(tmp_path: Path) -> None:
    x = _images(4)
    y = np.array([3, 1, 4, 1], dtype=np.uint8)
    np.save(tmp_path / "x.npy", x.transpose(0, 2, 3, 1))
    np.save(tmp_path / "y.npy", y)
    loaded_x, loaded_y = load_npy(tmp_path / "x.npy", tmp_path / "y.npy")
    assert loaded_x.shape == (4, 3, 8, 8) and loaded_x.dtype == np.uint8
    assert np.array_equal(loaded_x, x)
    assert loaded_y.dtype == np.int64 and loaded_y.tolist() == [3, 1, 4, 1]


def test_load_npy_errors(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", _images(4))
    np.save(tmp_path / "y3.npy", np.arange(3))
    np.save(tmp_path / "xf.npy", _images(3).astype(np.float32))
    np.save(tmp_path / "yf.npy", np.zeros(4, dtype=np.float64))
    with pytest.raises(FileNotFoundError, match="label file not found"):
        load_npy(tmp_path / "x.npy", tmp_path / "missing.npy")
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        load_npy(tmp_path / "x.npy", tmp_path / "y3.npy")
    with pytest.raises(ValueError, match="must be uint8"):
        load_npy(tmp_path / "xf.npy", tmp_path / "y3.npy")
    with pytest.raises(ValueError, match="labels must be integers"):
        load_npy(tmp_path / "x.npy", tmp_path / "yf.npy")


def test_load_npz_plain_and_split(tmp_path: Path) -> None:
    x_train, x_test = _images(5, seed=1), _images(2, seed=2)
    np.savez(tmp_path / "plain.npz", x=x_train, y=np.arange(5))
    np.savez(
        tmp_path / "split.npz",
        x_train=x_train.transpose(0, 2, 3, 1),
        y_train=np.arange(5),
        x_test=x_test,
        y_test=np.array([7, 8]),
    )
    x, y = load_npz(tmp_path / "plain.npz")
    assert np.array_equal(x, x_train) and y.tolist() == [0, 1, 2, 3, 4]
    x, y = load_npz(tmp_path / "split.npz", split="train")
    assert np.array_equal(x, x_train)
    x, y = load_npz(tmp_path / "split.npz", split="test")
    assert np.array_equal(x, x_test) and y.dtype == np.int64 and y.tolist() == [7, 8]
    with pytest.raises(ValueError, match="pass split='train' or split='test'"):
        load_npz(tmp_path / "split.npz")
    with pytest.raises(ValueError, match="needs arrays 'x_test'"):
        load_npz(tmp_path / "plain.npz", split="test")
    with pytest.raises(ValueError, match="split must be one of"):
        load_npz(tmp_path / "split.npz", split="val")
    with pytest.raises(FileNotFoundError, match="archive not found"):
        load_npz(tmp_path / "nope.npz")


def _write_cifar_batch(path: Path, x: np.ndarray, labels: list[int]) -> None:
    batch = {b"batch_label": b"test", b"labels": labels, b"data": x.reshape(len(x), -1), b"filenames": []}
    with open(path, "wb") as handle:
        pickle.dump(batch, handle)


def test_load_cifar10_batches(tmp_path: Path) -> None:
    batches = [_images(2, seed=i, shape=(3, 32, 32)) for i in range(6)]
    for i, x in enumerate(batches[:5], start=1):
        _write_cifar_batch(tmp_path / f"data_batch_{i}", x, [i, i + 1])
    # A marked value: in a row of b'data', entry 2·1024 + 5·32 + 7 is blue at row 5, column 7.
    test_rows = batches[5].reshape(2, -1).copy()
    test_rows[1, 2 * 1024 + 5 * 32 + 7] = 201
    batches[5] = test_rows.reshape(2, 3, 32, 32)
    _write_cifar_batch(tmp_path / "test_batch", batches[5], [0, 9])

    x, y = load_cifar10(tmp_path, "train")
    assert x.shape == (10, 3, 32, 32) and x.dtype == np.uint8
    assert np.array_equal(x, np.concatenate(batches[:5]))
    assert y.dtype == np.int64 and y.tolist() == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6]
    x, y = load_cifar10(tmp_path, "test")
    assert x[1, 2, 5, 7] == 201 and y.tolist() == [0, 9]

    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar10(tmp_path, "train")
    with pytest.raises(ValueError, match="split must be one of"):
        load_cifar10(tmp_path, "validation")


def test_load_cifar10_rejects_a_bad_batch(tmp_path: Path) -> None:
    with open(tmp_path / "test_batch", "wb") as handle:
        pickle.dump({b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]}, handle)
    with pytest.raises(ValueError, match=r"shape \(N, 3072\)"):
        load_cifar10(tmp_path, "test")
    with open(tmp_path / "test_batch", "wb") as handle:
        pickle.dump([1, 2, 3], handle)
    with pytest.raises(ValueError, match="not a CIFAR-10 batch"):
        load_cifar10(tmp_path, "test")


def _write_cifar10c(root: Path, per_severity: int) -> np.ndarray:
    """A fake CIFAR-10-C: severity s fills its rows with value 10·s + row, labels = row mod 10."""
    rows = 5 * per_severity
    images = np.zeros((rows, 4, 4, 3), dtype=np.uint8)
    for severity in range(1, 6):
        for row in range(per_severity):
            images[(severity - 1) * per_severity + row] = 10 * severity + row
    images[:, 0, 1, 2] = 255  # one marked pixel: H=0, W=1, channel 2
    np.save(root / "fog.npy", images)
    np.save(root / "labels.npy", (np.arange(rows) % 10).astype(np.uint8))
    return images


def test_load_cifar10c_slices_one_severity(tmp_path: Path) -> None:
    _write_cifar10c(tmp_path, per_severity=3)
    for severity in range(1, 6):
        x, y = load_cifar10c(tmp_path, "fog", severity)
        assert x.shape == (3, 3, 4, 4) and x.dtype == np.uint8
        assert x.flags.c_contiguous and not isinstance(x, np.memmap)
        assert x[:, 0, 0, 0].tolist() == [10 * severity + r for r in range(3)]
        assert (x[:, 2, 0, 1] == 255).all() and (x[:, 1, 0, 1] != 255).all()
        assert y.dtype == np.int64
        assert y.tolist() == [((severity - 1) * 3 + r) % 10 for r in range(3)]
    assert cifar10c_corruptions(tmp_path) == ("fog",)


def test_load_cifar10c_errors(tmp_path: Path) -> None:
    _write_cifar10c(tmp_path, per_severity=2)
    with pytest.raises(ValueError, match="severity must be an integer from 1 to 5"):
        load_cifar10c(tmp_path, "fog", 6)
    with pytest.raises(ValueError, match="severity must be an integer"):
        load_cifar10c(tmp_path, "fog", True)
    with pytest.raises(FileNotFoundError, match="corruptions here: fog"):
        load_cifar10c(tmp_path, "snow", 1)
    with pytest.raises(ValueError, match="invalid corruption name"):
        load_cifar10c(tmp_path, "../fog", 1)
    with pytest.raises(FileNotFoundError, match="directory not found"):
        load_cifar10c(tmp_path / "absent", "fog", 1)

    np.save(tmp_path / "odd.npy", np.zeros((7, 4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="7 rows do not split into 5 severities"):
        load_cifar10c(tmp_path, "odd", 1)
    np.save(tmp_path / "chw.npy", np.zeros((10, 3, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"expected uint8 \(N, H, W, 3\)"):
        load_cifar10c(tmp_path, "chw", 1)
    np.save(tmp_path / "long.npy", np.zeros((15, 4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"expected shape \(15,\)"):
        load_cifar10c(tmp_path, "long", 1)
    (tmp_path / "labels.npy").unlink()
    with pytest.raises(FileNotFoundError, match="labels not found"):
        load_cifar10c(tmp_path, "fog", 1)
