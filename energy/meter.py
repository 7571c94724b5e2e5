"""The one interface every power source implements, and what it returns.

A :class:`Meter` is opened, read one :class:`MeterSample` at a time at the rate its
:class:`MeterInfo` gives, and closed. Drivers: :mod:`energy.um` (RDTech UM24C/UM25C/UM34C),
:mod:`energy.line_meter` (text-line bridges), :mod:`energy.estimator` (no meter: a CPU-load model).
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, ClassVar, Self

from energy.clock import MONOTONIC, Clock

#: Joules in one milliwatt-hour: the resolution of the UM meters' energy counters.
JOULES_PER_MILLIWATT_HOUR = 3.6


class MeterError(Exception):
    """A meter could not be opened or read."""


class MeterTimeout(MeterError):
    """The meter did not answer in time (or answered with a short or corrupt reply)."""


class MeterDisconnected(MeterError):
    """The port went away (unplug, Bluetooth drop) or could not be opened."""


@dataclass(frozen=True)
class MeterSample:
    """One reading.

    ``seconds`` is the reader's clock (monotonic) at the moment the reading applies. ``volts`` and
    ``amps`` are None where the source does not measure them (the estimator). The counter fields
    are the meter's own energy counter for its selected data group, where it has one.
    """

    seconds: float
    watts: float
    volts: float | None
    amps: float | None
    source: str
    counter_milliwatt_hours: int | None = None
    counter_group: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return asdict(self)


@dataclass(frozen=True)
class MeterInfo:
    """What a meter is and how to read it.

    ``kind`` names the driver ("um", "line", "estimate"); ``model`` the device ("UM25C", or the
    board for an estimate); ``port`` is None for the estimator. Resolutions are the smallest step
    of each reading; ``counter_resolution_joules`` is None where there is no energy counter.
    """

    kind: str
    model: str
    port: str | None
    rate_hz: float
    volts_resolution: float | None
    amps_resolution: float | None
    watts_resolution: float | None
    counter_resolution_joules: float | None
    is_estimate: bool
    source: str
    detail: str = ""

    @property
    def has_counter(self) -> bool:
        """Whether the meter keeps its own energy counter."""
        return self.counter_resolution_joules is not None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return asdict(self)


def meter_source(model: str, port: str) -> str:
    """The label every figure from a real meter carries: ``MODEL@PORT``."""
    return f"{model}@{port}"


class Meter(abc.ABC):
    """A source of power readings: open, read, close, describe.

    ``read`` raises :class:`MeterTimeout` for a missed reading (the caller may simply try again at
    the next period) and :class:`MeterDisconnected` when the port is gone, after which the meter is
    closed and ``open`` may be called again to reconnect. Meters are used from one thread at a time.
    """

    #: The driver's name, as in ``MeterInfo.kind`` and ``--kind``.
    kind: ClassVar[str]

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or MONOTONIC

    @abc.abstractmethod
    def open(self) -> None:
        """Open the port (and check that a meter answers); raises MeterError."""

    @abc.abstractmethod
    def read(self) -> MeterSample:
        """One reading; raises MeterTimeout or MeterDisconnected."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the port; safe to call twice."""

    @abc.abstractmethod
    def describe(self) -> MeterInfo:
        """Model, port, resolution and rate."""

    @property
    @abc.abstractmethod
    def is_open(self) -> bool:
        """Whether ``read`` can be called."""

    @property
    def source(self) -> str:
        """The label on every reading from this meter."""
        return self.describe().source

    def __enter__(self) -> Self:
        if not self.is_open:
            self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
