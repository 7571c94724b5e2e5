"""Shared pieces for the energy tests: an accelerated clock, a fixed estimator, a leak check.

Import the leak check into a test module to use it there: ``from tests.energy_helpers import
no_leaked_threads`` (it is autouse, so it guards every test of that module and no other). The
accelerated ``clock`` fixture is in ``conftest.py``.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator

import pytest

from energy.clock import ScaledClock
from energy.estimator import Estimator, PowerModel

#: Emulated seconds per real second in window tests: 30 emulated seconds take 3 real ones. Kept
#: moderate because real delays (scheduling on a loaded machine) are multiplied by it too.
TIME_SCALE = 10.0

#: How far (emulated seconds) a reading's timestamp, the middle of the request-reply exchange, may
#: sit from the instant the emulator answered, on a busy machine at TIME_SCALE. It bounds the
#: timing part of counter comparisons: watts x this, at each end of the counter's span.
TIMING_SLACK_SECONDS = 0.2

_OUR_THREADS = ("tbftd-meter-emulator", "tbftd-energy-window")


def fixed_estimator(watts: float, clock: ScaledClock | None = None, board: str = "fixed") -> Estimator:
    """An estimator that always says ``watts`` (so tests can tell its share of a figure)."""
    return Estimator(PowerModel(board, f"test board at {watts} W", watts, 0.0), clock=clock,
                     load_fraction=lambda: 0.0)


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves an emulator or window thread running."""
    yield
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        alive = [t.name for t in threading.enumerate() if t.name in _OUR_THREADS]
        if not alive:
            return
        time.sleep(0.02)
    pytest.fail(f"threads left running: {alive}")


# Offsets from shared/notes/power-meters.md, written out here independently of energy.um's layout.
def pack_frame(
    model_id: int,
    *,
    volts_raw: int,
    amps_raw: int,
    watts_raw: int,
    celsius: int = 0,
    fahrenheit: int = 0,
    group: int = 0,
    groups: dict[int, tuple[int, int]] | None = None,
    dplus_raw: int = 0,
    dminus_raw: int = 0,
    charging_mode: int = 0,
    record_mah: int = 0,
    record_mwh: int = 0,
    threshold_raw: int = 0,
    record_seconds: int = 0,
    recording: int = 0,
    screen_timeout: int = 0,
    brightness: int = 0,
    load_raw: int = 0,
    screen: int = 0,
) -> bytes:
    """A frame built field by field at the documented offsets, with the model's end marker or
    UM34C checksum."""
    data = bytearray(130)
    struct.pack_into(">H", data, 0, model_id)
    struct.pack_into(">H", data, 2, volts_raw)
    struct.pack_into(">H", data, 4, amps_raw)
    struct.pack_into(">I", data, 6, watts_raw)
    struct.pack_into(">H", data, 10, celsius)
    struct.pack_into(">H", data, 12, fahrenheit)
    struct.pack_into(">H", data, 14, group)
    for g, (mah, mwh) in (groups or {}).items():
        struct.pack_into(">II", data, 16 + 8 * g, mah, mwh)
    struct.pack_into(">H", data, 96, dplus_raw)
    struct.pack_into(">H", data, 98, dminus_raw)
    struct.pack_into(">H", data, 100, charging_mode)
    struct.pack_into(">I", data, 102, record_mah)
    struct.pack_into(">I", data, 106, record_mwh)
    struct.pack_into(">H", data, 110, threshold_raw)
    struct.pack_into(">I", data, 112, record_seconds)
    struct.pack_into(">H", data, 116, recording)
    struct.pack_into(">H", data, 118, screen_timeout)
    struct.pack_into(">H", data, 120, brightness)
    struct.pack_into(">I", data, 122, load_raw)
    struct.pack_into(">H", data, 126, screen)
    if model_id == 0x0D4C:
        checksum = 0
        for position in (1, 3, 7, 9, 15, 17, 19, 23, 31, 39, 41, 45, 49, 53, 55, 57, 59, 63, 67,
                         69, 73, 79, 83, 89, 97, 99, 109, 111, 113, 119, 121, 127):
            checksum ^= data[position]
        data[129] = checksum
    else:
        struct.pack_into(">H", data, 128, 0xFFF1)
    return bytes(data)
