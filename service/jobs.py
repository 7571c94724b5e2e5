"""Jobs: scheduling from drift hints, one trainer child at a time, energy, promotion.

The :class:`JobManager` lives in the API process. A worker thread takes the oldest queued job,
writes its samples to a file, wraps a spawned trainer child (:mod:`service.trainer`) in an
:class:`~energy.window.EnergyWindow`, relays progress to the store, and on success registers the
candidate model, promoting it only if it is not worse on the job's validation samples than the
model it started from. The API's request threads only create, link and cancel rows.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.profiles import profile_settings
from drift.types import DriftType, resolve_target
from energy.meter import Meter, MeterSample
from energy.window import EnergyWindow
from service.cores import trainer_threads
from service.model_registry import ModelRegistry
from service.settings import Settings
from service.store import Hint, Job, Store
from service.trainer import AUTO, LiveJoules, TrainerTask, trainer_main

log = logging.getLogger(__name__)

#: Fewest samples a job may train on (it needs training and validation samples of each class).
MIN_JOB_SAMPLES = 20
#: A measured idle baseline is reused for this long before it is measured again.
BASELINE_MAX_AGE_SECONDS = 900.0
#: Seconds between progress writes to the database (an SD card dislikes chatty writers).
PROGRESS_WRITE_INTERVAL_SECONDS = 1.0
#: Seconds :meth:`JobManager.shutdown` waits beyond ``trainer_grace_seconds`` by default: time to
#: terminate, then kill, a trainer that ignores the stop event (5 s each), and to record the job.
SHUTDOWN_MARGIN_SECONDS = 15.0
#: The span of the daily energy budget: a rolling 24 hours, not a calendar day (no time zones).
DAY_SECONDS = 24 * 3600.0


def finetune_settings(settings: Settings, block: str, profile: str) -> dict[str, Any]:
    """The fine-tuning settings of a ``block`` job under ``profile`` (``device.profiles``), with the
    daemon's explicit settings over them. An ``auto`` job gets the daemon's settings only: its
    ladder applies the profile rung by rung."""
    values: dict[str, Any] = {} if block == AUTO else dict(profile_settings(profile, block))
    for name in ("epochs", "batch_size", "bn_mode"):
        if getattr(settings, name) is not None:
            values[name] = getattr(settings, name)
    return {
        **values,
        "micro_batch_size": settings.micro_batch_size,
        "eval_batch_size": settings.micro_batch_size,
        "cache_budget_bytes": settings.cache_budget_bytes,
    }


class JobError(Exception):
    """A request about jobs that cannot be honoured; the message says why (the API answers 409)."""


class ShuttingDown(JobError):
    """New work asked of a daemon that is stopping (the API answers 503: retry once it is back)."""


#: Seconds between sweeps for expired hints and idempotency keys (each a read when nothing is due).
EXPIRY_SWEEP_SECONDS = 5.0
#: ``decision.outcome`` of a job, as the API, the CLI and the dashboard show it.
OUTCOME_PROMOTED = "promoted"
OUTCOME_KEPT = "kept the model"
OUTCOME_NOTHING = "nothing to adapt"


@dataclass(frozen=True)
class HintOutcome:
    """What a drift hint did: merged into a pending job, started one, or waits for samples
    (until ``expires_at``, epoch seconds)."""

    hint: Hint
    job: Job | None
    merged: bool
    samples: int
    min_samples: int
    expires_at: float | None = None


class JobManager:
    """Schedules and runs fine-tuning jobs; see the module docstring."""

    def __init__(
        self,
        store: Store,
        registry: ModelRegistry,
        settings: Settings,
        meter: Meter,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.settings = settings
        self.meter = meter
        self.on_change = on_change
        self.jobs_dir = settings.data_dir / "jobs"
        self._schedule_lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._forced = threading.Event()
        self._thread: threading.Thread | None = None
        self._running_job: int | None = None
        self._running_stop: Any = None
        self._running_window: EnergyWindow | None = None
        self._cancel_requested: set[int] = set()
        self._baseline: tuple[float, float] | None = None  # (watts, monotonic time measured)
        self.last_energy: dict[str, Any] | None = None
        self.latest_progress: dict[str, Any] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> list[int]:
        """Recover from a crash (running jobs become interrupted) and start the worker thread."""
        recovered = self.store.mark_running_jobs_interrupted(requeue=self.settings.requeue_interrupted)
        if recovered:
            log.warning("jobs %s were running when the daemon stopped: marked interrupted", recovered)
        shutil.rmtree(self.jobs_dir, ignore_errors=True)
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._work, name="tbftd-jobs", daemon=True)
        self._thread.start()
        return recovered

    def request_stop(self, *, force: bool = False) -> None:
        """Stop taking jobs and ask a running job to stop at its next batch (it is recorded
        cancelled, with its energy); ``force`` terminates the trainer now instead. Returns at once."""
        self._closing.set()
        if force:
            self._forced.set()
        if self._running_stop is not None:
            self._running_stop.set()
        self._wake.set()

    def shutdown(self, timeout_seconds: float | None = None) -> None:
        """:meth:`request_stop`, then wait for the worker to record the job and finish.

        The default wait covers a trainer that has to be terminated after ``trainer_grace_seconds``.
        """
        self.request_stop()
        if timeout_seconds is None:
            timeout_seconds = self.settings.trainer_grace_seconds + SHUTDOWN_MARGIN_SECONDS
        if self._thread is not None:
            self._thread.join(timeout_seconds)
            if self._thread.is_alive():
                log.error("the job worker did not stop within %.0f s; a running job will be marked "
                          "interrupted at the next start", timeout_seconds)

    @property
    def running_job(self) -> int | None:
        """Id of the job now training, if any."""
        return self._running_job

    @property
    def latest_power(self) -> MeterSample | None:
        """The latest power reading of the running job (meter or estimate), if any."""
        window = self._running_window
        return window.latest_sample if window is not None else None

    # -- scheduling (called from request threads) -------------------------------------------------

    def hint(self, context: str, target: str, min_samples: int | None = None) -> HintOutcome:
        """Record a drift hint (a drift type, or ``full``/``bn``/a block asked for explicitly)."""
        block, drift_type = self._resolve(target)
        needed = min_samples if min_samples is not None else self.settings.min_samples
        with self._schedule_lock:
            self._check_open()
            hint = self.store.add_hint(context, drift_type=drift_type, block=block, min_samples=needed)
            pending = self.store.pending_job_for_context(context)
            if pending is not None:
                self.store.link_hints([hint.id], pending.id)
                return HintOutcome(self.store.get_hint(hint.id), pending, True, self.store.count_samples(context), needed)
            job = self._start_if_ready(context)
        hint = self.store.get_hint(hint.id)  # as it is now: linked to the job it started, if any
        return HintOutcome(hint, job, False, self.store.count_samples(context), needed,
                           hint.expires_at(self.settings.hint_expiry_seconds))

    def samples_added(self, context: str) -> Job | None:
        """Start a job for ``context`` if a waiting hint now has enough samples."""
        with self._schedule_lock:
            if self._closing.is_set():
                return None
            job = self._start_if_ready(context)
            if job is None and self.settings.auto_detect:
                job = self._start_auto_if_due(context)
            return job

    def submit(self, context: str, target: str, profile: str | None = None) -> Job:
        """Queue a job now (``POST /v1/jobs``), whatever the hints say; ``profile`` overrides
        ``finetune_profile`` for this job."""
        block, drift_type = self._resolve(target)
        with self._schedule_lock:
            self._check_open()
            count = self.store.count_samples(context)
            if count < MIN_JOB_SAMPLES:
                raise JobError(f"context {context!r} holds {count} samples; a job needs at least {MIN_JOB_SAMPLES}")
            pending = self.store.pending_job_for_context(context)
            if pending is not None:
                raise JobError(f"context {context!r} already has job {pending.id} {pending.state}")
            waiting = [h.id for h in self.store.waiting_hints(context)]
            params = {"finetune_profile": profile} if profile is not None else None
            job = self.store.create_job(context, block=block, drift_type=drift_type, requested_by="api",
                                        hint_ids=waiting, params=params)
        self._wake.set()
        return job

    def cancel(self, job_id: int) -> Job:
        """Cancel a queued job at once, or ask a running one to stop at its next batch."""
        job = self.store.transition_job(job_id, ("queued",), "cancelled")
        if job is not None:
            self.store.update_job(job_id, finished_at=time.time(), error="cancelled before it started")
            return self.store.get_job(job_id)
        current = self.store.get_job(job_id)
        if current.state != "running":
            raise JobError(f"job {job_id} is {current.state}; only queued or running jobs can be cancelled")
        self._cancel_requested.add(job_id)
        if self._running_job == job_id and self._running_stop is not None:
            self._running_stop.set()
        return current

    def _resolve(self, target: str) -> tuple[str, str | None]:
        """The block a hint or request names, and its drift type (None for an explicit block).

        ``auto`` is both: the trainer detects the type and chooses the strategies (see
        :mod:`service.trainer`); the job's block and drift type are then what it found.
        """
        if target == AUTO:
            return AUTO, AUTO
        block = resolve_target(target, self.settings.block_mapping())
        drift_type = target if target in {d.value for d in DriftType} else None
        return block, drift_type

    def _check_open(self) -> None:
        if self._closing.is_set():
            raise ShuttingDown("the daemon is shutting down and takes no new work")

    def _start_if_ready(self, context: str) -> Job | None:
        waiting = self.store.waiting_hints(context)
        if not waiting or self.store.pending_job_for_context(context) is not None:
            return None
        newest = waiting[-1]
        needed = newest.min_samples if newest.min_samples is not None else self.settings.min_samples
        if self.store.count_samples(context) < max(needed, MIN_JOB_SAMPLES):
            return None
        job = self.store.create_job(
            context,
            block=newest.block,
            drift_type=newest.drift_type,
            requested_by="hint",
            min_samples=needed,
            hint_ids=[h.id for h in waiting],
        )
        self._wake.set()
        return job

    def _start_auto_if_due(self, context: str) -> Job | None:
        """With ``auto_detect``: an ``auto`` job once ``context`` holds ``min_samples`` samples
        newer than those its last job used, and nothing is pending or waiting for it."""
        if self.store.waiting_hints(context) or self.store.pending_job_for_context(context) is not None:
            return None
        last = self.store.list_jobs(context=context, limit=1)
        used_up_to = last[0].sample_ids[-1] if last and last[0].sample_ids else None
        fresh = self.store.count_samples(context, after_id=used_up_to)
        if fresh < max(self.settings.min_samples, MIN_JOB_SAMPLES):
            return None
        job = self.store.create_job(context, block=AUTO, drift_type=AUTO, requested_by="auto_detect",
                                    min_samples=self.settings.min_samples)
        self._wake.set()
        return job

    # -- energy budgets ---------------------------------------------------------------------------

    def day_joules_left(self, now: float | None = None) -> float | None:
        """Joules the 24-hour budget still allows (None: no budget), from the energy log."""
        budget = self.settings.energy_budget_day_joules
        if budget is None:
            return None
        since = (time.time() if now is None else now) - DAY_SECONDS
        spent = sum(record.joules for record in self.store.energy_log(since=since))
        return budget - spent

    def job_budget_joules(self) -> float | None:
        """What an ``auto`` job may spend: the per-job budget, at most what the day has left."""
        limits = [v for v in (self.settings.energy_budget_job_joules, self.day_joules_left()) if v is not None]
        return max(0.0, min(limits)) if limits else None

    # -- the worker -------------------------------------------------------------------------------

    def expire(self, now: float | None = None) -> list[Hint]:
        """Expire hints that waited longer than ``hint_expiry_seconds`` and forget idempotency keys
        older than ``idempotency_key_seconds``; returns the hints expired."""
        now = time.time() if now is None else now
        with self._schedule_lock:  # not while a request is linking hints to a new job
            expired = self.store.expire_hints(now - self.settings.hint_expiry_seconds)
        for hint in expired:
            log.info("drift hint %s for context %r expired: it waited %.0f s for samples", hint.id, hint.context,
                     now - hint.created_at)
        self.store.expire_idempotency_keys(now - self.settings.idempotency_key_seconds)
        return expired

    def _work(self) -> None:
        last_sweep = 0.0
        while not self._closing.is_set():
            if time.monotonic() - last_sweep >= EXPIRY_SWEEP_SECONDS:
                last_sweep = time.monotonic()
                try:
                    self.expire()
                except Exception:  # a sweep must not kill the worker; the next one tries again
                    log.exception("expiring hints and idempotency keys failed")
            job = self.store.claim_next_job()
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            # From the claim on, as the database says: /v1/status must not show no job while one
            # is running (loading its samples, measuring the idle baseline).
            self._running_job = job.id
            try:
                self._run(job)
            except Exception as exc:  # a bug or an I/O error must not kill the worker
                log.exception("job %s failed", job.id)
                self._finish(job.id, "failed", error=f"{type(exc).__name__}: {exc}")
            finally:
                self._running_job = None
                self._running_stop = None
                self._running_window = None
                self._cancel_requested.discard(job.id)
                self.latest_progress = None
                if self.on_change is not None:
                    self.on_change()

    def _run(self, job: Job) -> None:
        left = self.day_joules_left()
        if left is not None and left <= 0:
            self._finish(job.id, "cancelled", error=(
                f"energy budget: the last 24 hours used {self.settings.energy_budget_day_joules - left:.0f} J "
                f"of the {self.settings.energy_budget_day_joules:.0f} J a day allows (energy_budget_day_joules)"))
            return
        active = self.registry.model_for(job.context)
        x, y, ids = self.store.load_samples(job.context)
        if len(ids) < MIN_JOB_SAMPLES:
            self._finish(job.id, "failed", error=f"context holds {len(ids)} samples; a job needs at least {MIN_JOB_SAMPLES}")
            return
        if tuple(x.shape[1:]) != active.config.input_shape:
            self._finish(job.id, "failed", error=f"samples have shape {tuple(x.shape[1:])}, the model expects {active.config.input_shape}")
            return
        samples_path = self.jobs_dir / f"job-{job.id}-samples.npz"
        np.savez(samples_path, x=x, y=y)
        del x
        output = self.registry.candidate_path(job.id)
        block = job.block or "full"
        profile = str((job.params or {}).get("finetune_profile") or self.settings.finetune_profile)
        finetune = finetune_settings(self.settings, block, profile)
        files = self.registry.training_files(active.version)
        task = TrainerTask(
            job_id=job.id,
            block=block,
            model_path=str(files.checkpoint),
            delta_path=None if files.delta is None else str(files.delta),
            base_path=str(files.base),
            samples_path=str(samples_path),
            output_path=str(output),
            finetune=finetune,
            val_fraction=self.settings.val_fraction,
            seed=self.settings.seed,
            threads=trainer_threads(self.settings.trainer_threads),
            nice=self.settings.trainer_nice,
            auto={"tolerance": self.settings.auto_tolerance, "budget_joules": self.job_budget_joules(),
                  "profile": profile},
        )
        self.store.update_job(job.id, model_version_in=active.version, sample_count=len(ids),
                              sample_ids=[ids[0], ids[-1]] if ids else None,
                              params={**(job.params or {}), "finetune_profile": profile, "finetune": finetune})
        try:
            outcome, payload, energy = self._train(job.id, task)
        finally:
            samples_path.unlink(missing_ok=True)
        self.store.save_energy(job.id, energy)
        self.last_energy = energy
        if outcome == "result" and block == AUTO:
            self._finish_auto(job, active.version, payload, output)
        elif outcome == "result" and not payload["cancelled"]:
            self._promote(job, active.version, block, payload, output)
        elif outcome == "result":
            self._finish(job.id, "cancelled", accuracy_before=payload["accuracy_before"], error="cancelled while training",
                         progress={**(self.latest_progress or {}), "result": payload})
        elif outcome == "cancelled":
            self.registry.discard_candidate(job.id)
            self._finish(job.id, "cancelled", error=str(payload))
        else:
            self.registry.discard_candidate(job.id)
            self._finish(job.id, "failed", error=str(payload))

    def _train(self, job_id: int, task: TrainerTask) -> tuple[str, Any, dict[str, Any]]:
        """Run the child inside an energy window; returns (outcome, payload, energy summary)."""
        context = multiprocessing.get_context("spawn")
        events = context.Queue()
        stop = context.Event()
        joules = LiveJoules.create(context)
        self._running_stop = stop
        if job_id in self._cancel_requested or self._closing.is_set():
            stop.set()
        window = EnergyWindow(self.meter, baseline_seconds=self.settings.baseline_seconds,
                              baseline_watts=self._remembered_baseline())
        self._running_window = window
        window.start()
        if self._closing.is_set():
            # The daemon began to stop during the baseline: no point starting a trainer.
            return "cancelled", "cancelled before the trainer started: the daemon is stopping", window.stop().to_dict()
        process = context.Process(target=trainer_main, args=(task, events, stop, joules), name=f"tbftd-trainer-{job_id}",
                                  daemon=True)
        process.start()
        outcome, payload = "error", "the trainer exited without a result"
        last_write = 0.0
        stop_sent_at: float | None = None
        steps: list[dict[str, Any]] = []
        while True:
            latest = window.latest_sample
            watts = latest.watts if latest is not None else 0.0
            joules.publish(window.joules_so_far(), watts / window.clock.to_real(1.0))
            try:
                kind, data = events.get(timeout=0.25)
            except queue.Empty:
                if stop.is_set() and stop_sent_at is None:
                    stop_sent_at = time.monotonic()
                if stop_sent_at is not None and self._forced.is_set():
                    _terminate(process)
                    outcome, payload = "cancelled", "the trainer was terminated: the daemon was told twice to stop"
                    break
                if stop_sent_at is not None and time.monotonic() - stop_sent_at > self.settings.trainer_grace_seconds:
                    # Only a cancel or the daemon's stop sets the event: the job ends as asked, and
                    # the record says how (a trainer starved of CPU may not even have looked yet).
                    _terminate(process)
                    outcome = "cancelled"
                    payload = (f"the trainer did not stop within {self.settings.trainer_grace_seconds:g} s "
                               "of being told to and was terminated")
                    break
                if not process.is_alive():
                    payload = f"the trainer exited with code {process.exitcode} without a result"
                    break
                continue
            if kind == "step":
                steps.append(data)
                self.latest_progress = {**(self.latest_progress or {}), "steps": list(steps)}
                self.store.update_job(job_id, progress=self.latest_progress)
                continue
            if kind == "progress":
                self.latest_progress = {**data, "steps": list(steps)} if steps else data
                now = time.monotonic()
                if now - last_write >= PROGRESS_WRITE_INTERVAL_SECONDS or data.get("phase") == "validate":
                    self.store.update_job(job_id, progress=data)
                    last_write = now
                continue
            outcome, payload = kind, data
            break
        process.join(timeout=self.settings.trainer_grace_seconds)
        if process.is_alive():
            _terminate(process)
        result = window.stop()
        if result.baseline_watts is not None and result.baseline_source not in (None, "remembered"):
            self._baseline = (result.baseline_watts, time.monotonic())
        return outcome, payload, result.to_dict()

    def _remembered_baseline(self) -> float | None:
        if self._baseline is None:
            return None
        watts, measured_at = self._baseline
        return watts if time.monotonic() - measured_at < BASELINE_MAX_AGE_SECONDS else None

    def _promote(self, job: Job, parent: int, block: str, payload: dict[str, Any], output: Path,
                 decision: dict[str, Any] | None = None) -> None:
        before, after = payload["accuracy_before"], payload["accuracy_after"]
        promoted, reason = promotion_decision(before, after, self.settings.promote_margin, parent)
        version = self.registry.register(
            output,
            context=job.context,
            parent_version=parent,
            job_id=job.id,
            accuracy={"before": before, "after": after, "val_samples": payload["val_samples"]},
            activate=promoted,
            notes=f"{block} on context {job.context}" + ("" if promoted else " (not promoted)"),
        )
        self.registry.prune(job.context, self.settings.keep_versions)
        self._finish(
            job.id,
            "succeeded",
            accuracy_before=before,
            accuracy_after=after,
            model_version_out=version,
            decision={**(decision or {}), "outcome": OUTCOME_PROMOTED if promoted else OUTCOME_KEPT,
                      "promoted": promoted, "reason": reason, "block": block, "version": version,
                      "scope": self.registry.scope_of(job.context), "delta_bytes": payload.get("delta_bytes")},
            progress={**(self.latest_progress or {}), "result": payload},
        )

    def _finish_auto(self, job: Job, parent: int, payload: dict[str, Any], output: Path) -> None:
        """Record what an ``auto`` job detected and ran; promote its model like any job's."""
        auto = payload["auto"]
        detection = auto.get("detection") or {}
        steps = [
            {key: step.get(key) for key in ("strategy", "accuracy_before", "accuracy_after", "joules", "seconds",
                                            "cpu_seconds", "epochs", "kept", "reason", "stopped_by_budget")}
            for step in auto.get("steps", [])
        ]
        decision = {
            "detected": detection.get("drift_type"),
            "confidence": detection.get("confidence"),
            "rule": (detection.get("evidence") or {}).get("rule"),
            "probe_used": detection.get("probe_used"),
            "detection_joules": auto.get("detection_joules"),
            "detection_seconds": detection.get("seconds"),
            "ladder": auto.get("ladder"),
            "target_accuracy": auto.get("target_accuracy"),
            "strategies": steps,
            "kept": auto.get("kept"),
            "stopped_by_budget": auto.get("stopped_by_budget"),
            "budget_joules": self.job_budget_joules() if auto.get("stopped_by_budget") else None,
        }
        changes: dict[str, Any] = {"drift_type": payload["drift_type"], "block": payload["block"],
                                   "evidence": detection.get("evidence")}
        progress = {**(self.latest_progress or {}), "result": payload}
        if payload["cancelled"]:
            self.registry.discard_candidate(job.id)
            self._finish(job.id, "cancelled", accuracy_before=payload["accuracy_before"], error="cancelled while adapting",
                         decision=decision, progress=progress, **changes)
            return
        if not payload["candidate"]:
            nothing = payload["drift_type"] == "none"
            what = ("nothing to adapt: no drift detected, nothing trained" if nothing
                    else "no strategy improved validation accuracy: the model is unchanged")
            self._finish(job.id, "succeeded", accuracy_before=payload["accuracy_before"],
                         accuracy_after=payload["accuracy_after"],
                         decision={**decision, "outcome": OUTCOME_NOTHING if nothing else OUTCOME_KEPT,
                                   "promoted": False, "reason": what},
                         progress=progress, **changes)
            return
        self.store.update_job(job.id, **changes)
        self._promote(job, parent, payload["block"], payload, output, decision=decision)

    def _finish(self, job_id: int, state: str, **changes: Any) -> None:
        self.store.update_job(job_id, state=state, finished_at=time.time(), **changes)


def promotion_decision(before: float, after: float, margin: float, parent_version: int) -> tuple[bool, str]:
    """Whether a fine-tuned model replaces the one it started from, and why.

    Both accuracies are on the job's validation samples. The candidate is promoted when it is not
    worse than ``before`` by more than ``margin`` (a fraction: 0.01 is one point).
    """
    promoted = after >= before - margin
    verdict = "promoted" if promoted else "kept the active model"
    reason = (f"{verdict}: validation accuracy {after:.4f} vs {before:.4f} of version {parent_version}"
              f" (margin {margin})")
    return promoted, reason


def _terminate(process: Any) -> None:
    process.terminate()
    process.join(5.0)
    if process.is_alive():
        process.kill()
        process.join(5.0)
