"""Training a base model from scratch: SGD with a one-cycle or cosine schedule, deterministic under a seed.

The data comes in as arrays (images uint8 0..255 or float in [0, 1], channels first, and integer
labels), so this module knows nothing about where it came from; ``drift.base_model`` makes the
shipped base model's data and calls :func:`train_base`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from device.inference import evaluate_batches
from device.model import ModelConfig, ResNet26
from device.samples import as_float_images

Schedule = Literal["onecycle", "cosine"]
SCHEDULES: tuple[str, ...] = ("onecycle", "cosine")

ArrayLike = np.ndarray | Tensor


@dataclass(frozen=True)
class PretrainConfig:
    """Settings for training a base model from scratch.

    ``lr`` is the peak learning rate. ``onecycle`` warms up linearly from ``lr / 25`` over the first
    ``warmup_fraction`` of the steps and then anneals to ``lr / 1000`` along a cosine; ``cosine``
    starts at ``lr`` and anneals to 0. ``num_threads`` None leaves torch's thread count as it is.
    ``channels_last`` only changes the memory layout (several times faster convolutions on CPU).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 1
    batch_size: int = 128
    lr: float = 0.2
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: Schedule = "onecycle"
    warmup_fraction: float = 0.25
    label_smoothing: float = 0.0
    seed: int = 0
    num_threads: int | None = None
    channels_last: bool = True
    eval_batch_size: int = 500

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError("epochs must be at least 1")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("batch sizes must be at least 1")
        if self.lr <= 0:
            raise ValueError("lr must be positive")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError("warmup_fraction must be in [0, 1)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError("label_smoothing must be in [0, 1)")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError("num_threads must be positive (or None)")


@dataclass(frozen=True)
class PretrainProgress:
    """Reported after every epoch."""

    epoch: int
    epochs: int
    step: int
    total_steps: int
    train_loss: float
    train_accuracy: float
    seconds: float


@dataclass(frozen=True)
class PretrainReport:
    """What a training run did and how well the result does on the held-out set."""

    train_seconds: float
    epochs: int
    steps: int
    num_train: int
    num_val: int
    epoch_losses: list[float]
    final_train_accuracy: float
    val_accuracy: float
    val_loss: float

    def summary(self) -> dict[str, float | int]:
        """The scalar fields, for logs and checkpoint metadata."""
        return {
            "train_seconds": round(self.train_seconds, 2),
            "epochs": self.epochs,
            "steps": self.steps,
            "num_train": self.num_train,
            "num_val": self.num_val,
            "final_train_accuracy": round(self.final_train_accuracy, 4),
            "val_accuracy": round(self.val_accuracy, 4),
            "val_loss": round(self.val_loss, 4),
        }


def learning_rate_at(config: PretrainConfig, step: int, total_steps: int) -> float:
    """The learning rate for optimizer step ``step`` (0-based) of ``total_steps``."""
    progress = step / max(total_steps - 1, 1)
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    start, end = config.lr / 25.0, config.lr / 1000.0
    warm = config.warmup_fraction
    if warm > 0 and progress < warm:
        return start + (config.lr - start) * progress / warm
    anneal = (progress - warm) / (1.0 - warm)
    return end + (config.lr - end) * 0.5 * (1.0 + math.cos(math.pi * anneal))


def train_base(
    config: PretrainConfig,
    x_train: ArrayLike,
    y_train: ArrayLike,
    x_val: ArrayLike,
    y_val: ArrayLike,
    on_progress: Callable[[PretrainProgress], None] | None = None,
) -> tuple[ResNet26, PretrainReport]:
    """Train a fresh :class:`ResNet26` on ``(x_train, y_train)``; evaluate it on ``(x_val, y_val)``.

    The same seed and data give identical weights (for a fixed torch thread count). The global
    torch random state is left as it was. The model is returned in eval mode.
    """
    xt, yt = _as_tensors(x_train, y_train, config.model)
    xv, yv = _as_tensors(x_val, y_val, config.model)
    if len(xt) == 0:
        raise ValueError("no training samples")
    previous_threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        return _train(config, xt, yt, xv, yv, on_progress)
    finally:
        torch.set_num_threads(previous_threads)


def evaluate_accuracy(model: ResNet26, x: ArrayLike, y: ArrayLike, batch_size: int = 500) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` in eval mode on ``(x, y)``; (nan, nan) when empty."""
    xt, yt = _as_tensors(x, y, model.config)
    return _evaluate(model, xt, yt, batch_size, channels_last=False)


def _train(
    config: PretrainConfig,
    xt: Tensor,
    yt: Tensor,
    xv: Tensor,
    yv: Tensor,
    on_progress: Callable[[PretrainProgress], None] | None,
) -> tuple[ResNet26, PretrainReport]:
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = ResNet26(config.model)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        # BatchNorm scales/shifts and the fc bias are not weight-decayed (standard practice).
        (no_decay if param.ndim <= 1 else decay).append(param)
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
    )
    generator = torch.Generator().manual_seed(config.seed)
    n = len(xt)
    steps_per_epoch = math.ceil(n / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    step = 0
    epoch_losses: list[float] = []
    train_accuracy = float("nan")
    model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=generator)
        loss_sum, correct = 0.0, 0
        for start in range(0, n, config.batch_size):
            index = order[start : start + config.batch_size]
            images = as_float_images(xt[index]).contiguous(memory_format=memory_format)
            labels = yt[index]
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(config, step, total_steps)
            logits = model(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(index)
            correct += int((logits.detach().argmax(1) == labels).sum())
            step += 1
        epoch_losses.append(loss_sum / n)
        train_accuracy = correct / n
        if on_progress is not None:
            on_progress(
                PretrainProgress(
                    epoch=epoch + 1,
                    epochs=config.epochs,
                    step=step,
                    total_steps=total_steps,
                    train_loss=epoch_losses[-1],
                    train_accuracy=train_accuracy,
                    seconds=time.perf_counter() - started,
                )
            )
    model.eval()
    val_accuracy, val_loss = _evaluate(model, xv, yv, config.eval_batch_size, config.channels_last)
    model = model.to(memory_format=torch.contiguous_format)
    report = PretrainReport(
        train_seconds=time.perf_counter() - started,
        epochs=config.epochs,
        steps=step,
        num_train=n,
        num_val=len(xv),
        epoch_losses=epoch_losses,
        final_train_accuracy=train_accuracy,
        val_accuracy=val_accuracy,
        val_loss=val_loss,
    )
    return model, report


def _evaluate(model: ResNet26, x: Tensor, y: Tensor, batch_size: int, channels_last: bool) -> tuple[float, float]:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    was_training = model.training
    model.eval()
    try:
        result = evaluate_batches(
            model, lambda index: as_float_images(x[index]).contiguous(memory_format=memory_format), y, batch_size
        )
    finally:
        model.train(was_training)
    return result.accuracy, result.loss


def _as_tensors(x: ArrayLike, y: ArrayLike, model_config: ModelConfig) -> tuple[Tensor, Tensor]:
    xt = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    yt = torch.from_numpy(np.asarray(y)) if isinstance(y, np.ndarray) else y
    yt = yt.to(torch.int64)
    if xt.dim() != 4 or tuple(xt.shape[1:]) != model_config.input_shape:
        raise ValueError(f"images must be (N, {', '.join(map(str, model_config.input_shape))}), got {tuple(xt.shape)}")
    if xt.dtype not in (torch.uint8, torch.float32, torch.float64):
        raise ValueError(f"images must be uint8 or float, got {xt.dtype}")
    if yt.dim() != 1 or len(yt) != len(xt):
        raise ValueError(f"labels must be (N,) with N = {len(xt)}, got {tuple(yt.shape)}")
    if len(yt) and (int(yt.min()) < 0 or int(yt.max()) >= model_config.num_classes):
        raise ValueError(f"labels must be in 0..{model_config.num_classes - 1}")
    return xt, yt
