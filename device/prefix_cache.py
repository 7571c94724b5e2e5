"""Cached prefix activations: the frozen front of the network computed once per job.

When a job trains a block that is not the first, every stage in front of it is frozen and in eval
mode, so its output for a given sample never changes during the job. Computing it once and reusing
it in every epoch removes that part of the forward pass from all epochs but the first. The cache is
bounded by a byte budget; above it, activations go to a disk-backed array when a spill directory is
given, else they are recomputed batch by batch — slower, never out of memory.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from device.batchnorm import StopRequested
from device.model import ResNet26
from device.samples import Samples

DEFAULT_CACHE_BUDGET_BYTES = 256 * 1024 * 1024


class FeatureSource(Protocol):
    """Gives the input of the first trained stage for a batch of sample indices."""

    kind: str

    @property
    def memory_bytes(self) -> int:
        """Bytes of activations this source holds in memory."""
        ...

    def batch(self, index: Tensor) -> Tensor: ...

    def close(self) -> None: ...


class RawImages:
    """No prefix: the block starts at the stem, which reads the images themselves."""

    kind = "none"
    memory_bytes = 0

    def __init__(self, samples: Samples) -> None:
        self._samples = samples

    def batch(self, index: Tensor) -> Tensor:
        return self._samples.images(index)

    def close(self) -> None:
        pass


class RecomputedPrefix:
    """Runs the frozen prefix for every batch (the fallback when the cache does not fit)."""

    kind = "recompute"
    memory_bytes = 0

    def __init__(self, model: ResNet26, samples: Samples, prefix_stop: int) -> None:
        self._model = model
        self._samples = samples
        self._stop = prefix_stop

    def batch(self, index: Tensor) -> Tensor:
        with torch.no_grad():
            return self._model.forward_stages(self._samples.images(index), 0, self._stop)

    def close(self) -> None:
        pass


class MemoryPrefix:
    """Prefix outputs held in one float32 tensor."""

    kind = "memory"

    def __init__(self, activations: Tensor) -> None:
        self._activations = activations

    @property
    def memory_bytes(self) -> int:
        return int(self._activations.numel() * self._activations.element_size())

    def batch(self, index: Tensor) -> Tensor:
        return self._activations[index]

    def close(self) -> None:
        self._activations = torch.empty(0)


class DiskPrefix:
    """Prefix outputs in a temporary memory-mapped file, deleted on :meth:`close`."""

    kind = "disk"
    memory_bytes = 0

    def __init__(self, array: np.memmap, path: Path) -> None:
        self._array = array
        self._path = path

    def batch(self, index: Tensor) -> Tensor:
        # Sorted reads are sequential on the card; the batch is put back in the requested order.
        order = torch.argsort(index)
        rows = torch.from_numpy(np.asarray(self._array[index[order].numpy()]))
        out = torch.empty_like(rows)
        out[order] = rows
        return out

    def close(self) -> None:
        del self._array
        self._path.unlink(missing_ok=True)


def prefix_output_shape(model: ResNet26, prefix_stop: int) -> tuple[int, ...]:
    """Shape of one sample's activation after ``STAGES[:prefix_stop]``."""
    with torch.no_grad():
        probe = torch.zeros(1, *model.config.input_shape)
        return tuple(model.forward_stages(probe, 0, prefix_stop).shape[1:])


def build_prefix_source(
    model: ResNet26,
    samples: Samples,
    prefix_stop: int,
    budget_bytes: int,
    spill_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 256,
    should_stop: Callable[[], bool] | None = None,
) -> FeatureSource:
    """The cheapest :class:`FeatureSource` for ``samples`` that respects ``budget_bytes``.

    The prefix must already be in its final, frozen state and in eval mode. ``budget_bytes`` is the
    memory allowed for these samples' activations.
    """
    if prefix_stop == 0:
        return RawImages(samples)
    shape = prefix_output_shape(model, prefix_stop)
    needed_bytes = len(samples) * int(np.prod(shape)) * 4
    if needed_bytes <= budget_bytes:
        store = torch.empty((len(samples), *shape), dtype=torch.float32)
        _fill(model, samples, prefix_stop, batch_size, should_stop, store.numpy())
        return MemoryPrefix(store)
    if spill_dir is not None:
        directory = Path(spill_dir)
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".prefix-cache-", suffix=".f32", dir=directory)
        os.close(fd)
        path = Path(name)
        try:
            array = np.memmap(path, dtype=np.float32, mode="w+", shape=(len(samples), *shape))
            _fill(model, samples, prefix_stop, batch_size, should_stop, array)
            array.flush()
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return DiskPrefix(array, path)
    return RecomputedPrefix(model, samples, prefix_stop)


def _fill(
    model: ResNet26,
    samples: Samples,
    prefix_stop: int,
    batch_size: int,
    should_stop: Callable[[], bool] | None,
    out: np.ndarray,
) -> None:
    with torch.no_grad():
        for index in torch.arange(len(samples)).split(batch_size):
            if should_stop is not None and should_stop():
                raise StopRequested
            activations = model.forward_stages(samples.images(index), 0, prefix_stop)
            out[int(index[0]) : int(index[-1]) + 1] = activations.numpy()
