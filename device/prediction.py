"""What a classification returns, shared by the torch and the numpy inference paths."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Prediction:
    """Predicted classes (N,) and class probabilities (N, classes) as numpy arrays."""

    classes: np.ndarray
    probabilities: np.ndarray
