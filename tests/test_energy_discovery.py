"""Probing ports and selecting the daemon's power source."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from energy.clock import ScaledClock
from energy.discovery import candidate_ports, make_meter, probe_port, probe_ports, select_meter
from energy.emulator import Emulator, LineEmulator
from energy.estimator import Estimator
from energy.line_meter import LineFormat, LineMeter
from energy.um import UMMeter
from tests.energy_helpers import fixed_estimator, no_leaked_threads  # noqa: F401

CSV = LineFormat(columns=("volts", "amps"))


def test_candidate_ports_in_pattern_order_without_duplicates(tmp_path: Path) -> None:
    (tmp_path / "ttyUSB0").touch()
    (tmp_path / "ttyACM0").touch()
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    (by_id / "usb-RDTech_UM25C-if00").symlink_to(tmp_path / "ttyUSB0")
    patterns = (f"{by_id}/*", f"{tmp_path}/ttyUSB*", f"{tmp_path}/ttyACM*", f"{tmp_path}/rfcomm*")
    assert candidate_ports(patterns) == [str(by_id / "usb-RDTech_UM25C-if00"), str(tmp_path / "ttyACM0")]


def test_probe_port_finds_a_um_meter_and_reports_absent_ports(clock: ScaledClock, tmp_path: Path) -> None:
    with Emulator("um34c", clock=clock) as emulator:
        found = probe_port(emulator.port, clock=clock)
        results = probe_ports([emulator.port, str(tmp_path / "nothing")], clock=clock)
    assert found.found and found.info is not None and found.info.model == "UM34C"
    assert [r.found for r in results] == [True, False]
    assert results[1].error == "no such port"


def test_probe_port_finds_a_line_meter(clock: ScaledClock) -> None:
    with LineEmulator(CSV, rate_hz=10.0, clock=clock) as emulator:
        result = probe_port(emulator.port, kinds=("line",), line_format=CSV, clock=clock)
    assert result.info is not None and result.info.kind == "line"


def test_select_configured_port_and_kind_without_probing(tmp_path: Path) -> None:
    meter = select_meter(str(tmp_path / "rfcomm0"), "um25c")
    assert isinstance(meter, UMMeter) and not meter.is_open
    assert meter.expected_model is not None and meter.expected_model.name == "UM25C"
    line = select_meter(str(tmp_path / "ttyACM0"), "line", line_format=CSV)
    assert isinstance(line, LineMeter) and line.line_format == CSV
    with pytest.raises(ValueError, match="unknown meter kind"):
        make_meter("tc66c", "/dev/ttyACM0")


def test_select_probes_a_configured_port(clock: ScaledClock) -> None:
    with Emulator("um24c", clock=clock) as emulator:
        meter = select_meter(emulator.port, clock=clock)
    assert isinstance(meter, UMMeter) and meter.describe().model == "UM24C"


def test_select_probes_the_usual_ports(clock: ScaledClock, tmp_path: Path) -> None:
    with Emulator("um25c", clock=clock, link_path=tmp_path / "rfcomm0") as emulator:
        meter = select_meter(patterns=[f"{tmp_path}/ttyUSB*", f"{tmp_path}/rfcomm*"], clock=clock)
    assert isinstance(meter, UMMeter) and meter.port == emulator.port


def test_select_falls_back_to_the_estimator(
    clock: ScaledClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fallback = fixed_estimator(3.0, clock)
    with caplog.at_level(logging.WARNING, logger="energy.discovery"):
        meter = select_meter(patterns=[f"{tmp_path}/*"], estimator=fallback)
    assert meter is fallback
    assert "estimates" in caplog.text
    assert select_meter(kind="estimate", estimator=fallback) is fallback
    assert select_meter(probe=False, estimator=fallback) is fallback
    assert isinstance(select_meter(kind="estimate"), Estimator)
