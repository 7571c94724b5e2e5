"""Export a torch model's weights for the numpy inference path (:mod:`device.numpy_model`).

Also a command, so a process without torch (the daemon's API process) can have a checkpoint
converted in a short-lived child::

    python -m device.weights_export CHECKPOINT.pt WEIGHTS.npz [SELF_DESCRIBING.pt]

The optional third path receives the model as a tbftd checkpoint: a bare state dict (the paper's
released files) becomes a file that names its architecture, so nothing after it has to read the
architecture from tensor shapes again. It exits 0 on success, 2 with a one-line reason on stderr
when the checkpoint cannot be loaded.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from device.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from device.model import ResNet26
from device.numpy_model import save_weights


def export_weights(model: ResNet26, path: str | os.PathLike[str]) -> Path:
    """Write ``model``'s configuration and state dict (BatchNorm statistics included) atomically."""
    state = {name: tensor.detach().cpu().numpy() for name, tensor in model.state_dict().items()}
    return save_weights(path, model.config, state)


def convert_checkpoint(
    checkpoint: str | os.PathLike[str], weights: str | os.PathLike[str], described: str | os.PathLike[str] | None = None
) -> Path:
    """Load a checkpoint (strictly, as training would) and write its weights file, and with
    ``described`` the model as a tbftd checkpoint there (its metadata kept)."""
    loaded = load_checkpoint(checkpoint)
    path = export_weights(loaded.model, weights)
    if described is not None:
        save_checkpoint(described, loaded.model, extra=loaded.extra)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """The command in the module docstring; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (2, 3):
        print("usage: python -m device.weights_export CHECKPOINT WEIGHTS [SELF_DESCRIBING_CHECKPOINT]", file=sys.stderr)
        return 2
    try:
        convert_checkpoint(*args)
    except (CheckpointError, FileNotFoundError, IsADirectoryError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
