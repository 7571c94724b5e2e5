"""Export a torch model's weights for the numpy inference path (:mod:`device.numpy_model`).

Also a command, so a process without torch (the daemon's API process) can have a checkpoint
converted in a short-lived child::

    python -m device.weights_export CHECKPOINT.pt WEIGHTS.npz

It exits 0 on success, 2 with a one-line reason on stderr when the checkpoint cannot be loaded.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from device.checkpoint import CheckpointError, load_checkpoint
from device.model import ResNet26
from device.numpy_model import save_weights


def export_weights(model: ResNet26, path: str | os.PathLike[str]) -> Path:
    """Write ``model``'s configuration and state dict (BatchNorm statistics included) atomically."""
    state = {name: tensor.detach().cpu().numpy() for name, tensor in model.state_dict().items()}
    return save_weights(path, model.config, state)


def convert_checkpoint(checkpoint: str | os.PathLike[str], weights: str | os.PathLike[str]) -> Path:
    """Load a tbftd checkpoint (strictly, as training would) and write its weights file."""
    return export_weights(load_checkpoint(checkpoint).model, weights)


def main(argv: Sequence[str] | None = None) -> int:
    """The command in the module docstring; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m device.weights_export CHECKPOINT WEIGHTS", file=sys.stderr)
        return 2
    try:
        convert_checkpoint(args[0], args[1])
    except (CheckpointError, FileNotFoundError, IsADirectoryError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
