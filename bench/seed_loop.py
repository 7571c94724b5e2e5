"""The paper's own fine-tuning loop, transcribed as a harness: the yardstick tbftd's engine is timed against.

What the paper's CIFAR-10-C script does (its protocol in ``shared/notes/tbft.md``), written here
as plainly as it runs there: the whole model in train mode (every BatchNorm layer normalises with
batch statistics and updates its running statistics, even in frozen blocks), only the chosen
block's parameters trainable, SGD with momentum 0.9 and weight decay 5e-4, shuffled batches of 128
from a ``DataLoader``, lr 1e-3 (1e-2 for ``fc``), at most 10 epochs, a validation pass after each
epoch, early stopping after 5 epochs without a lower validation loss, and the best-validation
weights kept. No prefix caching, no re-estimation pass, no evaluation before training.

Only the model is tbftd's (the same pre-activation ResNet-26, the same normalisation inside it), so
the two loops differ in the loop alone. Used by ``bench/finetune.py --seed-loop``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from device.blocks import block_modules
from device.model import ResNet26


@dataclass
class SeedRun:
    """What the seed's loop did: validation accuracy (fraction) of the kept weights, and its cost."""

    val_accuracy: float
    epochs_run: int
    best_epoch: int
    seconds: float
    cpu_seconds: float


def _validate(model: nn.Module, loader: DataLoader) -> tuple[float, float]:
    model.eval()
    loss, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            logits = model(x)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            count += int(y.shape[0])
    return loss / count, correct / count


def seed_finetune(
    model: ResNet26,
    block: str,
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    epochs: int = 10,
    patience: int | None = 5,
    batch_size: int = 128,
    seed: int = 0,
) -> SeedRun:
    """Fine-tune ``block`` of ``model`` in place the way the paper's script does; images are float in [0, 1]."""
    started, cpu_started = time.perf_counter(), time.process_time()
    torch.manual_seed(seed)
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = [p for module in block_modules(model, block) for p in module.parameters()]
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.SGD(trainable, lr=1e-2 if block == "fc" else 1e-3, momentum=0.9, weight_decay=5e-4)
    train_loader = DataLoader(TensorDataset(train_x, train_y), batch_size=batch_size, shuffle=True)
    val_loader = DataLoader(TensorDataset(val_x, val_y), batch_size=batch_size)
    best_loss, best_accuracy, best_epoch, since_best = float("inf"), 0.0, 0, 0
    best_state = copy.deepcopy(model.state_dict())
    epoch = 0
    for epoch in range(1, epochs + 1):
        model.train()
        for x, y in train_loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        val_loss, val_accuracy = _validate(model, val_loader)
        if val_loss < best_loss:
            best_loss, best_accuracy, best_epoch, since_best = val_loss, val_accuracy, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            since_best += 1
            if patience is not None and since_best >= patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return SeedRun(best_accuracy, epoch, best_epoch, time.perf_counter() - started, time.process_time() - cpu_started)
