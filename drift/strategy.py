"""Energy-aware adaptation: run the cheapest strategy for a drift type first, escalate only if needed.

For each drift type a *ladder* lists strategies cheapest first (``bn`` re-estimates BatchNorm
statistics with forward passes only; the blocks fine-tune). :func:`adapt` runs the ladder on the
model in place and climbs to the next rung only while the validation accuracy is still short of
the target and the energy budget allows. A rung that makes validation worse is reverted, so the
model never ends worse on validation than it started. Every rung's cost (seconds, CPU seconds,
joules when a meter is fed in) and gain are recorded.

Pure learner code: the daemon feeds in its meter (``energy_used``) and its stop flag.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, get_args, get_type_hints

from torch import Tensor

from device.blocks import BLOCK_NAMES
from device.finetune import FinetuneConfig, Progress, finetune, keeps_epoch
from device.inference import Evaluation, evaluate_batches
from device.model import ResNet26
from device.profiles import DEFAULT_PROFILE, rung_settings
from device.samples import Samples
from drift.detect import Detection, DetectorConfig, detect
from drift.source_stats import SourceStatistics

#: The default ladders, cheapest first. Measured with ``bench/calibrate_detector.py --ladders``
#: (Shapes-40, 1,000 training samples, validation accuracy): ``bn`` costs about 5% of a block1
#: job; on input drift it recovers 28–41 points of noise (gaussian 3: 35 → 64) but leaves them
#: 20+ points short of block1 (gaussian 3: 84), while on mild photometric shifts it comes within
#: a point or two of the source level (fog 3: 84 → 91), where the ladder stops. On new
#: sub-populations it gains 3 points (63 → 66) and on relabelled outputs nothing, and every block
#: job re-estimates the statistics first anyway (``bn_mode="adapt"``), so feature and output drift
#: go straight to their block. Output drift stops at ``fc``: block3 after it would cost three
#: times as much for the last points (fc alone recovers a flip to ~90%).
DEFAULT_LADDERS: dict[str, tuple[str, ...]] = {
    "input": ("bn", "block1"),
    "feature": ("block3",),
    "output": ("fc",),
    "none": (),
}
#: Default tolerance under the source accuracy that counts as recovered (fraction: 0.02 = 2 points).
DEFAULT_TOLERANCE = 0.02
#: Shortfall to the target (fraction) under which the next rung is not worth its energy.
DEFAULT_MIN_SHORTFALL = 0.01
#: Fine-tuning settings of each rung, over the job's (``FinetuneConfig`` fields): the ``tbftd``
#: profile of :mod:`device.profiles`, which hinted jobs run with too, except that the ladder's
#: block1 and block2 take a third epoch only while the second still paid (``min_gain``, below): a
#: ladder has a target to stop at, a hinted job has not. ``batch_size``
#: replaces the job's, ``epochs`` only ever lowers it, ``lr`` applies only when the job leaves the
#: learning rate to the engine. Why small batches: on a CPU a sample costs the same time whatever
#: the batch it is in, while SGD progresses per step, and the paper's 128-sample batches give a few
#: hundred buffered samples only three steps an epoch. Measured with ``bench/drift.py`` scenarios
#: (Shapes-40, 300 training samples, test accuracy against the paper's settings, 10 epochs of 128):
#: block1 with batches of 16 for 2 epochs is within a point of them on gaussian noise 5 (76.4 vs
#: 76.8), contrast 5 (78.6 vs 78.6), fog 5 (74.0 vs 74.0), shot noise 5 (79.0 vs 79.4) and above it
#: on impulse noise 3 (65.8 vs 63.8), for 0.3 of the CPU time (one epoch loses 2.6 points on
#: gaussian noise 5); block3 for 3 epochs matches it on new sub-populations (74.4 vs 73.0, 86.2 vs
#: 84.8) for 0.55 of the time; fc, whose epochs run on cached features and cost almost nothing,
#: learns a relabelling the paper's batches leave unlearnt in 10 epochs (a flip: 92.4 vs 24.8).
#: block1 (on a CPU as dear per epoch as the whole model) takes a third epoch only when its second
#: still raised validation accuracy by 2 points (``min_gain``): per-epoch curves of 12 input
#: scenarios on each of Shapes-40 and CIFAR-10 show a third epoch paying where the second still
#: climbed (contrast 5: 65.9 → 78.8 test; 78.9 → 84.8 with the statistics held, see below) and
#: buying nothing elsewhere; 3 of 12 Shapes scenarios and 5 of 12 CIFAR-10 ones took it with the
#: statistics tracked, 8 of 11 and 9 of 13 ``bench/drift`` runs of the rung with them held (its
#: second epoch now gains more). BatchNorm statistics are estimated on 128 samples
#: (``bn_samples``): on 26 input and feature scenarios of the two suites, ``bn`` on 128 samples
#: is 0.1 points under ``bn`` on all 300 on average (within 1.6 points either way on 25, 3.2 under
#: on CIFAR-10 pixelate 3), for 70% of its CPU time. Of its two or three epochs the rung keeps the
#: latest within 10% of the lowest validation loss (``loss_tolerance``): on Shapes gaussian noise 5
#: the lowest of 150 validation images picked the first epoch (73.9% test) over the second (77.5%).
#: Raising the cap to 5 epochs bought nothing on the misses (contrast 5 stops on ``min_gain`` after
#: its second epoch) and cost up to 0.6 of ``full`` where the epochs kept paying a little.
#: The statistics behind the block stay where ``bn`` put them (``track_suffix_statistics``; why,
#: with the CIFAR-10 curves, in ``device/finetune.py``'s docstring): on Shapes-40 contrast 5
#: reaches 78.9% in two epochs held against 65.9% tracked, and on CIFAR-10 contrast 5 ends at 78%
#: held where tracked it fell from 65% to 28%. Held statistics also spare the tracking hooks' work
#: in every training step.
#: The ladder's early rungs keep the settings its tables were measured with (README, *Drift without
#: a hint*): the job's BatchNorm mode (``adapt``, and ``adapted`` after a ``bn`` rung, which it
#: then does not repeat) where a hinted block1 job trains in ``train`` mode.
_LADDER_EARLY_RUNG: dict[str, Any] = {"min_epochs": 2, "min_gain": 0.02}
DEFAULT_RUNG_SETTINGS: dict[str, dict[str, Any]] = {
    strategy: {k: v for k, v in settings.items() if k != "bn_mode"} | _LADDER_EARLY_RUNG
    if strategy in ("block1", "block2") else settings
    for strategy, settings in rung_settings(DEFAULT_PROFILE).items()
}
#: ``FinetuneConfig`` fields that take whole numbers (rung settings may give them as floats).
_INTEGER_SETTINGS = frozenset(
    name for name, hint in get_type_hints(FinetuneConfig).items() if hint is int or int in get_args(hint)
)
#: Every rung with the job's own settings (the paper's, by default): the baselines' settings.
PAPER_RUNG_SETTINGS: dict[str, dict[str, Any]] = {}
#: Relabel gain (see :data:`drift.detect.RELABEL_GAIN`) from which a ladder for input or feature
#: drift ends with ``fc``: below the output threshold, but a consistent confusion beside the
#: detected drift, as when a corruption and a relabelling arrive together (contrast 5 with a
#: permutation gains 0.09; input drift alone ≤ 0.02 in calibration). The classifier is the cheapest
#: rung there is, runs only while still short of the target, and is reverted when it does not help.
RELABEL_HINT = 0.05
#: Early stopping of every rung: epochs end once validation loss has not improved for this many.
DEFAULT_PATIENCE = 3


@dataclass(frozen=True)
class AdaptConfig:
    """How :func:`adapt` climbs a ladder.

    ``target_accuracy`` is the validation accuracy (0..1) at which escalation stops; None means
    the source accuracy minus ``tolerance`` (and when that is unknown too, the whole ladder runs).
    Escalation also stops once the shortfall is at most ``min_shortfall``: the next rung costs far
    more than the gain could be worth. ``budget_joules`` stops escalation once ``energy_used()``
    exceeds it, and stops training at the end of the epoch in which it is exceeded.
    ``relabel_hint`` appends ``fc`` to an input or feature ladder whose detection shows that much
    relabel gain (see :data:`RELABEL_HINT`; None: never).
    ``finetune`` is the job's fine-tuning configuration; ``rung_settings`` adjusts it per strategy
    (see :data:`DEFAULT_RUNG_SETTINGS`; :data:`PAPER_RUNG_SETTINGS`, ``{}``, runs every rung with
    ``finetune`` as is).
    """

    target_accuracy: float | None = None
    tolerance: float = DEFAULT_TOLERANCE
    min_shortfall: float = DEFAULT_MIN_SHORTFALL
    budget_joules: float | None = None
    relabel_hint: float | None = RELABEL_HINT
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(patience=DEFAULT_PATIENCE))
    ladders: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_LADDERS))
    rung_settings: Mapping[str, Mapping[str, Any]] = field(
        default_factory=lambda: {k: dict(v) for k, v in DEFAULT_RUNG_SETTINGS.items()}
    )

    def __post_init__(self) -> None:
        if self.target_accuracy is not None and not 0.0 <= self.target_accuracy <= 1.0:
            raise ValueError("target_accuracy must be a fraction in 0..1")
        if self.tolerance < 0 or self.min_shortfall < 0:
            raise ValueError("tolerance and min_shortfall must not be negative")
        if self.budget_joules is not None and self.budget_joules < 0:
            raise ValueError("budget_joules must not be negative")
        if self.relabel_hint is not None and self.relabel_hint < 0:
            raise ValueError("relabel_hint must not be negative (or None)")
        for drift, ladder in self.ladders.items():
            for strategy in ladder:
                if strategy not in BLOCK_NAMES:
                    raise ValueError(f"ladder for {drift!r}: unknown strategy {strategy!r}; choose from {BLOCK_NAMES}")
        known = set(FinetuneConfig.__dataclass_fields__)
        for strategy, settings in self.rung_settings.items():
            unknown = set(settings) - known
            if strategy not in BLOCK_NAMES or unknown:
                raise ValueError(f"rung settings for {strategy!r}: unknown strategy or fields {sorted(unknown)}")

    def finetune_for(self, strategy: str) -> FinetuneConfig:
        """The fine-tuning configuration of one rung: ``finetune`` with ``rung_settings`` applied."""
        settings: dict[str, Any] = {
            k: int(v) if k in _INTEGER_SETTINGS else v for k, v in self.rung_settings.get(strategy, {}).items()
        }
        if "lr" in settings and self.finetune.lr is not None:
            del settings["lr"]
        if "epochs" in settings:
            settings["epochs"] = min(settings["epochs"], self.finetune.epochs)
        return replace(self.finetune, **settings) if settings else self.finetune

    def target(self, source: SourceStatistics | None) -> float | None:
        """The validation accuracy to reach, or None when neither a target nor the source level is known."""
        if self.target_accuracy is not None:
            return self.target_accuracy
        if source is not None and source.accuracy is not None:
            return max(0.0, source.accuracy - self.tolerance)
        return None


@dataclass(frozen=True)
class StepResult:
    """One rung: what it cost and what it gained (accuracies on validation, fractions)."""

    strategy: str
    accuracy_before: float
    accuracy_after: float
    seconds: float
    cpu_seconds: float
    joules: float | None
    epochs: int
    kept: bool
    reason: str
    loss_before: float = float("nan")
    loss_after: float = float("nan")
    stopped_by_budget: bool = False
    lr: float | None = None
    max_epochs: int = 0

    @property
    def gain(self) -> float:
        """Accuracy points (fraction) this rung added to the model it left behind."""
        return self.accuracy_after - self.accuracy_before if self.kept else 0.0


@dataclass
class AdaptResult:
    """Everything :func:`adapt` (or :func:`detect_and_adapt`) did, in order."""

    detection: Detection | None
    steps: list[StepResult]
    accuracy_before: float
    accuracy_after: float
    cancelled: bool
    stopped_by_budget: bool
    drift_type: str = "none"
    ladder: list[str] = field(default_factory=list)
    target_accuracy: float | None = None
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    joules: float | None = None
    detection_joules: float | None = None
    reason: str = ""

    @property
    def strategies(self) -> list[str]:
        """The strategies whose weights were kept, in order."""
        return [step.strategy for step in self.steps if step.kept]

    def to_dict(self) -> dict[str, Any]:
        """A plain-JSON form (the detection included)."""
        data = asdict(self)
        data["detection"] = None if self.detection is None else self.detection.to_dict()
        data["kept"] = self.strategies
        return data


EnergyMeter = Callable[[], float]


def plan(drift_type: str, ladders: Mapping[str, tuple[str, ...]] | None = None) -> list[str]:
    """The ladder for ``drift_type`` (input / feature / output / none), cheapest first."""
    ladders = DEFAULT_LADDERS if ladders is None else ladders
    if drift_type not in ladders:
        raise ValueError(f"no ladder for drift type {drift_type!r}; known: {', '.join(ladders)}")
    return list(ladders[drift_type])


def adapt(
    model: ResNet26,
    train: Samples,
    val: Samples,
    drift_type: str,
    source: SourceStatistics | None,
    config: AdaptConfig | None = None,
    energy_used: EnergyMeter | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[StepResult], None] | None = None,
    detection: Detection | None = None,
) -> AdaptResult:
    """Run the ladder of ``drift_type`` on ``model`` in place, cheapest first.

    Escalates only while validation accuracy is short of the target and ``energy_used()`` (joules
    this job has used so far; None: no budget, CPU seconds only) is within the budget. A rung that
    lowers validation accuracy is reverted. When ``should_stop`` answers True the model is restored
    to its state before the call and the result says ``cancelled``.
    """
    config = config or AdaptConfig()
    ladder = plan(drift_type, config.ladders)
    if _labels_disagree_too(detection, config) and drift_type in ("input", "feature") and "fc" not in ladder:
        ladder.append("fc")
    if len(val) == 0 or (ladder and len(train) == 0):
        raise ValueError("adaptation needs validation samples, and training samples when there is a ladder to climb")
    started = time.perf_counter()
    cpu_started = time.process_time()
    joules_started = energy_used() if energy_used is not None else None
    original = copy.deepcopy(model.state_dict())
    model.eval()
    current = _evaluate(model, val, config.finetune.eval_batch_size)
    target = config.target(source)
    result = AdaptResult(
        detection=detection,
        steps=[],
        accuracy_before=current.accuracy,
        accuracy_after=current.accuracy,
        cancelled=False,
        stopped_by_budget=False,
        drift_type=drift_type,
        ladder=ladder,
        target_accuracy=target,
    )
    result.reason = "no drift: nothing to adapt" if not ladder else "ladder climbed to the top"
    # Once a kept rung has re-estimated the BatchNorm statistics on these samples, later rungs
    # start from them instead of spending the same forward passes again.
    adapted = False
    for rung, strategy in enumerate(ladder):
        reason = _reason_to_stop(current.accuracy, target, config, energy_used)
        if reason == "budget":
            result.stopped_by_budget = True
            result.reason = f"energy budget of {config.budget_joules} J spent before {strategy}"
            break
        if reason == "target":
            result.reason = (f"validation accuracy {current.accuracy:.3f} is within {config.min_shortfall:.3f} "
                             f"of the target {target:.3f}" + (f" after {ladder[rung - 1]}" if rung else ""))
            break
        if should_stop is not None and should_stop():
            result.cancelled = True
            break
        step, current = _run_step(model, strategy, train, val, current, config, energy_used, on_progress, should_stop,
                                   adapted)
        if step is None:
            result.cancelled = True
            break
        adapted = adapted or (step.kept and config.finetune.bn_mode == "adapt")
        result.steps.append(step)
        if on_step is not None:
            on_step(step)
        if step.stopped_by_budget:
            result.stopped_by_budget = True
            result.reason = f"energy budget of {config.budget_joules} J spent during {strategy}"
            break

    if result.cancelled:
        result.reason = "cancelled: the model is as it was"
        model.load_state_dict(original)
        model.eval()
        current = Evaluation(loss=float("nan"), accuracy=result.accuracy_before, count=len(val))
    result.accuracy_after = current.accuracy
    result.seconds = time.perf_counter() - started
    result.cpu_seconds = time.process_time() - cpu_started
    if energy_used is not None and joules_started is not None:
        result.joules = energy_used() - joules_started
    return result


def _labels_disagree_too(detection: Detection | None, config: AdaptConfig) -> bool:
    """Whether the detection saw a consistent confusion worth an ``fc`` rung (see :data:`RELABEL_HINT`)."""
    if detection is None or config.relabel_hint is None:
        return False
    gain = detection.evidence.get("relabel_gain")
    return isinstance(gain, (int, float)) and gain >= config.relabel_hint


def _reason_to_stop(
    accuracy: float, target: float | None, config: AdaptConfig, energy_used: EnergyMeter | None
) -> str | None:
    """Why not to start another rung ("budget", "target"), or None to go on."""
    if config.budget_joules is not None and energy_used is not None and energy_used() >= config.budget_joules:
        return "budget"
    if target is not None and accuracy >= target - config.min_shortfall:
        return "target"
    return None


def _evaluate(model: ResNet26, samples: Samples, batch_size: int) -> Evaluation:
    model.eval()
    return evaluate_batches(model, samples.images, samples.y, batch_size)


class _BudgetWatch:
    """Wraps a rung's callbacks: at each epoch's end, keeps the weights the engine would keep so far
    (see ``FinetuneConfig.loss_tolerance``) and asks the engine to stop once the budget is spent
    (the engine then restores the rung's start)."""

    def __init__(
        self,
        model: ResNet26,
        config: AdaptConfig,
        loss_tolerance: float,
        energy_used: EnergyMeter | None,
        on_progress: Callable[[Progress], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> None:
        self.model = model
        self.budget = config.budget_joules if energy_used is not None else None
        self.energy_used = energy_used
        self.outer_progress = on_progress
        self.outer_stop = should_stop
        self.exceeded = False
        self.cancelled = False
        self.loss_tolerance = loss_tolerance
        self.lowest_loss = float("inf")
        self.best_state: dict[str, Tensor] | None = None

    def on_progress(self, progress: Progress) -> None:
        if self.outer_progress is not None:
            self.outer_progress(progress)
        if progress.phase != "validate" or self.budget is None:
            return
        if progress.val_loss is not None:
            if keeps_epoch(progress.val_loss, self.lowest_loss, self.loss_tolerance):
                self.best_state = copy.deepcopy(self.model.state_dict())
            self.lowest_loss = min(self.lowest_loss, progress.val_loss)
        if self.energy_used is not None and self.energy_used() >= self.budget:
            self.exceeded = True

    def should_stop(self) -> bool:
        if self.outer_stop is not None and self.outer_stop():
            self.cancelled = True
            return True
        return self.exceeded


def _run_step(
    model: ResNet26,
    strategy: str,
    train: Samples,
    val: Samples,
    current: Evaluation,
    config: AdaptConfig,
    energy_used: EnergyMeter | None,
    on_progress: Callable[[Progress], None] | None,
    should_stop: Callable[[], bool] | None,
    adapted: bool = False,
) -> tuple[StepResult | None, Evaluation]:
    """One rung; None when the caller cancelled. Returns the step and the model's evaluation after it.

    ``current`` is the model's evaluation on ``val`` as it stands; ``adapted``: its BatchNorm
    statistics were already re-estimated on ``train`` by an earlier rung.
    """
    started = time.perf_counter()
    cpu_started = time.process_time()
    joules_started = energy_used() if energy_used is not None else None
    saved = copy.deepcopy(model.state_dict())
    rung_config = config.finetune_for(strategy)
    if adapted and rung_config.bn_mode == "adapt":
        rung_config = replace(rung_config, bn_mode="adapted")
    watch = _BudgetWatch(model, config, rung_config.loss_tolerance, energy_used, on_progress, should_stop)
    outcome = finetune(model, strategy, train, val, rung_config, watch.on_progress, watch.should_stop, before=current)
    if watch.cancelled:
        return None, current
    stopped_by_budget = outcome.cancelled and watch.exceeded
    if stopped_by_budget and watch.best_state is not None:
        # The engine restored the rung's start; the best epoch before the budget ran out may still help.
        model.load_state_dict(watch.best_state)
    after = _evaluate(model, val, config.finetune.eval_batch_size) if outcome.cancelled else Evaluation(
        loss=outcome.loss_after, accuracy=outcome.accuracy_after, count=len(val)
    )
    better = after.accuracy > current.accuracy or (after.accuracy == current.accuracy and after.loss < current.loss)
    if better:
        kept, reason = True, "improved validation accuracy" if after.accuracy > current.accuracy else "lowered validation loss"
        new_current = after
    else:
        model.load_state_dict(saved)
        kept, reason = False, "reverted: validation did not improve"
        new_current = current
    if stopped_by_budget:
        reason += "; stopped by the energy budget"
    model.eval()
    joules = energy_used() - joules_started if energy_used is not None and joules_started is not None else None
    step = StepResult(
        strategy=strategy,
        accuracy_before=current.accuracy,
        accuracy_after=after.accuracy,
        seconds=time.perf_counter() - started,
        cpu_seconds=time.process_time() - cpu_started,
        joules=joules,
        epochs=outcome.epochs_run,
        kept=kept,
        reason=reason,
        loss_before=current.loss,
        loss_after=after.loss,
        stopped_by_budget=stopped_by_budget,
        lr=None if strategy == "bn" else rung_config.learning_rate(strategy),
        max_epochs=0 if strategy == "bn" else rung_config.epochs,
    )
    return step, new_current


def detect_and_adapt(
    model: ResNet26,
    train: Samples,
    val: Samples,
    source: SourceStatistics,
    config: AdaptConfig | None = None,
    detector: DetectorConfig | None = None,
    energy_used: EnergyMeter | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[StepResult], None] | None = None,
) -> AdaptResult:
    """Detect the drift type on ``train`` (cheaply), then :func:`adapt` with its ladder."""
    joules_started = energy_used() if energy_used is not None else None
    detection = detect(model, train, source, detector)
    detection_joules = energy_used() - joules_started if energy_used is not None and joules_started is not None else None
    result = adapt(model, train, val, detection.drift_type, source, config, energy_used, on_progress, should_stop,
                   on_step, detection=detection)
    result.detection_joules = detection_joules
    if result.joules is not None and detection_joules is not None:
        result.joules += detection_joules
    return result
