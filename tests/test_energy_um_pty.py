"""The UM driver over a real pseudo-terminal, with the emulator playing the meter."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from energy.clock import MonotonicClock, ScaledClock
from energy.emulator import Emulator
from energy.meter import MeterDisconnected, MeterError, MeterTimeout
from energy.profiles import ConstantProfile, FunctionProfile
from energy.um import UMMeter
from tests.energy_helpers import no_leaked_threads  # noqa: F401

# The driver's command gap (0.5 s) runs in emulated time: 25 ms real at this scale.
FAST = 20.0


@pytest.fixture
def fast_clock() -> ScaledClock:
    return ScaledClock(FAST)


@pytest.fixture
def um25c(fast_clock: ScaledClock) -> Iterator[Emulator]:
    # 5.123 V at 0.8765 A: exactly representable at the UM25C's resolution.
    with Emulator("um25c", ConstantProfile(5.123 * 0.8765), volts=5.123, clock=fast_clock) as emulator:
        yield emulator


@pytest.mark.parametrize(
    ("model", "volts", "amps", "watts"),
    [
        ("um24c", 5.12, 0.8, 4.096),
        ("um25c", 5.123, 0.8765, 4.49),  # watts on the wire: round(4.4903095, 3)
        ("um34c", 12.34, 1.5, 18.51),
    ],
)
def test_each_model_decodes_exactly_over_a_pty(
    model: str, volts: float, amps: float, watts: float, fast_clock: ScaledClock
) -> None:
    with Emulator(model, ConstantProfile(volts * amps), volts=volts, clock=fast_clock) as emulator:
        emulator.set_counter(4321, group=0)
        with UMMeter(emulator.port, clock=fast_clock) as meter:
            sample = meter.read()
            info = meter.describe()
    assert info.model == model.upper() and info.source == f"{model.upper()}@{emulator.port}"
    assert (sample.volts, sample.amps, sample.watts) == (volts, amps, watts)
    assert sample.source == info.source
    assert sample.counter_group == 0
    assert 4321 <= sample.counter_milliwatt_hours < 4340  # plus what it counted meanwhile
    assert meter.last_frame is not None and meter.last_frame.model == model.upper()


def test_resync_after_garbage(um25c: Emulator, fast_clock: ScaledClock) -> None:
    with UMMeter(um25c.port, clock=fast_clock) as meter:
        # Garbage with a fake UM25C id in it, then the real frame.
        um25c.inject_garbage(b"\x00\x09\xc9\xff" + bytes(range(40)) + b"\x09\xc9")
        sample = meter.read()
        assert (sample.volts, sample.amps) == (5.123, 0.8765)
        assert meter.read().volts == 5.123


def test_a_short_read_times_out_and_does_not_shift_the_next_frame(
    um25c: Emulator, fast_clock: ScaledClock
) -> None:
    with UMMeter(um25c.port, clock=fast_clock) as meter:
        um25c.inject_short_reply(60)
        with pytest.raises(MeterTimeout, match="60 bytes"):
            meter.read()
        assert meter.is_open
        for _ in range(2):
            sample = meter.read()
            assert (sample.volts, sample.amps, sample.watts) == (5.123, 0.8765, 4.49)


def test_a_corrupt_frame_is_dropped(um25c: Emulator, fast_clock: ScaledClock) -> None:
    with UMMeter(um25c.port, clock=fast_clock) as meter:
        um25c.inject_corrupt_reply()
        with pytest.raises(MeterTimeout):
            meter.read()
        assert meter.read().volts == 5.123


def test_open_survives_one_dropped_request(um25c: Emulator, fast_clock: ScaledClock) -> None:
    um25c.ignore_requests(1)
    with UMMeter(um25c.port, clock=fast_clock) as meter:
        assert meter.describe().model == "UM25C"


def test_select_and_clear_a_group(um25c: Emulator, fast_clock: ScaledClock) -> None:
    with UMMeter(um25c.port, clock=fast_clock) as meter:
        meter.select_group(4)
        um25c.set_counter(1000, group=4)
        sample = meter.read()
        assert sample.counter_group == 4 and sample.counter_milliwatt_hours >= 1000
        assert um25c.group == 4
        meter.clear_group()
        assert meter.read().counter_milliwatt_hours < 5
        with pytest.raises(ValueError):
            meter.select_group(10)


def test_the_command_gap_keeps_a_dropping_meter_answering() -> None:
    # Real time: the emulator drops a command within 125 ms of the previous one.
    clock = MonotonicClock()
    with Emulator("um34c", drop_rapid_commands=True, clock=clock) as emulator:
        with UMMeter(emulator.port, clock=clock) as meter:
            meter.select_group(2)
            assert meter.read().counter_group == 2  # read waited the 0.5 s gap
        with UMMeter(emulator.port, command_gap_seconds=0.0, timeout_seconds=0.3, clock=clock) as hasty:
            hasty.select_group(5)
            with pytest.raises(MeterTimeout):
                hasty.read()  # sent right after the command: dropped


def test_polling_faster_than_2hz_returns_the_same_reading() -> None:
    clock = MonotonicClock()
    ramp = FunctionProfile(lambda t: 1.0 + t, "ramp")
    with Emulator("um25c", ramp, clock=clock) as emulator:
        with UMMeter(emulator.port, command_gap_seconds=0.0, clock=clock) as meter:
            readings = [meter.read().watts for _ in range(3)]
            # Three polls within a few milliseconds straddle at most one refresh.
            assert readings[0] == readings[1] or readings[1] == readings[2]
            time.sleep(0.6)
            assert meter.read().watts > readings[-1]


def test_unplug_raises_disconnected_and_replug_reconnects(
    um25c: Emulator, fast_clock: ScaledClock
) -> None:
    meter = UMMeter(um25c.port, clock=fast_clock)
    meter.open()
    try:
        um25c.unplug()
        with pytest.raises(MeterDisconnected, match="link lost"):
            meter.read()
        assert not meter.is_open
        with pytest.raises(MeterDisconnected, match="cannot open"):
            meter.open()
        um25c.replug()
        meter.open()
        assert meter.read().volts == 5.123
    finally:
        meter.close()


def test_configured_model_must_match(um25c: Emulator, fast_clock: ScaledClock) -> None:
    with pytest.raises(MeterError, match="not the configured UM34C"):
        UMMeter(um25c.port, model="um34c", clock=fast_clock).open()


def test_probe(um25c: Emulator, fast_clock: ScaledClock) -> None:
    info = UMMeter.probe(um25c.port, clock=fast_clock)
    assert info is not None and info.model == "UM25C" and info.has_counter
    assert UMMeter.probe("/nonexistent/port") is None


def test_a_url_with_no_meter_behind_it_times_out() -> None:
    # loop:// echoes the request back: a serial port, but not a meter.
    with pytest.raises(MeterTimeout):
        UMMeter("loop://", timeout_seconds=0.3).open()
