"""Power profiles and the emulator itself: exact integrals, counters, commands, pacing, the pty."""

from __future__ import annotations

import os

import pytest

from energy.clock import ScaledClock
from energy.emulator import Emulator
from energy.meter import JOULES_PER_MILLIWATT_HOUR
from energy.profiles import (
    ConstantProfile,
    CpuLoadProfile,
    FunctionProfile,
    StepProfile,
    parse_profile,
)
from energy.um import UM34C_CHECKSUM_POSITIONS, decode_frame, encode_frame, um34c_checksum
from tests.energy_helpers import no_leaked_threads  # noqa: F401


def test_step_profile_levels_and_exact_joules() -> None:
    profile = StepProfile(((10.0, 4.5), (10.0, 7.5), (10.0, 6.0)))
    assert [profile.watts(t) for t in (0.0, 9.999, 10.0, 19.5, 20.0, 45.0, -1.0)] == [
        4.5, 4.5, 7.5, 7.5, 6.0, 6.0, 4.5,
    ]
    assert profile.joules(0.0, 30.0) == pytest.approx(180.0)
    assert profile.joules(5.0, 25.0) == pytest.approx(22.5 + 75.0 + 30.0)
    assert profile.joules(30.0, 40.0) == pytest.approx(60.0)  # holds the last level


def test_cycle_profile_repeats() -> None:
    profile = parse_profile("cycle:2@1,4@1")
    assert isinstance(profile, StepProfile) and profile.repeat
    assert [profile.watts(t) for t in (0.5, 1.5, 2.5, 3.5)] == [2.0, 4.0, 2.0, 4.0]
    assert profile.joules(0.5, 10.5) == pytest.approx(30.0)


def test_function_profile_integrates_numerically() -> None:
    profile = FunctionProfile(lambda t: 3.0 + t * t, "quadratic")
    assert profile.joules(0.0, 3.0) == pytest.approx(9.0 + 9.0, rel=1e-9)


def test_parse_profile() -> None:
    assert parse_profile("5") == ConstantProfile(5.0)
    assert parse_profile("constant:2.5") == ConstantProfile(2.5)
    steps = parse_profile("steps:4.5@10,7.5@10")
    assert isinstance(steps, StepProfile) and steps.steps == ((10.0, 4.5), (10.0, 7.5))
    cpu = parse_profile("cpu:3,4")
    assert isinstance(cpu, CpuLoadProfile) and cpu.joules(0, 1) is None
    for bad in ("steps:4.5", "steps:", "walk:3", "cpu:x,y", "constant:"):
        with pytest.raises(ValueError, match="bad profile"):
            parse_profile(bad)


def test_emulator_counters_integrate_the_profile(clock: ScaledClock) -> None:
    with Emulator("um25c", ConstantProfile(18.0), clock=clock) as emulator:
        clock.sleep(4.0)
        now = clock.now()
        counted = emulator.counter_milliwatt_hours()
        exact = emulator.exact_joules(emulator.origin_seconds, now) / JOULES_PER_MILLIWATT_HOUR
        frame = emulator.current_frame()
    assert exact - 1 <= counted <= exact + 1  # floor, and a moment between the two readings
    assert frame.counter_milliwatt_hours >= counted
    assert frame.counter_milliamp_hours == pytest.approx(frame.counter_milliwatt_hours / 5.1, abs=1)
    assert frame.recording and frame.record_milliwatt_hours >= counted - 1


def test_emulator_frames_are_intact_for_each_model(clock: ScaledClock) -> None:
    for model in ("um24c", "um25c", "um34c"):
        with Emulator(model, ConstantProfile(5.0), clock=clock) as emulator:
            data = encode_frame(emulator.current_frame())
        assert decode_frame(data).model == model.upper()
    assert len(UM34C_CHECKSUM_POSITIONS) == 32 and um34c_checksum(bytes(130)) == 0


def test_emulator_refreshes_at_2hz_of_its_clock(clock: ScaledClock) -> None:
    with Emulator("um25c", clock=clock) as emulator:
        clock.sleep(6.0)
        refreshes = emulator.refreshes
    # 2 Hz for 6 emulated seconds, plus the one at start; never faster. (A stalled thread skips
    # to the latest refresh rather than replaying missed ones, hence the loose lower bound.)
    assert 6 <= refreshes <= 14


def test_emulator_port_is_a_stable_link_to_a_pty(clock: ScaledClock, tmp_path) -> None:
    link = tmp_path / "ttyUM"
    emulator = Emulator("um34c", clock=clock, link_path=link)
    assert emulator.start() == str(link)
    first = emulator.pty_path
    assert first is not None and os.path.realpath(link) == first
    emulator.unplug()
    assert not link.exists() and emulator.pty_path is None
    emulator.replug()
    assert link.exists() and os.path.realpath(link) == emulator.pty_path
    emulator.stop()
    assert not link.exists()


def test_exact_joules_needs_a_reproducible_profile(clock: ScaledClock) -> None:
    emulator = Emulator("um25c", CpuLoadProfile(load_fraction=lambda: 0.5), clock=clock)
    with pytest.raises(ValueError, match="no exact integral"):
        emulator.exact_joules(0.0, 1.0)
    with emulator:
        clock.sleep(2.0)
        assert emulator.current_frame().watts == pytest.approx(4.4032 + 3.4579 / 2, abs=0.001)
