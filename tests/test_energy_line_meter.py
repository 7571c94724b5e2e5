"""Line meters: configurable text formats, parsed and read over a pty from an emulated bridge."""

from __future__ import annotations

import pytest

from energy.clock import ScaledClock
from energy.emulator import LineEmulator
from energy.line_meter import LineFormat, LineMeter, looks_like_readings
from energy.meter import MeterTimeout
from energy.profiles import ConstantProfile
from tests.energy_helpers import no_leaked_threads  # noqa: F401

CSV = LineFormat(columns=("volts", "amps", "watts"), separator=",")
MILLI_KEYED = LineFormat(columns=("millivolts", "milliamps"), separator=";", keys=("mV", "mA"))


def test_parse_csv_volts_amps_watts() -> None:
    reading = CSV.parse("5.0200,0.5120,2.5702\r")
    assert reading is not None
    assert (reading.volts, reading.amps, reading.watts) == (5.02, 0.512, 2.5702)


def test_parse_keyed_milli_units_in_any_order() -> None:
    reading = MILLI_KEYED.parse("mA=512; mV=5020")
    assert reading is not None
    assert (reading.volts, reading.amps) == (5.02, 0.512)
    assert reading.watts == pytest.approx(2.57024)


def test_parse_whitespace_positional_with_key_prefixes_and_skip() -> None:
    fmt = LineFormat(columns=("skip", "milliwatts"), separator=" ")
    reading = fmt.parse("t=1234   P=2500")
    assert reading is not None and reading.watts == 2.5 and reading.volts is None


@pytest.mark.parametrize("line", ["", "voltage,current,power", "INA226 ready", "5.0,0.5", "5.0,abc,1"])
def test_lines_that_are_not_readings(line: str) -> None:
    assert CSV.parse(line) is None


def test_bad_formats_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown column"):
        LineFormat(columns=("volts", "furlongs"))
    with pytest.raises(ValueError, match="watts column, or both"):
        LineFormat(columns=("volts",))
    with pytest.raises(ValueError, match="keys"):
        LineFormat(columns=("volts", "amps"), keys=("V",))
    assert LineFormat.from_options("Millivolts, milliamps", ";", "mV,mA") == MILLI_KEYED


def test_looks_like_readings() -> None:
    assert looks_like_readings("V=5.01 I=0.50")
    assert not looks_like_readings("INA219 bridge v2")


@pytest.mark.parametrize(
    ("line_format", "watts", "expected"),
    [
        (CSV, 5.02 * 0.512, (5.02, 0.512, 2.5702)),
        (MILLI_KEYED, 5.02 * 0.512, (5.02, 0.512, pytest.approx(2.57024))),
    ],
    ids=["csv-volts-amps-watts", "keyed-millivolts-milliamps"],
)
def test_line_meter_over_a_pty(
    line_format: LineFormat, watts: float, expected: tuple[float, float, float], clock: ScaledClock
) -> None:
    emulator = LineEmulator(
        line_format,
        ConstantProfile(watts),
        volts=5.02,
        rate_hz=4.0,
        clock=clock,
        preamble="INA226 bridge v1.2\r\nvoltage,current,power\r\n",
        chatter="status: ok, 0 overflows",  # after every reading: must be skipped
    )
    with emulator:
        meter = LineMeter(emulator.port, line_format, rate_hz=4.0, clock=clock)
        with meter:
            samples = [meter.read() for _ in range(3)]
            info = meter.describe()
    for sample in samples:
        assert (sample.volts, sample.amps, sample.watts) == expected
        assert sample.source == f"line-meter@{emulator.port}"
    assert samples[0].seconds < samples[1].seconds < samples[2].seconds
    assert info.kind == "line" and not info.has_counter


def test_line_meter_times_out_on_silence(clock: ScaledClock) -> None:
    # A bridge printing something else entirely: no line parses.
    emulator = LineEmulator(LineFormat(columns=("watts",)), ConstantProfile(1.0), clock=clock)
    with emulator:
        meter = LineMeter(emulator.port, CSV, timeout_seconds=0.5, clock=clock)
        with pytest.raises(MeterTimeout):
            meter.open()
        assert not meter.is_open


def test_probe_without_a_format_reports_the_lines(clock: ScaledClock) -> None:
    with LineEmulator(CSV, ConstantProfile(2.5), rate_hz=10.0, clock=clock) as emulator:
        info = LineMeter.probe(emulator.port, timeout_seconds=1.0)
        configured = LineMeter.probe(emulator.port, CSV, timeout_seconds=1.0, clock=clock)
    assert info is not None and info.kind == "line" and "configure" in info.detail
    assert configured is not None and configured.source == f"line-meter@{emulator.port}"
