"""Model checkpoints: a self-describing file format, atomic writes and strict, explained loading.

A tbftd checkpoint is a ``torch.save`` of a plain dict::

    {"format": "tbftd-checkpoint", "version": 1,
     "config": ModelConfig.to_dict(), "state_dict": {...}, "extra": {...}}

so it loads with ``weights_only=True`` (no pickled code) and rebuilds the model without guessing
its architecture, classes, input shape or normalisation. A bare state dict (the paper's released
files) loads too: the architecture is read from its tensors' shapes
(:meth:`ModelConfig.from_tensor_shapes`) unless the caller names it with a :class:`ModelConfig`.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from device.files import (
    FILE_MODE,
    PARTIAL_PREFIX,
    atomic_write_bytes,
    remove_partial_files,
)
from device.model import ModelConfig, ResNet26

__all__ = [
    "FILE_MODE", "PARTIAL_PREFIX", "Checkpoint", "CheckpointError", "atomic_write_bytes", "load_checkpoint",
    "remove_partial_files", "save_checkpoint",
]

FORMAT_NAME = "tbftd-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked; the message says what differs."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model, its configuration and the saved metadata."""

    model: ResNet26
    config: ModelConfig
    extra: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: str | os.PathLike[str], model: ResNet26, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (configuration and weights) to ``path`` atomically.

    The bytes go to a temporary file in the same directory, which is flushed, fsynced and then
    renamed over ``path``: a reader sees either the old file or the complete new one, never a
    half-written model, even if the process dies mid-write. ``extra`` must hold plain values
    (str, int, float, bool, None, lists and dicts of them) so the file loads with ``weights_only``.
    """
    payload = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "extra": dict(extra or {}),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(Path(path), buffer.getvalue())


def load_checkpoint(
    path: str | os.PathLike[str],
    config: ModelConfig | None = None,
) -> Checkpoint:
    """Load a tbftd checkpoint or a bare state dict onto the CPU.

    For a tbftd checkpoint the stored configuration is used; a ``config`` given as well must agree
    with it. For a bare state dict without ``config`` the configuration is read from its tensors'
    shapes, and ``extra["config_inferred"]`` says so. Tensors saved on a GPU are mapped to the CPU. Any mismatch raises
    :class:`CheckpointError` naming the missing and unexpected keys or the differing shapes.
    """
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch raises several types for corrupt or non-torch files
        raise CheckpointError(f"{path}: not a loadable PyTorch checkpoint ({exc})") from exc

    if isinstance(payload, dict) and payload.get("format") == FORMAT_NAME:
        version = payload.get("version")
        if version != FORMAT_VERSION:
            raise CheckpointError(f"{path}: checkpoint format version {version} is not supported")
        stored = ModelConfig.from_dict(payload["config"])
        if config is not None and config != stored:
            raise CheckpointError(f"{path}: stored configuration {stored} differs from the requested {config}")
        state_dict = payload["state_dict"]
        extra = dict(payload.get("extra") or {})
        config = stored
    elif isinstance(payload, dict) and payload and all(isinstance(v, Tensor) for v in payload.values()):
        state_dict = payload
        extra = {}
        if config is None:
            try:
                config = ModelConfig.from_tensor_shapes({k: tuple(v.shape) for k, v in payload.items()})
            except ValueError as exc:
                raise CheckpointError(f"{path}: a bare state dict whose architecture cannot be read: {exc}") from exc
            extra["config_inferred"] = config.to_dict()
    else:
        raise CheckpointError(f"{path}: neither a tbftd checkpoint nor a state dict of tensors")

    model = ResNet26(config)
    load_state_dict_strict(model, state_dict, source=str(path))
    model.eval()
    return Checkpoint(model=model, config=config, extra=extra)


def load_state_dict_strict(model: nn.Module, state_dict: dict[str, Tensor], source: str = "state dict") -> None:
    """Load ``state_dict`` into ``model`` strictly, with an error that lists every difference."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = sorted(
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in set(expected) & set(state_dict)
        if tuple(state_dict[key].shape) != tuple(expected[key].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): {'; '.join(shapes)}")
    if problems:
        raise CheckpointError(f"{source} does not match the model: " + " | ".join(problems))
    model.load_state_dict(state_dict, strict=True)
