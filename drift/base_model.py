"""The shipped base model: a ResNet-26 trained from scratch on the source half of Shapes-40.

Everything ``tbftd train-base`` needs: :func:`make_base_model` generates the source images
(subclasses 0 and 1 of every superclass, see :mod:`drift.shapes`), trains with
:func:`device.pretrain.train_base` and reports held-out source accuracy; :func:`save_base_model`
writes the checkpoint with the dataset and the result in its metadata.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from device.checkpoint import save_checkpoint
from device.model import ModelConfig, ResNet26
from device.pretrain import PretrainConfig, PretrainProgress, PretrainReport, train_base
from drift import shapes

DATASET_NAME = "shapes-40"

#: One pass over 24,000 fresh images: about 2 minutes with data generation on two x86 cores.
DEFAULT_PRETRAIN = PretrainConfig(
    model=ModelConfig(num_classes=shapes.NUM_SUPERCLASSES),
    epochs=1,
    batch_size=128,
    lr=0.2,
)
DEFAULT_NUM_TRAIN = 24_000
DEFAULT_NUM_VAL = 2_000


@dataclass(frozen=True)
class BaseModelReport:
    """How the base model was made and how well it does on held-out source images."""

    dataset: str
    seed: int
    source_subclasses: tuple[int, ...]
    num_train: int
    num_val: int
    data_seconds: float
    train_seconds: float
    total_seconds: float
    val_accuracy: float
    pretrain: PretrainReport

    def checkpoint_extra(self) -> dict[str, Any]:
        """Plain values for the checkpoint's ``extra`` metadata."""
        return {
            "dataset": self.dataset,
            "dataset_seed": self.seed,
            "source_subclasses": list(self.source_subclasses),
            "num_train": self.num_train,
            "num_val": self.num_val,
            "val_accuracy": round(self.val_accuracy, 4),
            "data_seconds": round(self.data_seconds, 2),
            "train_seconds": round(self.train_seconds, 2),
            "total_seconds": round(self.total_seconds, 2),
            "pretrain": self.pretrain.summary(),
        }


def make_base_model(
    seed: int = 0,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    source_subclasses: Sequence[int] = (0, 1),
    config: PretrainConfig | None = None,
    on_progress: Callable[[PretrainProgress], None] | None = None,
) -> tuple[ResNet26, BaseModelReport]:
    """Generate the source data and train a base model on it; ``seed`` fixes data and training.

    ``config`` defaults to :data:`DEFAULT_PRETRAIN` (its ``seed`` is replaced by ``seed``).
    """
    started = time.perf_counter()
    split = shapes.source_split(seed, n_train=num_train, n_val=num_val, source_subclasses=source_subclasses)
    data_seconds = time.perf_counter() - started
    config = replace(config or DEFAULT_PRETRAIN, seed=seed)
    model, pretrain = train_base(config, split.train.x, split.train.y, split.val.x, split.val.y, on_progress)
    report = BaseModelReport(
        dataset=DATASET_NAME,
        seed=seed,
        source_subclasses=split.source_subclasses,
        num_train=len(split.train),
        num_val=len(split.val),
        data_seconds=data_seconds,
        train_seconds=pretrain.train_seconds,
        total_seconds=time.perf_counter() - started,
        val_accuracy=pretrain.val_accuracy,
        pretrain=pretrain,
    )
    return model, report


def save_base_model(path: str | os.PathLike[str], model: ResNet26, report: BaseModelReport) -> Path:
    """Write ``model`` as a tbftd checkpoint with ``report`` in its metadata (atomically)."""
    return save_checkpoint(path, model, extra=report.checkpoint_extra())
