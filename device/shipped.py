"""The base model that ships inside the package, so a Pi never has to train one at start-up."""

from __future__ import annotations

from pathlib import Path

from device.checkpoint import Checkpoint, load_checkpoint

#: Made by ``tbftd train-base`` with its default seed (see ``drift.base_model``).
SHIPPED_BASE_MODEL: Path = Path(__file__).resolve().parent / "assets" / "base-shapes-resnet26.pt"


def load_shipped_base_model() -> Checkpoint:
    """Load the shipped base model (configuration, weights and how it was made)."""
    if not SHIPPED_BASE_MODEL.exists():
        raise FileNotFoundError(
            f"the shipped base model is missing at {SHIPPED_BASE_MODEL}; rebuild it with `tbftd train-base`"
        )
    return load_checkpoint(SHIPPED_BASE_MODEL)
