"""``tbftd meter probe|watch|emulate`` through ``service.cli.main``, against the emulator."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from energy.emulator import Emulator
from energy.profiles import ConstantProfile
from energy.um import UMMeter
from service.cli import main
from tests.energy_helpers import no_leaked_threads  # noqa: F401


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    # Real time: the CLI runs at the meter's real rate.
    with Emulator("um25c", ConstantProfile(5.0), volts=5.0) as running:
        yield running


def test_probe_a_port(emulator: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["meter", "probe", "--port", emulator.port]) == 0
    out = capsys.readouterr().out
    assert f"{emulator.port}: um UM25C" in out


def test_probe_with_nothing_connected(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr("service.meter_commands.candidate_ports", list)
    assert main(["meter", "probe"]) == 1
    out = capsys.readouterr().out
    assert "no serial ports found" in out and "estimated: estimate:" in out
    assert main(["meter", "probe", "--port", str(tmp_path / "ttyUSB7")]) == 1
    assert "ttyUSB7: no such port" in capsys.readouterr().out


def test_watch_prints_live_readings(emulator: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["meter", "watch", "--port", emulator.port, "--count", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"UM25C@{emulator.port}:") and "2 Hz" in lines[0]
    assert len(lines) == 4
    for line in lines[1:]:
        assert "5.000 V" in line and "1.0000 A" in line and "5.000 W" in line and "mWh" in line
    final_joules = float(lines[-1].split(" W ")[1].split("J")[0])
    assert final_joules == pytest.approx(5.0, abs=0.5)  # two half-second intervals at 5 W


def test_watch_the_estimator(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["meter", "watch", "--kind", "estimate", "--count", "2"]) == 0
    out = capsys.readouterr().out
    header, *readings = out.strip().splitlines()
    assert header.startswith("estimate:") and "estimate from CPU load" in header
    assert len(readings) == 2 and all("- V" in r and " W " in r for r in readings)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "/nonexistent/ttyUSB9"], "/nonexistent/ttyUSB9: no such port"),
        (["--port", "/nonexistent/rfcomm0", "--kind", "um"], "cannot open /nonexistent/rfcomm0"),
        (["--kind", "line", "--port", "/dev/null"], "needs --line-columns"),
        (["--count", "0", "--kind", "estimate"], "--count must be at least 1"),
        (["--kind", "line", "--port", "x", "--line-columns", "volts,furlongs"], "bad line format"),
    ],
)
def test_watch_errors_are_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["meter", "watch", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.startswith("tbftd: error:")


def test_emulate_prints_a_port_that_answers(capsys: pytest.CaptureFixture[str]) -> None:
    codes: list[int] = []
    runner = threading.Thread(
        target=lambda: codes.append(
            main(["meter", "emulate", "--model", "um34c", "--watts", "3.3", "--seconds", "2"])
        )
    )
    runner.start()
    port = ""
    deadline = time.monotonic() + 5
    while not port and time.monotonic() < deadline:
        time.sleep(0.05)
        port = capsys.readouterr().out.strip()
    try:
        assert port, "emulate printed no port"
        with UMMeter(port.splitlines()[0]) as meter:
            sample = meter.read()
        assert meter.describe().model == "UM34C" and sample.watts == 3.3
    finally:
        runner.join()
    assert codes == [0]


def test_emulate_stops_on_ctrl_c(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("service.meter_commands.time.sleep", interrupt)
    assert main(["meter", "emulate", "--profile", "steps:3@1,6@1"]) == 0
    captured = capsys.readouterr()
    port = captured.out.strip()
    assert port and not Path(port).exists()  # stopped and cleaned up
    assert "steps 3 W for 1 s" in captured.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--profile", "steps:oops"], "bad profile"),
        (["--watts", "-1"], "must not be negative"),
        (["--volts", "0"], "must be positive"),
    ],
)
def test_emulate_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["meter", "emulate", *argv]) == 2
    assert message in capsys.readouterr().err


def test_meter_alone_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["meter"]) == 2
    assert "probe" in capsys.readouterr().err
