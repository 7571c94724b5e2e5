"""Batched inference: predictions with probabilities, and loss/accuracy on labelled samples."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from device.model import ResNet26
from device.prediction import Prediction
from device.samples import as_float_images

__all__ = ["Evaluation", "Prediction", "evaluate_batches", "predict"]


def predict(model: ResNet26, x: np.ndarray | Tensor, batch_size: int = 256) -> Prediction:
    """Classify images (uint8 0..255 or float32 0..1, shape (N, C, H, W)) in eval mode."""
    images = torch.as_tensor(x) if isinstance(x, np.ndarray) else x
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    was_training = model.training
    model.eval()
    chunks = []
    try:
        with torch.inference_mode():
            for start in range(0, images.shape[0], batch_size):
                logits = model(as_float_images(images[start : start + batch_size]))
                chunks.append(F.softmax(logits, dim=1))
    finally:
        model.train(was_training)
    probabilities = torch.cat(chunks) if chunks else torch.empty(0, model.config.num_classes)
    return Prediction(classes=probabilities.argmax(1).numpy(), probabilities=probabilities.numpy())


@dataclass(frozen=True)
class Evaluation:
    """Mean cross-entropy loss and accuracy (0..1) over a set of samples."""

    loss: float
    accuracy: float
    count: int


def evaluate_batches(
    forward: Callable[[Tensor], Tensor],
    inputs: Callable[[Tensor], Tensor],
    labels: Tensor,
    batch_size: int,
) -> Evaluation:
    """Evaluate ``forward(inputs(index))`` against ``labels`` over index batches, without gradients.

    ``inputs`` maps a batch of indices to the tensor ``forward`` expects (raw images or cached
    activations), so the same code scores the whole model and a model's tail on cached features.
    """
    total_loss = 0.0
    correct = 0
    count = int(labels.shape[0])
    with torch.no_grad():
        for index in torch.arange(count).split(batch_size):
            logits = forward(inputs(index))
            target = labels[index]
            total_loss += float(F.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(1) == target).sum())
    if count == 0:
        return Evaluation(loss=float("nan"), accuracy=float("nan"), count=0)
    return Evaluation(loss=total_loss / count, accuracy=correct / count, count=count)
