"""The ResNet-26 forward pass in numpy, for serving predictions without torch.

The daemon's API process only classifies; importing torch there would cost about 200 MB of
resident memory for nothing (its Python modules and operator tables), which a 1 GB Raspberry Pi
cannot spare while a trainer child holds torch as well. The trainer writes every model version
twice: the torch checkpoint it trains from (:mod:`device.checkpoint`) and a weights file read here.

A weights file is a ``.npz`` of float32 arrays named as the torch state dict, plus ``config``
(the :class:`~device.config.ModelConfig` as JSON) and ``format``; it loads with
``allow_pickle=False``. In eval mode every BatchNorm is an affine map, folded here into a per-channel
scale and shift once at load time.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.config import POOL_KERNEL, ModelConfig
from device.files import atomic_write_bytes
from device.prediction import Prediction

FORMAT_NAME = "tbftd-weights"
FORMAT_VERSION = 1
#: The epsilon of torch's ``BatchNorm2d``, which every BatchNorm of the model uses.
BATCHNORM_EPS = 1e-5
#: Images per pass: bounds the patch buffer (about 9 MB at 32 px) whatever the request's batch.
CHUNK_SAMPLES = 16


class WeightsError(ValueError):
    """A weights file that cannot be used; the message says what is wrong."""


@dataclass(frozen=True)
class _Affine:
    """A BatchNorm in eval mode: ``x * scale + shift`` per channel (the last axis of NHWC)."""

    scale: np.ndarray
    shift: np.ndarray


@dataclass(frozen=True)
class _Block:
    bn1: _Affine
    conv1: np.ndarray
    bn2: _Affine
    conv2: np.ndarray
    stride: int
    extra_channels: int


class NumpyResNet26:
    """Eval-mode ResNet-26 built from a state dict of numpy arrays; see the module docstring."""

    def __init__(self, config: ModelConfig, state: dict[str, np.ndarray], *,
                 shared_from: NumpyResNet26 | None = None, changed: frozenset[str] = frozenset()) -> None:
        """``shared_from`` (a model of the same configuration) lends its prepared convolutions for
        every ``*.weight`` not named in ``changed``: a context's model that differs from the base
        in one block then holds only that block's arrays of its own."""
        self.config = config
        self._mean = np.asarray(config.mean, dtype=np.float32)
        self._std = np.asarray(config.std, dtype=np.float32)
        if shared_from is not None and shared_from.config != config:
            raise WeightsError(f"cannot share weights with a model of another configuration ({shared_from.config})")
        self._columns: dict[str, np.ndarray] = {}
        try:
            for name in (k for k in state if k.endswith(".weight") and np.ndim(state[k]) == 4):
                lent = None if shared_from is None or name in changed else shared_from._columns.get(name)
                self._columns[name] = lent if lent is not None else _conv_columns(state[name])
            self._conv1 = self._columns["conv1.weight"]
            self._blocks = [self._block(state, layer, index)
                            for layer in (1, 2, 3) for index in range(4)]
            self._bn = _affine(state, "bn")
            self._fc_weight = _float32(state["fc.weight"]).T.copy()
            self._fc_bias = _float32(state["fc.bias"])
        except KeyError as exc:
            raise WeightsError(f"weights lack {exc.args[0]!r}") from None
        if self._fc_weight.shape != (config.fc_in_features, config.num_classes):
            raise WeightsError(f"fc.weight has shape {self._fc_weight.T.shape}, the configuration needs "
                               f"({config.num_classes}, {config.fc_in_features})")

    def _block(self, state: dict[str, np.ndarray], layer: int, index: int) -> _Block:
        prefix = f"layer{layer}.{index}"
        conv1 = state[f"{prefix}.conv1.weight"]
        return _Block(
            bn1=_affine(state, f"{prefix}.bn1"),
            conv1=self._columns[f"{prefix}.conv1.weight"],
            bn2=_affine(state, f"{prefix}.bn2"),
            conv2=self._columns[f"{prefix}.conv2.weight"],
            stride=2 if layer > 1 and index == 0 else 1,
            extra_channels=conv1.shape[0] - conv1.shape[1],
        )

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Class scores for images (N, C, H, W): uint8 0..255 or float 0..1, as the torch model takes."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.config.input_shape:
            raise ValueError(f"images must have shape (N, {', '.join(map(str, self.config.input_shape))}), "
                             f"got {tuple(x.shape)}")
        chunks = [self._forward(x[start : start + CHUNK_SAMPLES]) for start in range(0, x.shape[0], CHUNK_SAMPLES)]
        return np.concatenate(chunks) if chunks else np.empty((0, self.config.num_classes), np.float32)

    def predict(self, x: np.ndarray) -> Prediction:
        """Classes and softmax probabilities, as :func:`device.inference.predict` returns them."""
        logits = self.logits(x)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        return Prediction(classes=probabilities.argmax(axis=1), probabilities=probabilities)

    def _forward(self, x: np.ndarray) -> np.ndarray:
        images = x.transpose(0, 2, 3, 1).astype(np.float32)  # NHWC: channels last suit the patch products
        if x.dtype == np.uint8:
            images /= np.float32(255.0)
        out = _conv3x3((images - self._mean) / self._std, self._conv1, 1)
        for block in self._blocks:
            hidden = _conv3x3(_relu_affine(out, block.bn1), block.conv1, block.stride)
            hidden = _conv3x3(_relu_affine(hidden, block.bn2), block.conv2, 1)
            out = hidden + _shortcut(out, block.stride, block.extra_channels)
        out = _relu_affine(out, self._bn)
        n, h, w, c = out.shape
        pooled = out.reshape(n, h // POOL_KERNEL, POOL_KERNEL, w // POOL_KERNEL, POOL_KERNEL, c).mean(axis=(2, 4))
        # torch flattens pooled features channel-major: (N, C, h, w).
        return pooled.transpose(0, 3, 1, 2).reshape(n, -1) @ self._fc_weight + self._fc_bias


def _float32(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


def _affine(state: dict[str, np.ndarray], prefix: str) -> _Affine:
    weight = state[f"{prefix}.weight"].astype(np.float64)
    bias = state[f"{prefix}.bias"].astype(np.float64)
    mean = state[f"{prefix}.running_mean"].astype(np.float64)
    var = state[f"{prefix}.running_var"].astype(np.float64)
    scale = weight / np.sqrt(var + BATCHNORM_EPS)
    shift = bias - mean * scale
    return _Affine(scale.astype(np.float32), shift.astype(np.float32))


def _relu_affine(x: np.ndarray, affine: _Affine) -> np.ndarray:
    return np.maximum(x * affine.scale + affine.shift, 0.0, dtype=np.float32)


def _conv3x3(x: np.ndarray, weight: np.ndarray, stride: int) -> np.ndarray:
    """3×3 convolution, padding 1, no bias, on NHWC input with weights as (9·C, O) columns.

    The nine shifted views of the padded input, side by side along the channels, are the image's
    patches; one matrix product with the weights is the convolution.
    """
    n, h, w, c = x.shape
    padded = np.zeros((n, h + 2, w + 2, c), dtype=np.float32)
    padded[:, 1:-1, 1:-1, :] = x
    out_h, out_w = (h - 1) // stride + 1, (w - 1) // stride + 1
    patches = np.empty((n, out_h, out_w, 9 * c), dtype=np.float32)
    for dy in range(3):
        for dx in range(3):
            offset = (dy * 3 + dx) * c
            patches[..., offset : offset + c] = padded[:, dy : dy + h : stride, dx : dx + w : stride, :]
    return (patches.reshape(-1, 9 * c) @ weight).reshape(n, out_h, out_w, -1)


def _conv_columns(weight: np.ndarray) -> np.ndarray:
    """Torch's (O, C, 3, 3) convolution weight as (9·C, O) columns in the patch order of :func:`_conv3x3`."""
    return np.ascontiguousarray(_float32(weight).transpose(2, 3, 1, 0).reshape(-1, weight.shape[0]))


def _shortcut(x: np.ndarray, stride: int, extra_channels: int) -> np.ndarray:
    if stride != 1:
        n, h, w, c = x.shape
        x = x.reshape(n, h // stride, stride, w // stride, stride, c).mean(axis=(2, 4))
    if extra_channels > 0:
        x = np.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra_channels)))
    return x


def save_weights(path: str | os.PathLike[str], config: ModelConfig, state: dict[str, np.ndarray]) -> Path:
    """Write a weights file atomically (see the module docstring for its layout)."""
    arrays = {name: np.asarray(value) for name, value in state.items()}
    for reserved in ("config", "format"):
        if reserved in arrays:
            raise ValueError(f"a state dict entry may not be called {reserved!r}")
    buffer = io.BytesIO()
    np.savez(buffer, config=np.array(json.dumps(config.to_dict())),
             format=np.array(f"{FORMAT_NAME}/{FORMAT_VERSION}"), **arrays)
    return atomic_write_bytes(Path(path), buffer.getvalue())


def load_weights(path: str | os.PathLike[str]) -> NumpyResNet26:
    """Read a weights file into a model ready to predict; :class:`WeightsError` says what is wrong."""
    return NumpyResNet26(*read_weights(path))


def read_weights(path: str | os.PathLike[str]) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """A weights file's configuration and named arrays (the state dict), checked as :func:`load_weights` does."""
    return read_arrays(path, f"{FORMAT_NAME}/{FORMAT_VERSION}", "weights")


def read_arrays(path: str | os.PathLike[str], kind: str, what: str) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """The configuration and the other arrays of an ``.npz`` whose ``format`` is ``kind`` (a
    weights file, or a delta file); :class:`WeightsError` names the file and what is wrong."""
    try:
        with np.load(Path(path), allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise
    except Exception as exc:  # zipfile and numpy raise several types for a damaged file
        raise WeightsError(f"{path}: not a readable {what} file ({exc})") from exc
    found = str(arrays.pop("format", ""))
    if found != kind:
        raise WeightsError(f"{path}: not a {kind.replace('/', ' file of version ')} (format {found!r})")
    try:
        config = ModelConfig.from_dict(json.loads(str(arrays.pop("config"))))
    except (KeyError, ValueError, TypeError) as exc:
        raise WeightsError(f"{path}: bad model configuration ({exc})") from exc
    return config, arrays


def weights_path_for(checkpoint_path: str | os.PathLike[str]) -> Path:
    """Where the weights file of a torch checkpoint lives: beside it, with the ``.npz`` suffix."""
    return Path(checkpoint_path).with_suffix(".npz")
