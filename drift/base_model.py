"""The shipped base model: a ResNet-26 trained from scratch on the source half of Shapes-40.

Everything ``tbftd train-base`` needs: :func:`make_base_model` generates the source images
(subclasses 0 and 1 of every superclass, see :mod:`drift.shapes`), trains with
:func:`device.pretrain.train_base` and reports held-out source accuracy; :func:`save_base_model`
writes the checkpoint with the dataset, the result and the source statistics the drift detector
compares new samples against (``extra["source_statistics"]``, computed on the held-out source
images) in its metadata. :func:`add_source_statistics` adds those statistics to an existing base
model checkpoint without touching its weights.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from device.checkpoint import load_checkpoint, save_checkpoint
from device.inference import evaluate_batches
from device.model import ModelConfig, ResNet26
from device.pretrain import PretrainConfig, PretrainProgress, PretrainReport, train_base
from device.samples import Samples
from drift import shapes
from drift.source_stats import CHECKPOINT_KEY, SourceStatistics

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
    source_statistics: SourceStatistics | None = None

    def checkpoint_extra(self) -> dict[str, Any]:
        """Plain values for the checkpoint's ``extra`` metadata."""
        extra: dict[str, Any] = {
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
        if self.source_statistics is not None:
            extra[CHECKPOINT_KEY] = self.source_statistics.to_dict()
        return extra


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
    held_out = Samples.from_arrays(split.val.x, split.val.y)
    statistics = SourceStatistics.from_model(model, held_out, accuracy=round(pretrain.val_accuracy, 4))
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
        source_statistics=statistics,
    )
    return model, report


def save_base_model(path: str | os.PathLike[str], model: ResNet26, report: BaseModelReport) -> Path:
    """Write ``model`` as a tbftd checkpoint with ``report`` in its metadata (atomically)."""
    return save_checkpoint(path, model, extra=report.checkpoint_extra())


def add_source_statistics(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    num_val: int | None = None,
) -> SourceStatistics:
    """Add ``extra["source_statistics"]`` to the base model checkpoint at ``path`` (written to
    ``out``, default in place), computed on the same held-out source images its accuracy was
    measured on (regenerated from the seed and subclasses in its metadata). The weights are not
    changed: the state dict written is checked to be bit-identical to the one read.
    """
    checkpoint = load_checkpoint(path)
    extra = dict(checkpoint.extra)
    seed = int(extra.get("dataset_seed", 0))
    subclasses = tuple(int(k) for k in extra.get("source_subclasses", (0, 1)))
    count = int(num_val if num_val is not None else extra.get("num_val", DEFAULT_NUM_VAL))
    split = shapes.source_split(seed, n_train=0, n_val=count, source_subclasses=subclasses)
    held_out = Samples.from_arrays(split.val.x, split.val.y)
    model = checkpoint.model
    model.eval()
    accuracy = evaluate_batches(model, held_out.images, held_out.y, 500).accuracy
    statistics = SourceStatistics.from_model(model, held_out, accuracy=round(accuracy, 4), max_samples=count)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    extra[CHECKPOINT_KEY] = statistics.to_dict()
    target = Path(out) if out is not None else Path(path)
    save_checkpoint(target, model, extra=extra)
    written = load_checkpoint(target)
    after = written.model.state_dict()
    if set(after) != set(before) or any(not _bit_identical(before[k], after[k]) for k in before):
        raise RuntimeError(f"{target}: the weights changed while adding source statistics")
    return statistics


def _bit_identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    # Compare the bytes, so that even NaNs and signed zeros must match.
    return torch.equal(a.reshape(-1).contiguous().view(torch.uint8), b.reshape(-1).contiguous().view(torch.uint8))
