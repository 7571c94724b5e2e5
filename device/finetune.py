"""The fine-tuning engine: train one block of the model, with everything else frozen.

Only the chosen block's parameters get gradients and optimizer state. The frozen stages in front
of it run once per job (see :mod:`device.prefix_cache`); those behind it run every step so that the
loss can reach the block.

BatchNorm modes:

- ``adapt`` (default): before training, every BatchNorm layer's running statistics are re-estimated
  on the job's training samples (forward passes only, as the ``bn`` strategy does), so the frozen
  prefix normalises with target statistics. During training the block's BatchNorm layers run in
  train mode; the suffix's keep following the target data (their running statistics are updated
  from every training batch, see :class:`~device.batchnorm.RunningStatisticsTracker`) but
  normalise in eval mode. Unlike the paper, frozen layers never normalise with per-batch
  statistics: that keeps the prefix deterministic and cacheable, and spares the suffix the backward
  pass through batch statistics, which costs as much as its convolutions' on a CPU.
- ``frozen``: frozen layers keep the source statistics (eval mode), as surgical fine-tuning does;
  only the block's own BatchNorm layers follow the target data.
- ``adapted``: the statistics were already re-estimated on these samples (a ``bn`` step just ran):
  as ``adapt``, without the forward passes that would estimate them again.
- ``train``: the paper's own loop: after the re-estimation, every layer trains in train mode, so
  every BatchNorm layer normalises with the batch's statistics, the gradient flows through them,
  and their running statistics follow the target data step by step. Nothing in front of the block
  can be cached. Dearer per step behind the block, and on real input drift the accuracy ``block1``
  needs (CIFAR-10 gaussian noise 5: the paper's loop 73.6% against 62.8% in ``adapt``).

``track_suffix_statistics=False`` keeps the suffix's statistics where ``adapt``/``adapted`` left
them for the whole job. Tracked statistics move without the gradient knowing (nothing
back-propagates through them), so every step optimises against a normalisation that then shifts;
in batches of 16 that feedback made the paper's CIFAR-10 checkpoint lose accuracy epoch after
epoch (block1 on gaussian noise 3: 61% → 21% test over five epochs), while with the statistics
held it climbed (57% → 73%).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F

from device.batchnorm import RunningStatisticsTracker, StopRequested, batchnorm_layers, recalibrate_batchnorm
from device.blocks import BlockSpec, block_modules, block_state_keys, get_block, stage_module_list
from device.inference import Evaluation, evaluate_batches
from device.model import STAGES, ResNet26
from device.prefix_cache import DEFAULT_CACHE_BUDGET_BYTES, FeatureSource, build_prefix_source
from device.samples import Samples

BNMode = Literal["adapt", "frozen", "train", "adapted"]
#: The modes a job's settings choose from; ``adapted`` is set by a ladder after its ``bn`` step.
BN_MODES: tuple[str, ...] = ("adapt", "frozen", "train")


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning settings; the defaults are the paper's.

    ``lr`` None means 1e-3, or 1e-2 for ``fc`` (the classifier needs the larger step, as in the
    paper). ``patience`` None disables early stopping. ``min_gain`` (a fraction of validation
    accuracy; 0 disables) ends training, once ``min_epochs`` have run, after the first epoch that
    raised validation accuracy by less than that: more epochs only while they still pay.
    ``loss_tolerance`` (a fraction; 0 keeps the lowest) chooses the weights kept: those of the
    latest epoch whose validation loss is within that fraction above the lowest seen. On a few
    hundred validation samples a difference that small is noise, and the later weights have
    learned from more passes over the data. Early stopping still counts epochs that set no new
    lowest loss.
    ``micro_batch_size`` splits each batch into forward/backward passes of at most that many
    samples whose gradients are accumulated before the step: the optimizer sees the same batch,
    peak activation memory shrinks in proportion; only BatchNorm layers in train mode see the
    smaller batches. ``cache_budget_bytes`` bounds the memory spent on cached prefix activations
    (training and validation together); ``cache_spill_dir`` lets activations over the budget go to
    a temporary file there instead of being recomputed.
    ``bn_samples`` bounds how many training samples (a seeded random subset) re-estimate BatchNorm
    statistics: the estimates settle long before a thousand samples, and every sample costs a
    full forward pass (None: all of them). ``track_suffix_statistics`` (``adapt``/``adapted``
    only): whether the statistics behind the block follow the training batches (see the module's
    docstring for why a short small-batch job holds them instead). ``channels_last`` runs the
    job's convolutions in the NHWC memory layout (the same arithmetic in another order; the model
    is handed back in the default layout): on x86 with one thread an epoch took 0.76–0.98 of the
    default layout's CPU time (``bench/finetune.py --layouts both``; README, *Fine-tuning profiles*).
    """

    epochs: int = 10
    batch_size: int = 128
    micro_batch_size: int | None = None
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    patience: int | None = 5
    min_gain: float = 0.0
    min_epochs: int = 1
    loss_tolerance: float = 0.0
    bn_mode: BNMode = "adapt"
    seed: int = 0
    cache_budget_bytes: int = DEFAULT_CACHE_BUDGET_BYTES
    cache_spill_dir: str | None = None
    eval_batch_size: int = 256
    bn_samples: int | None = 512
    track_suffix_statistics: bool = True
    channels_last: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError("epochs must be at least 1")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("batch sizes must be at least 1")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ValueError("micro_batch_size must be at least 1 (or None for whole batches)")
        if self.lr is not None and self.lr <= 0:
            raise ValueError("lr must be positive")
        if self.patience is not None and self.patience < 1:
            raise ValueError("patience must be at least 1 (or None to disable early stopping)")
        if not 0.0 <= self.min_gain <= 1.0 or self.min_epochs < 1:
            raise ValueError("min_gain must be a fraction in 0..1 and min_epochs at least 1")
        if not 0.0 <= self.loss_tolerance <= 1.0:
            raise ValueError("loss_tolerance must be a fraction in 0..1")
        if self.bn_mode not in (*BN_MODES, "adapted"):
            raise ValueError(f"bn_mode must be one of {BN_MODES} (or 'adapted'), got {self.bn_mode!r}")
        if self.cache_budget_bytes < 0:
            raise ValueError("cache_budget_bytes must not be negative")
        if self.bn_samples is not None and self.bn_samples < 1:
            raise ValueError("bn_samples must be at least 1 (or None for all samples)")

    def learning_rate(self, block: str) -> float:
        """The learning rate used for ``block``."""
        if self.lr is not None:
            return self.lr
        return 1e-2 if block == "fc" else 1e-3


@dataclass(frozen=True)
class Progress:
    """One progress report: sent after every training batch and after each epoch's validation."""

    phase: Literal["prepare", "train", "validate"]
    epoch: int
    epochs: int
    batch: int
    batches: int
    loss: float
    samples_per_second: float
    val_loss: float | None = None
    val_accuracy: float | None = None


@dataclass
class FinetuneResult:
    """What a job did. Accuracies are fractions (0..1) on the validation samples."""

    block: str
    bn_mode: str
    accuracy_before: float
    accuracy_after: float
    loss_before: float
    loss_after: float
    epochs_run: int
    best_epoch: int
    seconds: float
    cpu_seconds: float
    samples_seen: int
    cancelled: bool
    cache: str
    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    val_accuracies: list[float] = field(default_factory=list)
    block_state: dict[str, Tensor] = field(default_factory=dict)

    def summary(self) -> dict[str, float | int | str | bool]:
        """The scalar fields, for logs and JSON."""
        return {
            "block": self.block,
            "bn_mode": self.bn_mode,
            "accuracy_before": self.accuracy_before,
            "accuracy_after": self.accuracy_after,
            "loss_before": self.loss_before,
            "loss_after": self.loss_after,
            "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "samples_seen": self.samples_seen,
            "cancelled": self.cancelled,
            "cache": self.cache,
        }


def keeps_epoch(loss: float, lowest_loss: float, tolerance: float) -> bool:
    """Whether an epoch's validation ``loss`` replaces the weights kept so far: it is below the
    ``lowest_loss`` of the epochs before it, or within ``tolerance`` (a fraction) above it.

    Applied epoch by epoch, the kept weights are those of the latest epoch within tolerance of the
    lowest loss: a later epoch that sets a new lowest is later still."""
    return loss < lowest_loss or (tolerance > 0 and loss <= lowest_loss * (1.0 + tolerance))


#: Stands in for an evaluation that a cancelled job never reached.
_NOT_EVALUATED = Evaluation(loss=float("nan"), accuracy=float("nan"), count=0)

ProgressCallback = Callable[[Progress], None]
StopCheck = Callable[[], bool]


def finetune(
    model: ResNet26,
    block: str,
    train: Samples,
    val: Samples,
    config: FinetuneConfig | None = None,
    on_progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    before: Evaluation | None = None,
) -> FinetuneResult:
    """Fine-tune ``block`` of ``model`` in place on ``train``, selecting weights on ``val``.

    On return the model holds the best-validation weights (the starting point counts as epoch 0,
    so a job never leaves the model worse on ``val`` than where training began). ``should_stop`` is
    checked before every batch; when it answers True the model is restored to exactly its state
    before the call and the result has ``cancelled=True``. The model is left in eval mode with
    every parameter's ``requires_grad`` restored. ``before`` is the caller's own evaluation of the
    model as it is on ``val`` (a ladder has it from the step before): the job then does not repeat it.
    """
    config = config or FinetuneConfig()
    spec = get_block(block)
    if len(train) == 0 or len(val) == 0:
        raise ValueError("fine-tuning needs at least one training and one validation sample")
    expected = model.config.input_shape
    for name, samples in (("train", train), ("val", val)):
        if tuple(samples.x.shape[1:]) != expected:
            raise ValueError(f"{name} images have shape {tuple(samples.x.shape[1:])}, the model expects {expected}")

    started = time.perf_counter()
    cpu_started = time.process_time()
    torch.manual_seed(config.seed)
    original_state = copy.deepcopy(model.state_dict())
    original_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    run = _Run(model, spec, train, val, config, on_progress, should_stop)
    run.before = before
    try:
        result = run.execute()
    except StopRequested:
        model.load_state_dict(original_state)
        result = run.cancelled_result()
    finally:
        run.close()
        for name, p in model.named_parameters():
            p.requires_grad_(original_grad[name])
        model.to(memory_format=torch.contiguous_format)
        model.eval()
    result.seconds = time.perf_counter() - started
    result.cpu_seconds = time.process_time() - cpu_started
    return result


class _Run:
    """The state of one fine-tuning call."""

    def __init__(
        self,
        model: ResNet26,
        spec: BlockSpec,
        train: Samples,
        val: Samples,
        config: FinetuneConfig,
        on_progress: ProgressCallback | None,
        should_stop: StopCheck | None,
    ) -> None:
        self.model = model
        self.spec = spec
        self.train = train
        self.val = val
        self.config = config
        self.on_progress = on_progress
        self.should_stop = should_stop
        self.sources: list[FeatureSource] = []
        self.before: Evaluation | None = None
        self._best_state: dict[str, Tensor] = {}
        self.epochs_run = 0
        self.samples_seen = 0
        self.train_losses: list[float] = []
        self.val_losses: list[float] = []
        self.val_accuracies: list[float] = []

    def check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise StopRequested

    def report(self, progress: Progress) -> None:
        if self.on_progress is not None:
            self.on_progress(progress)

    def close(self) -> None:
        for source in self.sources:
            source.close()
        self.sources.clear()

    def execute(self) -> FinetuneResult:
        model, spec, config = self.model, self.spec, self.config
        model.eval()
        if not spec.trains_weights:
            self._evaluate_before(model, self.val.images)
            recalibrate_batchnorm(model, self._bn_subset(), config.eval_batch_size, self.should_stop)
            model.eval()
            after = evaluate_batches(model, self.val.images, self.val.y, config.eval_batch_size)
            self.samples_seen = min(len(self.train), config.bn_samples or len(self.train))
            return self.result(after, best_epoch=1, cache="none", epochs_run=1)

        # Statistics start from the target data, and the prefix's must be final before caching.
        # A whole-model job adapts them by training in train mode, as plain fine-tuning does.
        recalibrated = config.bn_mode in ("adapt", "train") and spec.name != "full"
        if recalibrated:
            self._evaluate_before(model, self.val.images)
            recalibrate_batchnorm(model, self._bn_subset(), config.eval_batch_size, self.should_stop)
        for p in model.parameters():
            p.requires_grad_(False)
        trainable = [p for module in block_modules(model, spec) for p in module.parameters()]
        for p in trainable:
            p.requires_grad_(True)
        if config.channels_last:
            model.to(memory_format=torch.channels_last)

        model.eval()
        # In ``train`` mode the prefix normalises with each batch's statistics and moves its running
        # statistics as it goes: its outputs change from step to step, so nothing can be cached.
        budget = 0 if config.bn_mode == "train" else config.cache_budget_bytes
        train_source = self._source(self.train, budget)
        val_source = self._source(self.val, max(0, budget - train_source.memory_bytes))

        def tail(features: Tensor) -> Tensor:
            if config.channels_last and features.dim() == 4:
                features = features.contiguous(memory_format=torch.channels_last)
            return model.forward_stages(features, spec.start, len(STAGES))

        if recalibrated:
            # Re-estimated statistics changed the model: evaluate it as training starts.
            best = evaluate_batches(tail, val_source.batch, self.val.y, config.eval_batch_size)
        else:
            # The model is still the one to evaluate "before": read the cached prefix, not the model twice.
            best = self._evaluate_before(tail, val_source.batch)
        self._best_state = copy.deepcopy(model.state_dict())
        optimizer = torch.optim.SGD(
            trainable,
            lr=config.learning_rate(spec.name),
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        generator = torch.Generator().manual_seed(config.seed)
        batches = -(-len(self.train) // config.batch_size)
        follows_target = config.bn_mode in ("adapt", "adapted") and config.track_suffix_statistics
        tracked = batchnorm_layers(stage_module_list(model, spec.suffix_stages)) if follows_target else []
        with RunningStatisticsTracker(tracked):
            best, best_epoch = self._train_epochs(tail, train_source, val_source, optimizer, generator, best, batches)
        model.load_state_dict(self._best_state)
        return self.result(best, best_epoch=best_epoch, cache=train_source.kind, epochs_run=self.epochs_run)

    def _evaluate_before(self, forward: Callable[[Tensor], Tensor], images: Callable[[Tensor], Tensor]) -> Evaluation:
        """The model on ``val`` as the job found it (unless the caller evaluated it already), reported."""
        if self.before is None:
            self.before = evaluate_batches(forward, images, self.val.y, self.config.eval_batch_size)
        self.report(Progress("prepare", 0, self.config.epochs, 0, 0, float("nan"), 0.0,
                             self.before.loss, self.before.accuracy))
        self.check_stop()
        return self.before

    def _train_epochs(
        self,
        tail: Callable[[Tensor], Tensor],
        train_source: FeatureSource,
        val_source: FeatureSource,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        best: Evaluation,
        batches: int,
    ) -> tuple[Evaluation, int]:
        """The epoch loop with early stopping; keeps the best weights in ``self._best_state``."""
        model, config = self.model, self.config
        best_epoch = 0
        since_best = 0
        lowest_loss = best.loss
        previous_accuracy = best.accuracy
        for epoch in range(1, config.epochs + 1):
            self._set_train_modes()
            order = torch.randperm(len(self.train), generator=generator)
            epoch_loss = 0.0
            epoch_started = time.perf_counter()
            seen = 0
            micro = config.micro_batch_size or config.batch_size
            for batch_number, index in enumerate(order.split(config.batch_size), start=1):
                self.check_stop()
                optimizer.zero_grad(set_to_none=True)
                batch_loss = 0.0
                for part in index.split(micro):
                    logits = tail(train_source.batch(part))
                    # Summed and divided by the whole batch: the accumulated gradient is the batch mean's.
                    loss = F.cross_entropy(logits, self.train.y[part], reduction="sum") / int(index.shape[0])
                    loss.backward()
                    batch_loss += loss.item()
                optimizer.step()
                seen += int(index.shape[0])
                epoch_loss += batch_loss * int(index.shape[0])
                rate = seen / max(time.perf_counter() - epoch_started, 1e-9)
                self.report(Progress("train", epoch, config.epochs, batch_number, batches, batch_loss, rate))
            self.samples_seen += seen
            self.epochs_run = epoch
            self.train_losses.append(epoch_loss / seen)

            model.eval()
            evaluation = evaluate_batches(tail, val_source.batch, self.val.y, config.eval_batch_size)
            self.val_losses.append(evaluation.loss)
            self.val_accuracies.append(evaluation.accuracy)
            self.report(
                Progress("validate", epoch, config.epochs, batches, batches, self.train_losses[-1],
                         seen / max(time.perf_counter() - epoch_started, 1e-9), evaluation.loss, evaluation.accuracy)
            )
            gain = evaluation.accuracy - previous_accuracy
            previous_accuracy = evaluation.accuracy
            if keeps_epoch(evaluation.loss, lowest_loss, config.loss_tolerance):
                best, best_epoch = evaluation, epoch
                self._best_state = copy.deepcopy(model.state_dict())
            if evaluation.loss < lowest_loss:
                lowest_loss, since_best = evaluation.loss, 0
            else:
                since_best += 1
                if config.patience is not None and since_best >= config.patience:
                    break
            if config.min_gain > 0 and epoch >= config.min_epochs and gain < config.min_gain:
                break
        return best, best_epoch

    def _bn_subset(self) -> Samples:
        """The training samples that re-estimate BatchNorm statistics (see ``bn_samples``)."""
        limit = self.config.bn_samples
        if limit is None or limit >= len(self.train):
            return self.train
        generator = torch.Generator().manual_seed(self.config.seed + 1)
        return self.train.subset(torch.randperm(len(self.train), generator=generator)[:limit])

    def _source(self, samples: Samples, budget_bytes: int) -> FeatureSource:
        source = build_prefix_source(
            self.model,
            samples,
            self.spec.start,
            budget_bytes,
            spill_dir=self.config.cache_spill_dir,
            batch_size=self.config.eval_batch_size,
            should_stop=self.should_stop,
        )
        self.sources.append(source)
        return source

    def _set_train_modes(self) -> None:
        """Frozen stages in eval mode (the suffix's statistics tracked in ``adapt``); the block in
        train mode; in ``train`` mode every layer, as the paper's loop."""
        if self.config.bn_mode == "train":
            self.model.train()
            return
        self.model.eval()
        for module in block_modules(self.model, self.spec):
            module.train()

    def result(
        self, after: Evaluation, best_epoch: int, cache: str, epochs_run: int, cancelled: bool = False
    ) -> FinetuneResult:
        before = self.before or _NOT_EVALUATED
        block_state: dict[str, Tensor] = {}
        if not cancelled:
            state = self.model.state_dict()
            block_state = {k: state[k].detach().contiguous().clone() for k in block_state_keys(self.model, self.spec)}
        return FinetuneResult(
            block=self.spec.name,
            bn_mode=self.config.bn_mode,
            accuracy_before=before.accuracy,
            accuracy_after=after.accuracy,
            loss_before=before.loss,
            loss_after=after.loss,
            epochs_run=epochs_run,
            best_epoch=best_epoch,
            seconds=0.0,
            cpu_seconds=0.0,
            samples_seen=self.samples_seen,
            cancelled=cancelled,
            cache=cache,
            train_losses=list(self.train_losses),
            val_losses=list(self.val_losses),
            val_accuracies=list(self.val_accuracies),
            block_state=block_state,
        )

    def cancelled_result(self) -> FinetuneResult:
        """The model was restored: "after" is "before", and no block state is handed out."""
        cache = self.sources[0].kind if self.sources else "none"
        return self.result(self.before or _NOT_EVALUATED, 0, cache, self.epochs_run, cancelled=True)
