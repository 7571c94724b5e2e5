"""The base model that ships inside the package, so a Pi never has to train one at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing torch here would cost the daemon's torch-free API process 200 MB
    from device.checkpoint import Checkpoint

#: Made by ``tbftd train-base`` with its default seed (see ``drift.base_model``).
SHIPPED_BASE_MODEL: Path = Path(__file__).resolve().parent / "assets" / "base-shapes-resnet26.pt"
#: The same weights for the numpy inference path (``python -m device.weights_export`` of the above).
SHIPPED_BASE_WEIGHTS: Path = SHIPPED_BASE_MODEL.with_suffix(".npz")


def load_shipped_base_model() -> Checkpoint:
    """Load the shipped base model (configuration, weights and how it was made)."""
    from device.checkpoint import load_checkpoint

    if not SHIPPED_BASE_MODEL.exists():
        raise FileNotFoundError(
            f"the shipped base model is missing at {SHIPPED_BASE_MODEL}; rebuild it with `tbftd train-base`"
        )
    return load_checkpoint(SHIPPED_BASE_MODEL)
