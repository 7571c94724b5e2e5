"""Clocks for energy accounting: the real monotonic clock, and a scaled one for tests and demos.

Everything in ``energy`` reads time through a :class:`Clock` so that the emulator and an
:class:`~energy.window.EnergyWindow` can share an accelerated clock: thirty emulated seconds then
pass in a few real ones, while every rate (the meter's 2 Hz, the gap between commands, the
reconnect backoff) stays the same in emulated time.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """A monotonic clock in (possibly emulated) seconds."""

    def now(self) -> float:
        """Monotonic time in seconds; only differences are meaningful."""
        ...

    def sleep(self, seconds: float) -> None:
        """Sleep for ``seconds`` of this clock's time."""
        ...

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait up to ``seconds`` of this clock's time for ``event``; True if it was set."""
        ...

    def to_real(self, seconds: float) -> float:
        """How many real seconds ``seconds`` of this clock's time take."""
        ...


class MonotonicClock:
    """The real clock: ``time.monotonic``."""

    def now(self) -> float:
        """Monotonic time in seconds."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Sleep for ``seconds`` real seconds (nothing if not positive)."""
        if seconds > 0:
            time.sleep(seconds)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait up to ``seconds`` for ``event``."""
        return event.wait(max(0.0, seconds))

    def to_real(self, seconds: float) -> float:
        """Real seconds are real seconds."""
        return seconds

    def __repr__(self) -> str:
        return "MonotonicClock()"


class ScaledClock:
    """Emulated time that runs ``scale`` times faster than real time.

    Share one instance between an emulator and the window that measures it. Real delays (thread
    scheduling, serial latency) are multiplied by ``scale`` when seen in emulated time, so keep the
    scale moderate (10-20) where timing accuracy matters.
    """

    def __init__(self, scale: float) -> None:
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.scale = float(scale)
        self._origin = time.monotonic()

    def now(self) -> float:
        """Emulated seconds since this clock was made."""
        return (time.monotonic() - self._origin) * self.scale

    def sleep(self, seconds: float) -> None:
        """Sleep for ``seconds`` emulated seconds."""
        if seconds > 0:
            time.sleep(seconds / self.scale)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait up to ``seconds`` emulated seconds for ``event``."""
        return event.wait(max(0.0, seconds) / self.scale)

    def to_real(self, seconds: float) -> float:
        """Real seconds taken by ``seconds`` emulated seconds."""
        return seconds / self.scale

    def __repr__(self) -> str:
        return f"ScaledClock(scale={self.scale:g})"


#: The clock used when none is given.
MONOTONIC: Clock = MonotonicClock()
