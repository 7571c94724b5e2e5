"""The trainer child: one fine-tuning job in its own process, away from the API's event loop.

The daemon starts :func:`trainer_main` with the ``spawn`` start method (``fork`` can deadlock with
torch's OpenMP threads). The child lowers its priority, uses ``cores − 1`` torch threads, ignores
Ctrl+C (the parent decides when it stops), never talks to systemd, and stops cooperatively at the
next batch when the parent sets the stop event. It reports through a queue of ``(kind, payload)``
tuples: ``("progress", dict)`` at most a few times a second, ``("step", dict)`` after each strategy of an
``auto`` job, then one ``("result", dict)`` or ``("error", str)``.

An ``auto`` job (``block == "auto"``) detects the drift type from its training samples
(:func:`drift.detect.detect`) and climbs that type's ladder of strategies, cheapest first
(:func:`drift.strategy.adapt`); the parent feeds the joules used so far through :class:`LiveJoules`
so the child can keep within the job's energy budget and say what each strategy cost.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from service.allocator import tune_allocator

#: Variables through which systemd talks to the daemon; the trainer must never use them.
SYSTEMD_NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
#: Minimum seconds between two progress messages (validation results always go through).
PROGRESS_INTERVAL_SECONDS = 0.5


@dataclass(frozen=True)
class TrainerTask:
    """Everything the child needs, as plain values (it is pickled across the spawn)."""

    job_id: int
    block: str
    #: The full checkpoint to start from: the base model, or an old full version.
    model_path: str
    samples_path: str
    #: Where the candidate goes: a delta file against ``base_path`` (:mod:`device.weights_delta`).
    output_path: str
    finetune: dict[str, Any] = field(default_factory=dict)
    val_fraction: float = 0.2
    seed: int = 0
    threads: int = 1
    nice: int = 10
    #: For ``auto`` jobs: ``tolerance`` (accuracy fraction) and ``budget_joules`` (None: no limit).
    auto: dict[str, Any] = field(default_factory=dict)
    #: The delta of the context's active version, applied to ``model_path`` before training.
    delta_path: str | None = None
    #: The base checkpoint the candidate's delta is taken against (None: ``model_path``).
    base_path: str | None = None

#: ``TrainerTask.block`` of a job that detects its drift type and chooses its strategies.
AUTO = "auto"
#: Most samples a new version's source statistics are computed on (a forward pass over them).
SOURCE_STATISTICS_SAMPLES = 512


class EventSink(Protocol):
    """The parent's end of the report channel (a multiprocessing queue)."""

    def put(self, item: tuple[str, Any]) -> None: ...


class StopFlag(Protocol):
    """Set by the parent to ask the job to stop at the next batch."""

    def is_set(self) -> bool: ...


class SharedDoubles(Protocol):
    """A lock-guarded shared array of floats (``multiprocessing.Array('d', n)``)."""

    def get_lock(self) -> Any: ...

    def __getitem__(self, index: slice) -> list[float]: ...

    def __setitem__(self, index: slice, values: list[float]) -> None: ...


class LiveJoules:
    """The job's running energy, written by the parent and read by the trainer.

    The parent publishes the joules so far, the rate they grow at (joules per real second: the
    latest watts, scaled when the meter runs on an accelerated clock) and when it published
    (``time.monotonic``, one clock for every process on the machine). It publishes a few times a
    second; the trainer extrapolates at the rate to its own now, so a stretch shorter than the
    parent's cadence (a detection over a few dozen samples) still gets its share of the energy
    rather than 0 J between two identical reads.
    """

    def __init__(self, shared: SharedDoubles) -> None:
        self._shared = shared

    @classmethod
    def create(cls, context: Any) -> LiveJoules:
        """A new figure at 0 J, shareable with a child of ``context`` (a multiprocessing context)."""
        return cls(context.Array("d", 3))

    def publish(self, joules: float, joules_per_second: float, at_seconds: float | None = None) -> None:
        """Record ``joules`` so far, growing at ``joules_per_second`` from ``at_seconds`` (default now)."""
        at = time.monotonic() if at_seconds is None else at_seconds
        with self._shared.get_lock():  # the three values belong together
            self._shared[:] = [float(joules), max(0.0, float(joules_per_second)), at]

    def joules_now(self, now_seconds: float | None = None) -> float:
        """The joules used up to ``now_seconds`` (default now): the last figure plus its rate since."""
        with self._shared.get_lock():
            joules, rate, at = self._shared[:]
        now = time.monotonic() if now_seconds is None else now_seconds
        return joules + rate * max(0.0, now - at)


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, val)``: ``val_fraction`` of each class to validation, at least one sample
    of every class with two or more in training and in validation. Deterministic under ``seed``."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        if len(members) < 2:
            train.extend(members.tolist())
            continue
        n_val = min(len(members) - 1, max(1, round(len(members) * val_fraction)))
        val.extend(members[:n_val].tolist())
        train.extend(members[n_val:].tolist())
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(val, dtype=np.int64))


def trainer_main(task: TrainerTask, events: EventSink, stop: StopFlag, joules: LiveJoules | None = None) -> None:
    """Child process entry point."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tune_allocator()  # before torch allocates: training memory then goes back when freed
    for name in SYSTEMD_NOTIFY_VARIABLES:
        os.environ.pop(name, None)
    try:
        os.nice(task.nice)
    except OSError:
        pass  # not permitted here; training still works, only less politely
    try:
        energy_used = joules.joules_now if joules is not None else None
        events.put(("result", run_task(task, events.put, stop.is_set, energy_used)))
    except Exception as exc:  # reported to the parent, which records the job as failed
        events.put(("error", f"{type(exc).__name__}: {exc}"))


def run_task(
    task: TrainerTask,
    emit: Callable[[tuple[str, Any]], None],
    should_stop: Callable[[], bool],
    energy_used: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """Load the model and samples, split them, fine-tune (or detect and adapt), save the candidate;
    returns a summary. No candidate is written when nothing changed the model."""
    import torch

    from device.checkpoint import load_checkpoint
    from device.finetune import FinetuneConfig, Progress
    from device.samples import Samples
    from device.weights_delta import load_delta, save_delta
    from drift.source_stats import CHECKPOINT_KEY, SourceStatistics, source_statistics_of

    torch.set_num_threads(max(1, task.threads))
    checkpoint = load_checkpoint(task.model_path)
    model = checkpoint.model
    base_state = _numpy_state(model) if task.base_path in (None, task.model_path) else \
        _numpy_state(load_checkpoint(task.base_path).model)
    extra = checkpoint.extra
    if task.delta_path is not None:
        delta = load_delta(task.delta_path)
        state = delta.apply(base_state)  # a delta is always on the base (the checkpoint loaded above)
        model.load_state_dict({name: torch.from_numpy(array) for name, array in state.items()}, strict=True)
        extra = delta.extra
    with np.load(task.samples_path, allow_pickle=False) as data:
        x, y = data["x"], data["y"]
    train_index, val_index = stratified_split(y, task.val_fraction, task.seed)
    if len(train_index) == 0 or len(val_index) == 0:
        raise ValueError(f"{len(y)} samples cannot be split into training and validation")
    train = Samples.from_arrays(x[train_index], y[train_index])
    val = Samples.from_arrays(x[val_index], y[val_index])
    last_sent = [0.0]

    def on_progress(progress: Progress) -> None:
        now = time.monotonic()
        if progress.phase == "train" and now - last_sent[0] < PROGRESS_INTERVAL_SECONDS:
            return
        last_sent[0] = now
        emit(("progress", _progress_dict(progress)))

    config = FinetuneConfig(**{**task.finetune, "seed": task.seed})
    if task.block == AUTO:
        summary, changed = _detect_and_adapt(task, model, train, val, config, source_statistics_of(extra, model),
                                             emit, on_progress, should_stop, energy_used)
    else:
        summary, changed = _finetune_block(task, model, train, val, config, on_progress, should_stop)
    if changed:
        # What the next auto job compares its samples with: this version's own data and accuracy.
        statistics = SourceStatistics.from_model(model, train, summary["accuracy_after"],
                                                 max_samples=SOURCE_STATISTICS_SAMPLES)
        metadata = {"job_id": task.job_id, "result": _jsonable(summary), CHECKPOINT_KEY: statistics.to_dict()}
        # Only what differs from the base is written; the daemon serves it without importing torch.
        delta = save_delta(task.output_path, model.config, _numpy_state(model), base_state, metadata)
        summary["delta_bytes"] = delta.nbytes
        summary["delta_arrays"] = len(delta.arrays)
    return {**summary, "candidate": changed, "train_samples": len(train), "val_samples": len(val)}


def _finetune_block(task: TrainerTask, model: Any, train: Any, val: Any, config: Any,
                    on_progress: Callable[[Any], None], should_stop: Callable[[], bool]) -> tuple[dict[str, Any], bool]:
    from device.finetune import finetune

    result = finetune(model, task.block, train, val, config, on_progress=on_progress, should_stop=should_stop)
    summary = {
        **result.summary(),
        "train_losses": result.train_losses,
        "val_losses": result.val_losses,
        "val_accuracies": result.val_accuracies,
    }
    return summary, not result.cancelled


def _detect_and_adapt(task: TrainerTask, model: Any, train: Any, val: Any, config: Any, source: Any,
                      emit: Callable[[tuple[str, Any]], None], on_progress: Callable[[Any], None],
                      should_stop: Callable[[], bool],
                      energy_used: Callable[[], float] | None) -> tuple[dict[str, Any], bool]:
    from device.profiles import DEFAULT_PROFILE, rung_settings
    from drift.strategy import AdaptConfig, StepResult, detect_and_adapt

    def on_step(step: StepResult) -> None:
        emit(("step", _jsonable(asdict(step))))

    adapt_config = AdaptConfig(
        tolerance=float(task.auto.get("tolerance", 0.02)),
        budget_joules=task.auto.get("budget_joules"),
        finetune=config,
        rung_settings=rung_settings(str(task.auto.get("profile") or DEFAULT_PROFILE)),
    )
    result = detect_and_adapt(model, train, val, source, adapt_config, energy_used=energy_used,
                              on_progress=on_progress, should_stop=should_stop, on_step=on_step)
    kept = result.strategies
    summary = {
        "block": kept[-1] if kept else None,
        "drift_type": result.drift_type,
        "accuracy_before": result.accuracy_before,
        "accuracy_after": result.accuracy_after,
        "cancelled": result.cancelled,
        "auto": _jsonable(result.to_dict()),
    }
    return summary, bool(kept) and not result.cancelled


def _numpy_state(model: Any) -> dict[str, np.ndarray]:
    """A copy of ``model``'s state dict as numpy arrays (training changes the tensors in place)."""
    return {name: tensor.detach().cpu().numpy().copy() for name, tensor in model.state_dict().items()}


def _jsonable(value: Any) -> Any:
    """``value`` with NaN and infinities as None: the store and the API hand results out as JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _progress_dict(progress: Any) -> dict[str, Any]:
    return dict(_jsonable(asdict(progress)))
