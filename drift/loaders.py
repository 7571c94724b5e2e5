"""Loaders for real image data on disk, all returning ``(x, y)``.

``x`` is uint8 of shape (N, C, H, W), channels first as everywhere in the project; ``y`` is int64 of
shape (N,). Supported: a pair of ``.npy`` files, an ``.npz`` archive, the CIFAR-10 python batches and
the CIFAR-10-C directory layout.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

#: The file names of the CIFAR-10 python version (``cifar-10-batches-py``).
CIFAR10_TRAIN_BATCHES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"

#: CIFAR-10-C stacks severities 1..5 in this order, the same number of rows each.
CIFAR10C_SEVERITIES = 5

_SPLITS = ("train", "test")


def to_channels_first(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) images from (N, C, H, W), (N, H, W, C) or (N, H, W).

    An array whose axis 1 has 1 or 3 entries is taken as channels-first already; otherwise a last
    axis of 1 or 3 marks channels-last, which is transposed (and made contiguous). A 3-D array is one
    grayscale channel. Anything else is a ValueError.
    """
    if x.ndim == 3:
        return x[:, np.newaxis, :, :]
    if x.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), (N, H, W, C) or (N, H, W); got shape {x.shape}")
    if x.shape[1] in (1, 3):
        return x
    if x.shape[3] in (1, 3):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    raise ValueError(
        f"cannot tell the channel axis of images with shape {x.shape}: "
        "expected 1 or 3 channels on axis 1 (channels first) or on the last axis (channels last)"
    )


def _check_pair(x: np.ndarray, y: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    if x.dtype != np.uint8:
        raise ValueError(f"{source}: images must be uint8 (0..255), got dtype {x.dtype}")
    x = to_channels_first(x)
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{source}: labels must be 1-D, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{source}: labels must be integers, got dtype {y.dtype}")
    if len(x) != len(y):
        raise ValueError(f"{source}: {len(x)} images but {len(y)} labels")
    if y.size and y.min() < 0:
        raise ValueError(f"{source}: labels must be non-negative, got {y.min()}")
    return x, y.astype(np.int64)


def _existing_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def load_npy(x_path: str | Path, y_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Images from one ``.npy`` file and labels from another.

    Images may be channels-last; they come back channels-first.
    """
    x_file = _existing_file(x_path, "image file")
    y_file = _existing_file(y_path, "label file")
    x = np.load(x_file, allow_pickle=False)
    y = np.load(y_file, allow_pickle=False)
    return _check_pair(x, y, str(x_file))


def load_npz(path: str | Path, split: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels from an ``.npz`` archive.

    Without ``split`` the archive must hold ``x`` and ``y``; with ``split="train"`` or ``"test"`` it
    must hold ``x_<split>`` and ``y_<split>``. Images may be channels-last; they come back
    channels-first.
    """
    file = _existing_file(path, "archive")
    if split is not None and split not in _SPLITS:
        raise ValueError(f"split must be one of {', '.join(_SPLITS)} or None, got {split!r}")
    with np.load(file, allow_pickle=False) as archive:
        keys = set(archive.files)
        x_key, y_key = ("x", "y") if split is None else (f"x_{split}", f"y_{split}")
        if x_key not in keys or y_key not in keys:
            hint = ""
            if split is None and {"x_train", "y_train"} <= keys:
                hint = "; it has train/test splits: pass split='train' or split='test'"
            raise ValueError(f"{file}: needs arrays {x_key!r} and {y_key!r}, has {sorted(keys)}{hint}")
        x = archive[x_key]
        y = archive[y_key]
    return _check_pair(x, y, str(file))


def _read_cifar10_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    # The CIFAR-10 python batches are pickles. Unpickling runs code the file asks for, so only
    # trusted local copies (the official archive) may be read this way.
    with open(file, "rb") as handle:
        batch: Any = pickle.load(handle, encoding="bytes")
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{file}: not a CIFAR-10 batch (needs a dict with b'data' and b'labels')")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{file}: b'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    # Each row is the red, green and blue 32×32 planes in turn, rows in order: already C, H, W.
    x = data.reshape(-1, 3, 32, 32)
    return _check_pair(x, labels, str(file))


def load_cifar10(directory: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 from its python batches (the ``cifar-10-batches-py`` directory).

    ``split="train"`` reads ``data_batch_1`` … ``data_batch_5`` in order; ``split="test"`` reads
    ``test_batch``. The batches are pickles: load only trusted local files.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {', '.join(_SPLITS)}, got {split!r}")
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"CIFAR-10 directory not found: {root}")
    names = CIFAR10_TRAIN_BATCHES if split == "train" else (CIFAR10_TEST_BATCH,)
    missing = [name for name in names if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{root}: missing CIFAR-10 batch files {missing}")
    parts = [_read_cifar10_batch(root / name) for name in names]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return x, y


def cifar10c_corruptions(directory: str | Path) -> tuple[str, ...]:
    """The corruption names present in a CIFAR-10-C directory (``<name>.npy`` besides labels)."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"CIFAR-10-C directory not found: {root}")
    return tuple(sorted(p.stem for p in root.glob("*.npy") if p.stem != "labels"))


def load_cifar10c(
    directory: str | Path, corruption: str, severity: int
) -> tuple[np.ndarray, np.ndarray]:
    """One corruption at one severity (1..5) from the CIFAR-10-C layout.

    The directory holds ``<corruption>.npy`` (severities 1..5 stacked, the same number of rows
    each: 50,000 × 32 × 32 × 3 uint8 in the official release) and ``labels.npy``. Only the rows of
    ``severity`` are read from disk (memory-mapped), returned channels-first.
    """
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)):
        raise ValueError(f"severity must be an integer from 1 to {CIFAR10C_SEVERITIES}, got {severity!r}")
    if not 1 <= severity <= CIFAR10C_SEVERITIES:
        raise ValueError(f"severity must be an integer from 1 to {CIFAR10C_SEVERITIES}, got {severity}")
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"CIFAR-10-C directory not found: {root}")
    if not corruption or Path(corruption).name != corruption or corruption == "labels":
        raise ValueError(f"invalid corruption name {corruption!r}")
    image_file = root / f"{corruption}.npy"
    if not image_file.is_file():
        known = cifar10c_corruptions(root)
        raise FileNotFoundError(
            f"{image_file} not found; corruptions here: {', '.join(known) if known else 'none'}"
        )
    label_file = _existing_file(root / "labels.npy", "CIFAR-10-C labels")

    images = np.load(image_file, mmap_mode="r", allow_pickle=False)
    labels = np.load(label_file, mmap_mode="r", allow_pickle=False)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"{image_file}: expected uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    if images.shape[0] == 0 or images.shape[0] % CIFAR10C_SEVERITIES:
        raise ValueError(
            f"{image_file}: {images.shape[0]} rows do not split into {CIFAR10C_SEVERITIES} severities"
        )
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{label_file}: expected shape ({images.shape[0]},), got {labels.shape}")
    per_severity = images.shape[0] // CIFAR10C_SEVERITIES
    rows = slice((severity - 1) * per_severity, severity * per_severity)
    x = np.ascontiguousarray(images[rows].transpose(0, 3, 1, 2))
    y = np.array(labels[rows])
    return _check_pair(x, y, str(image_file))
