"""Energy windows: integration, baseline, counters, gaps, over a pty with an accelerated clock."""

from __future__ import annotations

import json
import math

import pytest

from energy.clock import ScaledClock
from energy.emulator import Emulator
from energy.meter import JOULES_PER_MILLIWATT_HOUR, MeterSample
from energy.profiles import ConstantProfile, StepProfile
from energy.um import UMMeter
from energy.window import (
    EnergyWindow,
    TracePoint,
    counter_check,
    counter_delta_milliwatt_hours,
    integrate,
    is_estimate,
)
from tests.energy_helpers import (  # noqa: F401
    TIMING_SLACK_SECONDS,
    fixed_estimator,
    no_leaked_threads,
)

RESOLUTION = JOULES_PER_MILLIWATT_HOUR
ESTIMATE_WATTS = 2.0  # what the gap-covering estimator says in these tests


# -- pure parts --------------------------------------------------------------------------------


def test_integrate_is_trapezoidal_and_holds_the_ends() -> None:
    points = [TracePoint(1.0, 2.0, "m"), TracePoint(3.0, 4.0, "m")]
    assert integrate(points, 1.0, 3.0).joules == pytest.approx(6.0)
    # Held before the first and after the last reading.
    assert integrate(points, 0.0, 4.0).joules == pytest.approx(2.0 + 6.0 + 4.0)
    # Clipped inside a stretch: linear between readings (3 W at t=2).
    assert integrate(points, 2.0, 3.0).joules == pytest.approx(3.5)
    assert integrate([], 0.0, 1.0).joules == 0.0


def test_integrate_splits_mixed_stretches_between_sources() -> None:
    points = [TracePoint(0.0, 4.0, "m"), TracePoint(1.0, 2.0, "estimate:x"), TracePoint(2.0, 2.0, "estimate:x")]
    result = integrate(points, 0.0, 2.0)
    assert result.joules == pytest.approx(5.0)
    assert result.source_seconds == pytest.approx({"m": 0.5, "estimate:x": 1.5})
    assert sum(result.source_joules.values()) == pytest.approx(result.joules)


def test_counter_delta_tells_wrap_from_reset() -> None:
    assert counter_delta_milliwatt_hours(100, 130, 10.0) == (30, "ok")
    # 2**32 - 5 -> 3 in a second: 8 mWh, possible at 180 W (50 mWh/s): a wrap.
    assert counter_delta_milliwatt_hours(2**32 - 5, 3, 1.0) == (8, "wrap")
    # 5000 -> 7 in a second cannot be a wrap: the group was cleared; 7 mWh counted since.
    assert counter_delta_milliwatt_hours(5000, 7, 1.0) == (7, "reset")
    # A rise of 1000 mWh in a second is not energy any meter passed.
    assert counter_delta_milliwatt_hours(10, 1010, 1.0) == (0, "jump")
    assert counter_delta_milliwatt_hours(10, 1010, 60.0) == (1000, "ok")  # over a minute's gap


def test_counter_check_skips_a_group_change() -> None:
    def s(t: float, mwh: int, group: int) -> MeterSample:
        return MeterSample(t, 5.0, 5.0, 1.0, "m", counter_milliwatt_hours=mwh, counter_group=group)

    check = counter_check([s(0, 10, 0), s(1, 12, 0), s(2, 500, 1), s(3, 503, 1)])
    assert check is not None
    assert check.joules == pytest.approx(5 * RESOLUTION)
    assert any("group changed" in e for e in check.events)
    assert counter_check([s(0, 10, 0)]) is None


# -- windows over a pty --------------------------------------------------------------------------


def _um(emulator: Emulator, clock: ScaledClock) -> UMMeter:
    return UMMeter(emulator.port, clock=clock)


def test_stepped_profile_within_one_percent_and_counter_agrees() -> None:
    """30 emulated seconds (6 real) of 4.5 W, 7.5 W, 6 W steps of 10 s, polled at the meter's 2 Hz.

    Why 1% holds honestly: the steps are long (20 sample periods) and fall on the emulator's
    0.5 s refresh grid, so what it shows is the profile itself; the trapezoid then errs only at the
    two edges, by at most |dW| x 0.5 s / 4 each: (3 + 1.5) x 0.125 = 0.56 J of 180 J (0.3%). Real
    latency, multiplied by the time scale, adds a little at the edges: this test runs at 5x rather
    than 10x so that a busy machine's scheduling delays stay small in emulated time. The counter
    only counts whole mWh: its difference is within one count (3.6 J) of the exact energy.
    """
    clock = ScaledClock(5.0)
    profile = StepProfile(((10.0, 4.5), (10.0, 7.5), (10.0, 6.0)))
    with Emulator("um25c", profile, clock=clock) as emulator:
        window = EnergyWindow(
            _um(emulator, clock), baseline_seconds=0, estimator=fixed_estimator(ESTIMATE_WATTS, clock)
        )
        window.start()
        clock.sleep(30.0)
        result = window.stop()
        exact = emulator.exact_joules(result.started_monotonic_seconds, result.stopped_monotonic_seconds)

    assert result.seconds == pytest.approx(30.0, abs=0.5)
    assert exact == pytest.approx(180.0, rel=0.02)
    assert abs(result.joules - exact) <= 0.01 * exact
    assert result.source == f"UM25C@{emulator.port}" and result.gaps == ()
    assert result.samples >= 50 and result.meter_samples == result.samples
    assert result.peak_watts == 7.5
    assert result.mean_watts == pytest.approx(result.joules / result.seconds)
    assert not result.low_confidence

    # The counter over its own span (first to last reading) against the emulator's exact energy,
    # and against the window's integral over the same span.
    assert result.counter_joules is not None and result.counter_seconds is not None
    trace = [p for p in result.trace if not is_estimate(p.source)]
    start = result.started_monotonic_seconds
    counter_exact = emulator.exact_joules(start + trace[0].seconds, start + trace[-1].seconds)
    timing = 2 * 7.5 * TIMING_SLACK_SECONDS / 2  # the slack is halved at 5x
    assert abs(result.counter_joules - counter_exact) <= RESOLUTION + timing
    assert result.counter_difference_joules is not None
    assert abs(result.counter_difference_joules) <= RESOLUTION + 0.01 * counter_exact
    assert result.counter_resolution_joules == RESOLUTION


def test_disconnect_mid_window_is_covered_recorded_and_reconnected(clock: ScaledClock) -> None:
    with Emulator("um25c", ConstantProfile(5.0), clock=clock) as emulator:
        window = EnergyWindow(
            _um(emulator, clock),
            baseline_seconds=0,
            estimator=fixed_estimator(ESTIMATE_WATTS, clock),
            reconnect_initial_seconds=0.5,
            reconnect_max_seconds=2.0,
        )
        window.start()
        started = window.started_monotonic_seconds
        assert started is not None
        clock.sleep(5.0)
        emulator.unplug()
        # Stamped once the unplug is done: a reading in flight across it may still succeed, and its
        # timestamp (the middle of its exchange) can fall after the moment unplug() was called.
        unplugged_at = clock.now() - started
        clock.sleep(5.0)
        replugged_at = clock.now() - started
        emulator.replug()
        clock.sleep(7.0)
        result = window.stop()
        exact = emulator.exact_joules(result.started_monotonic_seconds, result.stopped_monotonic_seconds)

    # One gap, from the last reading before the unplug to the first after the replug.
    assert len(result.gaps) == 1
    gap = result.gaps[0]
    assert gap.end_seconds is not None
    assert unplugged_at - 1.0 <= gap.start_seconds <= unplugged_at
    assert replugged_at < gap.end_seconds < result.seconds
    assert "link lost" in gap.reason

    # The estimate covered the gap and only the gap; the window says which seconds came from where.
    meter_source = f"UM25C@{emulator.port}"
    assert set(result.source_seconds) == {meter_source, "estimate:fixed"}
    assert sum(result.source_seconds.values()) == pytest.approx(result.seconds)
    gap_seconds = gap.end_seconds - gap.start_seconds
    assert result.source_seconds["estimate:fixed"] == pytest.approx(gap_seconds, abs=1.0)
    for point in result.trace:
        inside = gap.start_seconds < point.seconds < gap.end_seconds
        assert is_estimate(point.source) == inside, point
    assert result.source == meter_source  # the meter covered most of the job
    assert any("estimated from CPU load" in note for note in result.notes)

    # Energy: 5 W from the meter, 2 W from the estimate, mixed only at the gap's two edges.
    expected = 5.0 * result.source_seconds[meter_source] + 2.0 * result.source_seconds["estimate:fixed"]
    assert result.joules == pytest.approx(expected, abs=2.0)
    # The meter kept counting while the link was down: its counter knows the true energy.
    assert result.counter_joules is not None
    assert result.counter_joules == pytest.approx(
        5.0 * result.counter_seconds, abs=RESOLUTION + 2 * 5.0 * TIMING_SLACK_SECONDS
    )  # not 5 W x (span - gap): the gap's ~40 J are in it
    assert exact == pytest.approx(5.0 * result.seconds)

    # Backoff: fewer attempts than the sample periods the gap lasted, and at least two.
    assert 2 <= window.reconnect_attempts < gap_seconds * 2


def test_a_stalled_meter_becomes_a_gap_after_repeated_timeouts(clock: ScaledClock) -> None:
    with Emulator("um34c", ConstantProfile(3.0), clock=clock) as emulator:
        window = EnergyWindow(
            _um(emulator, clock),
            baseline_seconds=0,
            estimator=fixed_estimator(ESTIMATE_WATTS, clock),
            reconnect_initial_seconds=0.5,
            reconnect_max_seconds=1.0,
        )
        window.start()
        clock.sleep(2.0)
        emulator.ignore_requests(5)  # three timeouts, then a reconnect that fails twice
        saw_estimate = back = False
        deadline = clock.now() + 60.0
        while not back and clock.now() < deadline:
            clock.sleep(0.5)
            latest = window.latest_sample
            assert latest is not None
            saw_estimate = saw_estimate or is_estimate(latest.source)
            back = saw_estimate and not is_estimate(latest.source)
        clock.sleep(1.0)
        result = window.stop()
    assert len(result.gaps) == 1
    assert "no reply 3 times" in result.gaps[0].reason
    assert result.gaps[0].end_seconds is not None
    assert result.trace[-1].source.startswith("UM34C@")


def test_counter_wrap_is_handled(clock: ScaledClock) -> None:
    with Emulator("um25c", ConstantProfile(20.0), clock=clock) as emulator:
        # 20 W passes 15 mWh in 2.7 s: the wrap falls inside the 6 s window, after the start.
        emulator.set_counter(2**32 - 15)
        window = EnergyWindow(_um(emulator, clock), baseline_seconds=0)
        window.start()
        clock.sleep(6.0)
        result = window.stop()
    assert any("counter wrap" in note for note in result.notes)
    assert result.counter_joules is not None and result.counter_seconds is not None
    assert result.counter_joules == pytest.approx(
        20.0 * result.counter_seconds, abs=RESOLUTION + 2 * 20.0 * TIMING_SLACK_SECONDS
    )


def test_counter_reset_is_handled(clock: ScaledClock) -> None:
    with Emulator("um25c", ConstantProfile(20.0), clock=clock) as emulator:
        emulator.set_counter(5000)
        window = EnergyWindow(_um(emulator, clock), baseline_seconds=0)
        window.start()
        clock.sleep(3.0)
        emulator.clear_group()  # someone presses the button
        clock.sleep(3.0)
        result = window.stop()
    assert any("counter reset" in note for note in result.notes)
    assert result.counter_joules is not None and result.counter_seconds is not None
    true_joules = 20.0 * result.counter_seconds
    # Only the energy between the last reading before the clear and the clear itself is lost:
    # under a period (0.5 s), or two if a reading was missed.
    slack = RESOLUTION + 2 * 20.0 * TIMING_SLACK_SECONDS
    lost_at_most = 20.0 * 1.0
    assert true_joules - lost_at_most - slack <= result.counter_joules <= true_joules + slack


def test_measured_baseline_and_net_joules(clock: ScaledClock) -> None:
    # Idle at 3 W until 5 s after the emulator starts, then the "job" draws 8 W. (The baseline's
    # 3 s start a moment after the emulator's clock does; the margin absorbs a busy machine.)
    profile = StepProfile(((5.0, 3.0), (100.0, 8.0)))
    with Emulator("um25c", profile, clock=clock) as emulator:
        with EnergyWindow(_um(emulator, clock), baseline_seconds=3.0) as window:
            clock.sleep(8.0)
        result = window.result
        assert result is not None
        exact = emulator.exact_joules(result.started_monotonic_seconds, result.stopped_monotonic_seconds)
    assert result.baseline_watts == pytest.approx(3.0, abs=0.01)
    assert result.baseline_seconds == pytest.approx(3.0, abs=0.5)
    assert result.baseline_source == f"UM25C@{emulator.port}"
    assert result.joules == pytest.approx(exact, abs=5.0 * 0.5)
    assert result.net_joules == pytest.approx(result.joules - result.baseline_watts * result.seconds)
    # The job's one step (+5 W) costs the trapezoid at most 5 W x one 0.5 s period.
    assert result.net_joules == pytest.approx(exact - 3.0 * result.seconds, abs=5.0 * 0.5)
    assert all(p.seconds >= 0 for p in result.trace)  # baseline readings are not the job's


def test_remembered_baseline_and_no_baseline(clock: ScaledClock) -> None:
    meter = fixed_estimator(4.0, clock)
    with EnergyWindow(meter, baseline_watts=2.5, baseline_seconds=100.0) as window:
        clock.sleep(3.0)  # start() did not spend 100 s measuring
    result = window.result
    assert result is not None
    assert result.baseline_source == "remembered" and result.baseline_seconds == 0.0
    assert result.net_joules == pytest.approx(result.joules - 2.5 * result.seconds)
    assert result.seconds < 10.0

    with EnergyWindow(fixed_estimator(4.0, clock), baseline_seconds=0) as window:
        clock.sleep(1.0)
    assert window.result is not None
    assert window.result.baseline_watts is None and window.result.net_joules is None


def test_joules_so_far_follow_the_job_while_it_runs(clock: ScaledClock) -> None:
    window = EnergyWindow(fixed_estimator(4.0, clock), baseline_seconds=0)
    assert window.joules_so_far() == 0.0  # not started
    with window:
        clock.sleep(2.0)
        early = window.joules_so_far()
        clock.sleep(3.0)
        late = window.joules_so_far()
    assert window.result is not None
    assert early == pytest.approx(4.0 * 2.0, abs=4.0 * 0.6)
    assert late == pytest.approx(4.0 * 5.0, abs=4.0 * 0.6)
    assert late <= window.result.joules + 1e-9


def test_estimator_only_window_says_it_is_an_estimate(clock: ScaledClock) -> None:
    with EnergyWindow(fixed_estimator(4.0, clock, board="pi5"), baseline_seconds=0) as window:
        clock.sleep(5.0)
    result = window.result
    assert result is not None
    assert result.source == "estimate:pi5"
    assert result.meter_samples == 0 and result.counter_joules is None and result.gaps == ()
    assert result.joules == pytest.approx(4.0 * result.seconds)
    assert result.estimated_seconds == pytest.approx(result.seconds)


def test_too_short_a_job_is_low_confidence(clock: ScaledClock) -> None:
    with Emulator("um25c", ConstantProfile(5.0), clock=clock) as emulator:
        with EnergyWindow(_um(emulator, clock), baseline_seconds=0) as window:
            clock.sleep(0.6)
    result = window.result
    assert result is not None
    assert result.low_confidence
    assert any("too short" in note for note in result.notes)
    assert result.samples < 5
    assert result.joules == pytest.approx(5.0 * result.seconds)  # a number, flagged


def test_a_meter_absent_at_start_is_a_gap_not_an_error(clock: ScaledClock, tmp_path) -> None:
    meter = UMMeter(str(tmp_path / "ttyNONE"), clock=clock)
    with EnergyWindow(meter, baseline_seconds=0, estimator=fixed_estimator(3.0, clock)) as window:
        clock.sleep(2.0)
    result = window.result
    assert result is not None
    assert result.source == "estimate:fixed"
    assert len(result.gaps) == 1 and result.gaps[0].end_seconds is None
    assert "could not open" in result.gaps[0].reason


def test_result_to_dict_is_json(clock: ScaledClock) -> None:
    with Emulator("um34c", ConstantProfile(5.0), clock=clock) as emulator:
        with EnergyWindow(_um(emulator, clock), baseline_seconds=1.0) as window:
            clock.sleep(3.0)
    assert window.result is not None
    data = json.loads(json.dumps(window.result.to_dict()))
    for key in ("joules", "net_joules", "seconds", "mean_watts", "peak_watts", "source", "samples",
                "gaps", "counter_joules", "baseline_watts", "low_confidence", "source_seconds",
                "trace", "counter_difference_joules"):
        assert key in data
    t, watts, source = data["trace"][0]
    assert 0 <= t <= data["seconds"] and math.isclose(watts, 5.0) and source.startswith("UM34C@")
    assert window.stop() is window.result  # a second stop returns the same result
