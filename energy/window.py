"""Per-job energy: :class:`EnergyWindow` turns a meter's readings around a job into an
:class:`EnergyResult`.

A sampling thread reads the meter at its rate. Joules are the trapezoidal integral of watts over
the job (the first and last readings held out to the job's start and stop). The idle baseline is
measured over a few seconds before the job, or passed in, and ``net_joules`` is the energy above
it. Where the meter has its own mWh counter, the counter's difference is kept beside the integral
as a cross-check. If the meter disappears, the estimator covers the gap, the gap is recorded, and
the meter is reopened with backoff; the job never notices.

Usage::

    with EnergyWindow(meter, baseline_seconds=3) as window:   # measures the baseline first
        run_job()
    store(window.result.to_dict())
"""

from __future__ import annotations

import itertools
import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from types import TracebackType
from typing import Any, NamedTuple, Self

from energy.clock import Clock
from energy.estimator import Estimator
from energy.meter import (
    JOULES_PER_MILLIWATT_HOUR,
    Meter,
    MeterError,
    MeterSample,
    MeterTimeout,
)

ESTIMATE_PREFIX = "estimate:"
#: The most any supported meter can pass (UM34C: 45 V x 4 A), to tell a counter wrap from a reset.
MAX_METER_WATTS = 180.0
_U32_LIMIT = 1 << 32


def is_estimate(source: str) -> bool:
    """Whether a source label names an estimate rather than a measurement."""
    return source.startswith(ESTIMATE_PREFIX)


class TracePoint(NamedTuple):
    """One reading as stored with a job: seconds since the job started, watts, source."""

    seconds: float
    watts: float
    source: str


@dataclass(frozen=True)
class Gap:
    """A stretch without the meter: from its last reading to its first after reconnecting
    (``end_seconds`` None if it never came back), in seconds since the job started (negative
    during the baseline)."""

    start_seconds: float
    end_seconds: float | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return asdict(self)


@dataclass(frozen=True)
class Integral:
    """Joules over a span, and how many seconds and joules came from each source."""

    joules: float
    source_seconds: dict[str, float]
    source_joules: dict[str, float]


def _watts_at(a: tuple[float, float], b: tuple[float, float], t: float) -> float:
    (ta, wa), (tb, wb) = a, b
    if tb == ta:
        return wb
    return wa + (wb - wa) * (t - ta) / (tb - ta)


def integrate(points: Sequence[TracePoint], start: float, stop: float) -> Integral:
    """Trapezoidal joules of ``points`` (time-ordered, absolute seconds) over [start, stop].

    Between readings the power is linear; before the first and after the last it is held. Each
    stretch between two readings is split evenly between their two sources.
    """
    seconds_by: defaultdict[str, float] = defaultdict(float)
    joules_by: defaultdict[str, float] = defaultdict(float)
    total = 0.0

    def add(first: str, second: str, seconds: float, joules: float) -> None:
        nonlocal total
        total += joules
        for source in (first, second):
            seconds_by[source] += seconds / 2
            joules_by[source] += joules / 2

    if points and stop > start:
        head, tail = points[0], points[-1]
        if head.seconds > start:
            span = min(head.seconds, stop) - start
            add(head.source, head.source, span, head.watts * span)
        if tail.seconds < stop:
            span = stop - max(tail.seconds, start)
            add(tail.source, tail.source, span, tail.watts * span)
        for a, b in itertools.pairwise(points):
            low, high = max(a.seconds, start), min(b.seconds, stop)
            if high <= low:
                continue
            pa, pb = (a.seconds, a.watts), (b.seconds, b.watts)
            joules = (_watts_at(pa, pb, low) + _watts_at(pa, pb, high)) / 2 * (high - low)
            add(a.source, b.source, high - low, joules)
    return Integral(total, dict(seconds_by), dict(joules_by))


def watts_at(points: Sequence[TracePoint], t: float) -> float:
    """The power the integral assumes at ``t``: linear between readings, held outside them."""
    if t <= points[0].seconds:
        return points[0].watts
    for a, b in itertools.pairwise(points):
        if a.seconds <= t <= b.seconds:
            return _watts_at((a.seconds, a.watts), (b.seconds, b.watts), t)
    return points[-1].watts


def counter_delta_milliwatt_hours(
    previous: int, current: int, elapsed_seconds: float, max_watts: float = MAX_METER_WATTS
) -> tuple[int, str]:
    """The energy between two readings of a u32 mWh counter, and what happened to it.

    Returns ``(milliwatt_hours, kind)`` with kind ``"ok"``, ``"wrap"`` (the counter passed 2**32),
    ``"reset"`` (the group was cleared: only what was counted since is known) or ``"jump"`` (a rise
    the meter could not have counted in the time, such as a counter set by hand: not counted). A
    drop is a wrap only if the wrapped difference is energy the meter could have passed in
    ``elapsed_seconds`` at ``max_watts``.
    """
    possible = max_watts * max(0.0, elapsed_seconds) / JOULES_PER_MILLIWATT_HOUR + 1
    if current >= previous:
        rise = current - previous
        return (rise, "ok") if rise <= possible else (0, "jump")
    wrapped = current + _U32_LIMIT - previous
    if wrapped <= possible:
        return wrapped, "wrap"
    return current, "reset"


@dataclass(frozen=True)
class CounterCheck:
    """The meter's counter over a job: joules from its differences, the span they cover, events."""

    joules: float
    first_seconds: float
    last_seconds: float
    events: tuple[str, ...]


def counter_check(samples: Sequence[MeterSample], origin: float = 0.0) -> CounterCheck | None:
    """Sum the counter differences between consecutive readings that carry a counter (a gap in
    between is fine: the meter counts while the link is down). None with fewer than two.
    Event times are in seconds since ``origin``."""
    counted = [s for s in samples if s.counter_milliwatt_hours is not None]
    if len(counted) < 2:
        return None
    total = 0
    events: list[str] = []
    for a, b in itertools.pairwise(counted):
        assert a.counter_milliwatt_hours is not None and b.counter_milliwatt_hours is not None
        at = b.seconds - origin
        if a.counter_group != b.counter_group:
            events.append(
                f"group changed from {a.counter_group} to {b.counter_group} at {at:.1f} s "
                "(that interval is not counted)"
            )
            continue
        delta, kind = counter_delta_milliwatt_hours(
            a.counter_milliwatt_hours, b.counter_milliwatt_hours, b.seconds - a.seconds
        )
        if kind != "ok":
            events.append(f"counter {kind} at {at:.1f} s")
        total += delta
    return CounterCheck(
        joules=total * JOULES_PER_MILLIWATT_HOUR,
        first_seconds=counted[0].seconds,
        last_seconds=counted[-1].seconds,
        events=tuple(events),
    )


@dataclass(frozen=True)
class EnergyResult:
    """A job's energy. Units are in the names; ``source`` names what measured it (``MODEL@PORT``
    or ``estimate:<board>``), the one that covered most of the job; ``source_seconds`` and
    ``source_joules`` break the job down by source.

    ``net_joules`` is ``joules - baseline_watts * seconds`` (None without a baseline).
    ``counter_joules`` is the meter's own mWh counter difference over ``counter_seconds`` (between
    its first and last readings in the job) and ``counter_difference_joules`` is it minus the
    integral over the same span; both None without a counter. ``trace`` holds every reading in
    the job as (seconds since start, watts, source). ``low_confidence`` marks a job too short for
    the meter's rate; ``notes`` say why, and note gaps and counter events.
    """

    joules: float
    net_joules: float | None
    seconds: float
    mean_watts: float
    peak_watts: float
    source: str
    samples: int
    gaps: tuple[Gap, ...]
    counter_joules: float | None
    baseline_watts: float | None
    baseline_seconds: float
    baseline_source: str | None
    meter_samples: int
    source_seconds: dict[str, float]
    source_joules: dict[str, float]
    counter_seconds: float | None
    counter_difference_joules: float | None
    counter_resolution_joules: float | None
    low_confidence: bool
    notes: tuple[str, ...]
    trace: tuple[TracePoint, ...]
    started_monotonic_seconds: float
    stopped_monotonic_seconds: float
    rate_hz: float

    @property
    def estimated_seconds(self) -> float:
        """Seconds of the job covered by an estimate rather than a meter."""
        return sum(s for source, s in self.source_seconds.items() if is_estimate(source))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (the trace as ``[seconds, watts, source]`` lists)."""
        data = asdict(self)
        data["gaps"] = [gap.to_dict() for gap in self.gaps]
        data["notes"] = list(self.notes)
        data["trace"] = [[p.seconds, p.watts, p.source] for p in self.trace]
        data["estimated_seconds"] = self.estimated_seconds
        return data

    def summary(self) -> str:
        """One line for logs and the CLI."""
        net = f", net {self.net_joules:.1f} J" if self.net_joules is not None else ""
        flag = " [low confidence]" if self.low_confidence else ""
        return (
            f"{self.joules:.1f} J{net} over {self.seconds:.1f} s "
            f"(mean {self.mean_watts:.2f} W, peak {self.peak_watts:.2f} W) from {self.source}{flag}"
        )


@dataclass
class _OpenGap:
    """A gap while the window runs, in absolute clock seconds."""

    start: float
    end: float | None
    reason: str


class EnergyWindow:
    """Measure the energy of one job.

    ``start`` opens the meter if needed, starts the sampling thread, and, unless ``baseline_watts``
    (a remembered recent idle figure) is given, measures the idle baseline for
    ``baseline_seconds`` before it returns (0 for no baseline). ``stop`` ends the job and returns
    the :class:`EnergyResult`. Also a context manager (the result is then in ``result``).

    ``interval_seconds`` defaults to one period of the meter's rate. A reading that times out is
    skipped; ``max_timeouts`` in a row, or a disconnect, starts a gap: ``estimator`` (by default an
    :class:`~energy.estimator.Estimator` for this board) covers it and the meter is reopened after
    ``reconnect_initial_seconds``, doubling to ``reconnect_max_seconds``. A job with fewer than
    ``min_samples`` readings is flagged low confidence. ``clock`` defaults to the meter's.
    """

    def __init__(
        self,
        meter: Meter,
        *,
        baseline_seconds: float = 3.0,
        baseline_watts: float | None = None,
        estimator: Meter | None = None,
        clock: Clock | None = None,
        interval_seconds: float | None = None,
        max_timeouts: int = 3,
        reconnect_initial_seconds: float = 1.0,
        reconnect_max_seconds: float = 30.0,
        min_samples: int = 5,
    ) -> None:
        if baseline_seconds < 0:
            raise ValueError(f"baseline_seconds must not be negative, got {baseline_seconds}")
        self.meter = meter
        self.clock: Clock = clock or meter.clock
        info = meter.describe()
        self.rate_hz = info.rate_hz if info.rate_hz > 0 else 2.0
        self.interval_seconds = interval_seconds or 1 / self.rate_hz
        self.baseline_seconds = baseline_seconds
        self.remembered_baseline_watts = baseline_watts
        if estimator is None:
            estimator = meter if info.is_estimate else Estimator(clock=self.clock)
        self.estimator = estimator
        self.max_timeouts = max(1, max_timeouts)
        self.reconnect_initial_seconds = reconnect_initial_seconds
        self.reconnect_max_seconds = reconnect_max_seconds
        self.min_samples = min_samples
        self.counter_resolution_joules = info.counter_resolution_joules
        #: The result, once stopped.
        self.result: EnergyResult | None = None
        self._lock = threading.Lock()
        self._samples: list[MeterSample] = []
        self._gaps: list[_OpenGap] = []
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._opened_meter = False
        self._connected = False
        self._timeouts = 0
        self._backoff_seconds = reconnect_initial_seconds
        self._next_reconnect_at = 0.0
        self._last_meter_seconds: float | None = None
        self.reconnect_attempts = 0
        self._opened_at = 0.0
        self._start_seconds: float | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Open the meter, start sampling, measure the baseline (if asked), then mark the job's
        start. A meter that cannot be opened starts a gap instead of failing."""
        if self._thread is not None:
            raise RuntimeError("this window was already started")
        self._opened_at = self.clock.now()
        self.estimator.open()
        if self.meter.is_open:
            self._connected = True
        else:
            try:
                self.meter.open()
            except MeterError as exc:
                self._begin_gap(self._opened_at, f"could not open the meter: {exc}")
            else:
                self._connected = True
                self._opened_meter = True
        self._thread = threading.Thread(target=self._run, name="tbftd-energy-window", daemon=True)
        self._thread.start()
        if self.remembered_baseline_watts is None and self.baseline_seconds > 0:
            try:
                self.clock.sleep(self.baseline_seconds)
            except BaseException:
                # Interrupted before the job began (Ctrl+C): leave no sampling thread behind.
                self._stop_event.set()
                self._thread.join()
                if self._opened_meter:
                    self.meter.close()
                raise
        self._start_seconds = self.clock.now()

    def stop(self) -> EnergyResult:
        """Mark the job's end, stop sampling and return the result (again on a second call)."""
        if self.result is not None:
            return self.result
        if self._thread is None or self._start_seconds is None:
            raise RuntimeError("stop() before start()")
        stop_seconds = self.clock.now()
        self._stop_event.set()
        self._thread.join()
        if self._opened_meter:
            self.meter.close()
        if self.estimator is not self.meter:
            self.estimator.close()
        self.result = self._result(self._start_seconds, stop_seconds)
        return self.result

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def started_monotonic_seconds(self) -> float | None:
        """The clock time the job started (after the baseline), or None before ``start``."""
        return self._start_seconds

    def joules_so_far(self) -> float:
        """Energy from the job's start (after the baseline) to now, from the readings so far.

        For budgets checked while a job runs; 0 before the job starts. The final figure is
        :meth:`stop`'s, which also accounts for gaps and the counter cross-check.
        """
        if self._start_seconds is None:
            return 0.0
        with self._lock:
            points = [TracePoint(s.seconds, s.watts, s.source) for s in self._samples]
        if not points:
            return 0.0
        return integrate(points, self._start_seconds, self.clock.now()).joules

    @property
    def latest_sample(self) -> MeterSample | None:
        """The most recent reading (meter or estimate), for live display."""
        with self._lock:
            return self._samples[-1] if self._samples else None

    # -- sampling thread ---------------------------------------------------------------------

    def _run(self) -> None:
        due = self.clock.now()
        while not self._stop_event.is_set():
            self._sample_once()
            due += self.interval_seconds
            now = self.clock.now()
            due = max(due, now)  # fell behind (a slow read, a busy machine): no burst to catch up
            if self.clock.wait(self._stop_event, due - now):
                break

    def _sample_once(self) -> None:
        if self._connected:
            try:
                sample = self.meter.read()
            except MeterTimeout as exc:
                self._timeouts += 1
                if self._timeouts < self.max_timeouts:
                    return  # a missed reading: the trapezoid spans it
                self.meter.close()
                self._lose(f"no reply {self._timeouts} times in a row ({exc})")
            except MeterError as exc:
                self.meter.close()
                self._lose(str(exc))
            else:
                self._timeouts = 0
                self._record(sample)
                return
        if self.clock.now() >= self._next_reconnect_at and self._reconnect():
            return  # the meter is back; its next reading comes at the next period
        self._record(self.estimator.read())

    def _lose(self, reason: str) -> None:
        now = self.clock.now()
        start = self._last_meter_seconds if self._last_meter_seconds is not None else now
        self._begin_gap(start, reason)

    def _begin_gap(self, start: float, reason: str) -> None:
        self._connected = False
        self._timeouts = 0
        self._backoff_seconds = self.reconnect_initial_seconds
        self._next_reconnect_at = self.clock.now() + self._backoff_seconds
        with self._lock:
            self._gaps.append(_OpenGap(start, None, reason))

    def _reconnect(self) -> bool:
        self.reconnect_attempts += 1
        try:
            self.meter.close()
            self.meter.open()
        except MeterError:
            self._backoff_seconds = min(self._backoff_seconds * 2, self.reconnect_max_seconds)
            self._next_reconnect_at = self.clock.now() + self._backoff_seconds
            return False
        self._connected = True
        return True

    def _record(self, sample: MeterSample) -> None:
        with self._lock:
            self._samples.append(sample)
            if not is_estimate(sample.source) or self.estimator is self.meter:
                self._last_meter_seconds = sample.seconds
                if self._gaps and self._gaps[-1].end is None:
                    self._gaps[-1].end = sample.seconds

    # -- the result --------------------------------------------------------------------------

    def _result(self, start: float, stop: float) -> EnergyResult:
        with self._lock:
            samples = sorted(self._samples, key=lambda s: s.seconds)
            raw_gaps = [replace(g) for g in self._gaps]
        points = [TracePoint(s.seconds, s.watts, s.source) for s in samples]
        seconds = stop - start
        notes: list[str] = []

        whole = integrate(points, start, stop)
        joules = whole.joules
        source = (
            max(whole.source_seconds, key=whole.source_seconds.__getitem__)
            if whole.source_seconds
            else self.meter.describe().source
        )
        inside = [s for s in samples if start <= s.seconds <= stop]
        meter_inside = [s for s in inside if not is_estimate(s.source)]
        if points:
            peak = max([watts_at(points, start), watts_at(points, stop)] + [s.watts for s in inside])
        else:
            peak = 0.0
        mean = joules / seconds if seconds > 0 else (points[-1].watts if points else 0.0)

        baseline_seconds = 0.0
        baseline_source: str | None = None
        baseline: float | None = None
        if self.remembered_baseline_watts is not None:
            baseline, baseline_source = self.remembered_baseline_watts, "remembered"
        elif self.baseline_seconds > 0 and start > self._opened_at and points:
            before = integrate(points, self._opened_at, start)
            baseline_seconds = start - self._opened_at
            baseline = before.joules / baseline_seconds
            baseline_source = max(before.source_seconds, key=before.source_seconds.__getitem__)
        net = joules - baseline * seconds if baseline is not None else None

        counter_joules = counter_seconds = counter_difference = None
        check = counter_check(meter_inside, origin=start)
        if check is not None:
            counter_joules = check.joules
            counter_seconds = check.last_seconds - check.first_seconds
            same_span = integrate(points, check.first_seconds, check.last_seconds).joules
            counter_difference = counter_joules - same_span
            notes.extend(check.events)

        low_confidence = len(inside) < self.min_samples
        if low_confidence:
            notes.append(
                f"only {len(inside)} readings in {seconds:.2f} s at {self.rate_hz:g} Hz: "
                "too short a job for this meter's rate"
            )
        gaps = tuple(
            Gap(g.start - start, None if g.end is None else g.end - start, g.reason)
            for g in raw_gaps
        )
        for gap in gaps:
            end = "the end" if gap.end_seconds is None else f"{gap.end_seconds:.1f} s"
            notes.append(f"meter lost from {gap.start_seconds:.1f} s to {end}: {gap.reason}")
        estimated = sum(v for k, v in whole.source_seconds.items() if is_estimate(k))
        if estimated > 0 and not is_estimate(source):
            notes.append(f"{estimated:.1f} s of {seconds:.1f} s estimated from CPU load")

        return EnergyResult(
            joules=joules,
            net_joules=net,
            seconds=seconds,
            mean_watts=mean,
            peak_watts=peak,
            source=source,
            samples=len(inside),
            gaps=gaps,
            counter_joules=counter_joules,
            baseline_watts=baseline,
            baseline_seconds=baseline_seconds,
            baseline_source=baseline_source,
            meter_samples=len(meter_inside),
            source_seconds=whole.source_seconds,
            source_joules=whole.source_joules,
            counter_seconds=counter_seconds,
            counter_difference_joules=counter_difference,
            counter_resolution_joules=self.counter_resolution_joules,
            low_confidence=low_confidence,
            notes=tuple(notes),
            trace=tuple(TracePoint(p.seconds - start, p.watts, p.source) for p in points
                        if start <= p.seconds <= stop),
            started_monotonic_seconds=start,
            stopped_monotonic_seconds=stop,
            rate_hz=self.rate_hz,
        )
