"""A model version stored as what differs from the base model: one ``.npz`` of changed arrays.

Fine-tuning one block changes that block's tensors (and, where BatchNorm follows the target data,
the BatchNorm statistics): for ``fc`` a few hundred parameters of a 370-thousand-parameter model.
A daemon with tens of contexts, each with its own model history, stores every version as a delta
file holding only the arrays that differ from the base, bit for bit, plus the configuration and the
version's metadata (``extra``, plain JSON: what the job found, the source statistics the next
``auto`` job compares with). Both sides read it without torch: the API process overlays the arrays
on the base's weights to serve (:class:`device.numpy_model.NumpyResNet26` shares the unchanged
ones), and the trainer overlays them on the base checkpoint to train from.

Every delta is relative to the base model, never to another delta, so loading a version reads two
files whatever its history.
"""

from __future__ import annotations

import io
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device.config import ModelConfig
from device.files import atomic_write_bytes
from device.numpy_model import NumpyResNet26, WeightsError, read_arrays, read_weights

FORMAT_NAME = "tbftd-weights-delta"
FORMAT_VERSION = 1
#: The suffix of a delta file, so a directory listing tells deltas from full weights files.
DELTA_SUFFIX = ".delta.npz"
_RESERVED = ("config", "format", "extra")


@dataclass(frozen=True)
class WeightsDelta:
    """A delta file's contents: the arrays that differ from the base, and the version's metadata."""

    config: ModelConfig
    arrays: dict[str, np.ndarray]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes of the changed arrays (what the version costs beyond the base, in memory)."""
        return sum(int(a.nbytes) for a in self.arrays.values())

    def apply(self, base_state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The full state: ``base_state`` with this delta's arrays in place of the base's."""
        unknown = sorted(set(self.arrays) - set(base_state))
        if unknown:
            raise WeightsError(f"the delta holds arrays the base model lacks: {', '.join(unknown[:5])}")
        for name, array in self.arrays.items():
            if array.shape != base_state[name].shape:
                raise WeightsError(f"{name}: the delta's shape {array.shape} differs from the base's "
                                   f"{base_state[name].shape}; it was made for another base model")
        return {**base_state, **self.arrays}

    def model(self, base: NumpyResNet26, base_state: dict[str, np.ndarray]) -> NumpyResNet26:
        """The servable model: ``base`` with this delta applied, sharing the base's unchanged arrays."""
        if self.config != base.config:
            raise WeightsError(f"the delta was made for a model of another configuration ({self.config})")
        return NumpyResNet26(self.config, self.apply(base_state), shared_from=base,
                             changed=frozenset(self.arrays))


def changed_arrays(state: dict[str, np.ndarray], base_state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays of ``state`` that are not bit-identical to ``base_state``'s (new names included)."""
    changed = {}
    for name, array in state.items():
        base = base_state.get(name)
        if base is None or base.shape != array.shape or base.dtype != array.dtype or \
                base.tobytes() != np.ascontiguousarray(array).tobytes():
            changed[name] = np.asarray(array)
    return changed


def save_delta(
    path: str | os.PathLike[str],
    config: ModelConfig,
    state: dict[str, np.ndarray],
    base_state: dict[str, np.ndarray],
    extra: dict[str, Any] | None = None,
) -> WeightsDelta:
    """Write the delta of ``state`` against ``base_state`` to ``path`` atomically; returns it.

    ``extra`` must be plain JSON (it is stored as text, so the file loads without pickle).
    """
    arrays = changed_arrays(state, base_state)
    for reserved in _RESERVED:
        if reserved in arrays:
            raise ValueError(f"a state dict entry may not be called {reserved!r}")
    delta = WeightsDelta(config, arrays, dict(extra or {}))
    buffer = io.BytesIO()
    # The metadata is zlib-compressed UTF-8 bytes: as a numpy string it would be UTF-32, and the
    # job's result and source statistics would then outweigh an fc version's arrays eightfold.
    metadata = zlib.compress(json.dumps(delta.extra, allow_nan=False, separators=(",", ":")).encode())
    np.savez(buffer, format=np.array(f"{FORMAT_NAME}/{FORMAT_VERSION}"), config=np.array(json.dumps(config.to_dict())),
             extra=np.frombuffer(metadata, dtype=np.uint8), **arrays)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return delta


def is_delta_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a delta file (by its suffix)."""
    return str(path).endswith(DELTA_SUFFIX)


def load_delta(path: str | os.PathLike[str]) -> WeightsDelta:
    """Read a delta file; :class:`~device.numpy_model.WeightsError` says what is wrong with it."""
    config, arrays = read_arrays(path, f"{FORMAT_NAME}/{FORMAT_VERSION}", "delta")
    try:
        extra = json.loads(zlib.decompress(arrays.pop("extra").tobytes()))
    except (KeyError, ValueError, zlib.error) as exc:
        raise WeightsError(f"{path}: bad metadata ({exc})") from exc
    return WeightsDelta(config, arrays, extra if isinstance(extra, dict) else {})


def read_state(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The named arrays of a full weights file (:func:`device.numpy_model.save_weights`), without
    its configuration: what deltas are applied to."""
    return read_weights(path)[1]
