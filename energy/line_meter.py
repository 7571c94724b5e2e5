"""Line meters: INA219/INA226-style bridges that print readings as text lines over USB serial.

There is no standard format, so :class:`LineFormat` says what each column holds (volts, amps,
watts, or their milli- units), the separator, and optionally the keys of ``key=value`` fields.
A line meter speaks on its own at its own rate; :class:`LineMeter` returns the freshest line.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

import serial

from energy.clock import Clock
from energy.meter import (
    Meter,
    MeterDisconnected,
    MeterError,
    MeterInfo,
    MeterSample,
    MeterTimeout,
    meter_source,
)
from energy.serial_link import (
    IO_ERRORS,
    MIN_REAL_TIMEOUT_SECONDS,
    close_link,
    describe_io_error,
    open_link,
)

#: Column names and what they hold: (quantity, divisor to SI). ``skip`` ignores a column.
COLUMN_UNITS: dict[str, tuple[str, int] | None] = {
    "volts": ("volts", 1),
    "millivolts": ("volts", 1000),
    "amps": ("amps", 1),
    "milliamps": ("amps", 1000),
    "watts": ("watts", 1),
    "milliwatts": ("watts", 1000),
    "skip": None,
}
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclass(frozen=True)
class LineReading:
    """The quantities in one line, in volts, amps and watts (None where the line has none)."""

    volts: float | None
    amps: float | None
    watts: float


@dataclass(frozen=True)
class LineFormat:
    """How a line meter writes a reading.

    ``columns`` names each field in order (see :data:`COLUMN_UNITS`); ``separator`` splits fields
    (empty or whitespace: any run of whitespace). With ``keys`` (one per column) fields are
    ``key=value`` and found by key in any order; without, a ``key=`` prefix is ignored and fields
    are taken by position. Watts come from a watts column, else volts × amps.
    """

    columns: tuple[str, ...] = ("volts", "amps")
    separator: str = ","
    keys: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        unknown = [c for c in self.columns if c not in COLUMN_UNITS]
        if unknown:
            raise ValueError(
                f"unknown column {unknown[0]!r} (known: {', '.join(COLUMN_UNITS)})"
            )
        quantities = {COLUMN_UNITS[c][0] for c in self.columns if COLUMN_UNITS[c]}  # type: ignore[index]
        if "watts" not in quantities and not {"volts", "amps"} <= quantities:
            raise ValueError("a line format needs a watts column, or both volts and amps")
        if self.keys is not None and len(self.keys) != len(self.columns):
            raise ValueError(f"{len(self.keys)} keys for {len(self.columns)} columns")

    @classmethod
    def from_options(
        cls, columns: str, separator: str = ",", keys: str | None = None
    ) -> LineFormat:
        """A format from command-line text: ``columns="millivolts,milliamps"``, ``keys="V,I"``."""
        names = tuple(c.strip().lower() for c in columns.split(",") if c.strip())
        key_names = tuple(k.strip() for k in keys.split(",")) if keys else None
        return cls(columns=names, separator=separator, keys=key_names)

    def _fields(self, line: str) -> list[str]:
        if self.separator.strip() == "":
            return line.split()
        return [f.strip() for f in line.split(self.separator)]

    def parse(self, line: str) -> LineReading | None:
        """The reading in one line, or None for anything else (a header, a boot message)."""
        fields = self._fields(line.strip())
        if self.keys is not None:
            by_key: dict[str, str] = {}
            for text in fields:
                key, sep, value = text.partition("=")
                if sep:
                    by_key[key.strip()] = value.strip()
            texts: list[str | None] = [by_key.get(k) for k in self.keys]
        else:
            if len(fields) < len(self.columns):
                return None
            texts = [f.partition("=")[2].strip() if "=" in f else f for f in fields]
        values: dict[str, float] = {}
        for column, text in zip(self.columns, texts, strict=False):
            unit = COLUMN_UNITS[column]
            if unit is None:
                continue
            if text is None or not _NUMBER.match(text):
                return None
            quantity, divisor = unit
            values[quantity] = float(text) / divisor if divisor != 1 else float(text)
        volts, amps = values.get("volts"), values.get("amps")
        watts = values.get("watts")
        if watts is None:
            assert volts is not None and amps is not None  # checked in __post_init__
            watts = volts * amps
        if not all(math.isfinite(v) for v in values.values()):
            return None
        return LineReading(volts=volts, amps=amps, watts=watts)

    def format(self, volts: float, amps: float) -> str:
        """A line in this format for these values (what a bridge would print; for emulators)."""
        quantities = {"volts": volts, "amps": amps, "watts": volts * amps}
        texts: list[str] = []
        for column in self.columns:
            unit = COLUMN_UNITS[column]
            if unit is None:
                texts.append("0")
                continue
            quantity, divisor = unit
            value = quantities[quantity] * divisor
            texts.append(f"{value:.0f}" if divisor != 1 else f"{value:.4f}")
        if self.keys is not None:
            texts = [f"{k}={t}" for k, t in zip(self.keys, texts, strict=True)]
        separator = " " if self.separator.strip() == "" else self.separator
        return separator.join(texts)


def looks_like_readings(line: str) -> bool:
    """Whether a line holds at least two numbers (``key=`` prefixes allowed): a line meter's
    output, whatever its exact format."""
    numbers = 0
    for field in re.split(r"[,;\s\t]+", line.strip()):
        value = field.partition("=")[2] if "=" in field else field
        if _NUMBER.match(value):
            numbers += 1
    return numbers >= 2


# A line longer than this is noise, not a reading.
_MAX_LINE_BYTES = 512


class LineMeter(Meter):
    """A bridge printing readings as text lines; ``rate_hz`` is how often it prints.

    ``name`` is the model in labels (``name@port``). ``timeout_seconds`` is how long ``read``
    waits for a line when none has arrived since the last one.
    """

    kind = "line"

    def __init__(
        self,
        port: str,
        line_format: LineFormat | None = None,
        *,
        baudrate: int = 115200,
        rate_hz: float = 2.0,
        timeout_seconds: float = 2.0,
        name: str = "line-meter",
        clock: Clock | None = None,
    ) -> None:
        super().__init__(clock)
        self.port = port
        self.line_format = line_format or LineFormat()
        self.baudrate = baudrate
        self.rate_hz = rate_hz
        self.timeout_seconds = timeout_seconds
        self.name = name
        self._serial: serial.SerialBase | None = None
        self._pending = bytearray()
        self._skip_first_line = True

    @property
    def is_open(self) -> bool:
        """Whether the port is open."""
        return self._serial is not None

    def open(self) -> None:
        """Open the port and wait for one line in the configured format."""
        if self._serial is not None:
            return
        self._serial = open_link(self.port, self.baudrate)
        self._pending.clear()
        # The port may have opened mid-line: "2,0.512" from "5.02,0.512" would parse as 2 V.
        self._skip_first_line = True
        try:
            self.read()
        except MeterError:
            self.close()
            raise

    def read(self) -> MeterSample:
        """The freshest reading: lines queued since the last call are skipped but the newest."""
        reading, seconds = self._latest_reading()
        return MeterSample(
            seconds=seconds,
            watts=reading.watts,
            volts=reading.volts,
            amps=reading.amps,
            source=meter_source(self.name, self.port),
        )

    def close(self) -> None:
        """Close the port (safe to call twice)."""
        port, self._serial = self._serial, None
        close_link(port)

    def describe(self) -> MeterInfo:
        """Port, format and rate; line meters have no energy counter."""
        fmt = self.line_format
        return MeterInfo(
            kind=self.kind,
            model=self.name,
            port=self.port,
            rate_hz=self.rate_hz,
            volts_resolution=None,
            amps_resolution=None,
            watts_resolution=None,
            counter_resolution_joules=None,
            is_estimate=False,
            source=meter_source(self.name, self.port),
            detail=f"text lines: columns {','.join(fmt.columns)}, separator {fmt.separator!r}"
            + (f", keys {','.join(fmt.keys)}" if fmt.keys else ""),
        )

    @classmethod
    def probe(
        cls,
        port: str,
        line_format: LineFormat | None = None,
        *,
        baudrate: int = 115200,
        timeout_seconds: float = 2.0,
        clock: Clock | None = None,
    ) -> MeterInfo | None:
        """Listen on ``port``; a description if lines in ``line_format`` arrive (or, with no
        format, any lines of numbers), else None. Sends nothing."""
        if line_format is not None:
            meter = cls(
                port, line_format, baudrate=baudrate, timeout_seconds=timeout_seconds, clock=clock
            )
            try:
                meter.open()
            except MeterError:
                return None
            try:
                return meter.describe()
            finally:
                meter.close()
        line = sniff_line(port, baudrate=baudrate, timeout_seconds=timeout_seconds)
        if line is None:
            return None
        return MeterInfo(
            kind=cls.kind,
            model="line-meter",
            port=port,
            rate_hz=0.0,
            volts_resolution=None,
            amps_resolution=None,
            watts_resolution=None,
            counter_resolution_joules=None,
            is_estimate=False,
            source=meter_source("line-meter", port),
            detail=f"prints lines like {line!r}; configure its columns to use it",
        )

    def _latest_reading(self) -> tuple[LineReading, float]:
        if self._serial is None:
            raise MeterDisconnected(f"{self.port} is not open")
        port = self._serial
        real_timeout = max(MIN_REAL_TIMEOUT_SECONDS, self.clock.to_real(self.timeout_seconds))
        deadline = time.monotonic() + real_timeout
        latest: tuple[LineReading, float] | None = None
        try:
            while True:
                waiting = port.in_waiting
                chunk = port.read(waiting or 1)
                if chunk:
                    now = self.clock.now()
                    for line in self._complete_lines(chunk):
                        reading = self.line_format.parse(line)
                        if reading is not None:
                            latest = (reading, now)
                if latest is not None and not port.in_waiting:
                    return latest
                if time.monotonic() >= deadline:
                    raise MeterTimeout(f"{self.port}: no reading within {real_timeout:.2f} s")
        except IO_ERRORS as exc:
            self.close()
            raise MeterDisconnected(f"{self.port}: link lost ({describe_io_error(exc)})") from exc

    def _complete_lines(self, chunk: bytes) -> list[str]:
        self._pending += chunk.replace(b"\r", b"\n")
        *lines, rest = bytes(self._pending).split(b"\n")
        self._pending = bytearray(rest[-_MAX_LINE_BYTES:])
        if lines and self._skip_first_line:
            lines = lines[1:]
            self._skip_first_line = False
        return [line.decode("ascii", errors="replace") for line in lines if line.strip()]


def sniff_line(port: str, *, baudrate: int = 115200, timeout_seconds: float = 2.0) -> str | None:
    """The first line of numbers heard on ``port`` within ``timeout_seconds`` real seconds."""
    try:
        link = open_link(port, baudrate)
    except MeterDisconnected:
        return None
    deadline = time.monotonic() + timeout_seconds
    pending = b""
    first = True
    try:
        while time.monotonic() < deadline:
            pending += link.read(256).replace(b"\r", b"\n")
            *lines, pending = pending.split(b"\n")
            pending = pending[-_MAX_LINE_BYTES:]
            if lines and first:
                lines, first = lines[1:], False  # the first may be the tail of a line
            for raw in lines:
                text = raw.decode("ascii", errors="replace").strip()
                if looks_like_readings(text):
                    return text
    except IO_ERRORS:
        return None
    finally:
        close_link(link)
    return None
