"""RDTech UM24C / UM25C / UM34C USB power meters: the 130-byte frame codec and the serial driver.

The meter never speaks first: the host sends ``0xF0`` and gets one 130-byte big-endian frame
(layout in ``shared/notes/power-meters.md``). The codec (:func:`encode_frame`, :func:`decode_frame`,
:func:`extract_frame`) is pure so that the emulator and the tests build frames from known values.
The driver (:class:`UMMeter`) opens its port with ``serial.serial_for_url`` (a device path,
``/dev/rfcomm0`` or ``socket://host:port``) and polls at the meter's 2 Hz refresh.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field

import serial

from energy.clock import Clock
from energy.meter import (
    JOULES_PER_MILLIWATT_HOUR,
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

FRAME_LENGTH = 130
GROUP_COUNT = 10
#: The end marker of UM24C and UM25C frames (bytes 128-129).
END_MARKER = 0xFFF1
#: Byte positions XORed into the UM34C checksum at byte 129.
UM34C_CHECKSUM_POSITIONS: tuple[int, ...] = (
    1, 3, 7, 9, 15, 17, 19, 23, 31, 39, 41, 45, 49, 53, 55, 57, 59, 63, 67, 69, 73, 79, 83, 89, 97,
    99, 109, 111, 113, 119, 121, 127,
)  # fmt: skip

# Commands (one byte each; only REQUEST_FRAME gets a reply).
REQUEST_FRAME = 0xF0
NEXT_SCREEN = 0xF1
ROTATE_SCREEN = 0xF2
PREVIOUS_SCREEN = 0xF3
CLEAR_GROUP = 0xF4
SELECT_GROUP_BASE = 0xA0
RECORD_THRESHOLD_BASE = 0xB0
BRIGHTNESS_BASE = 0xD0
SCREEN_TIMEOUT_BASE = 0xE0

_U32_LIMIT = 1 << 32
# model id, volts, amps, watts, °C, °F, group, 10 × (mAh, mWh), D+, D-, charging mode,
# record mAh, record mWh, record threshold, record seconds, recording, screen timeout, brightness,
# load resistance, screen, end marker.
_LAYOUT = struct.Struct(">HHHIHHH" + "II" * GROUP_COUNT + "HHHIIHIHHHIHH")
assert _LAYOUT.size == FRAME_LENGTH


class FrameError(ValueError):
    """Bytes that are not a valid frame."""


@dataclass(frozen=True)
class UMModel:
    """A meter model: its id in the frame and how its live voltage and current scale."""

    name: str
    model_id: int
    volts_divisor: int
    amps_divisor: int
    has_checksum: bool

    @property
    def volts_resolution(self) -> float:
        """Smallest voltage step in volts."""
        return 1 / self.volts_divisor

    @property
    def amps_resolution(self) -> float:
        """Smallest current step in amps."""
        return 1 / self.amps_divisor


UM24C = UMModel("UM24C", 0x0963, volts_divisor=100, amps_divisor=1000, has_checksum=False)
UM25C = UMModel("UM25C", 0x09C9, volts_divisor=1000, amps_divisor=10000, has_checksum=False)
UM34C = UMModel("UM34C", 0x0D4C, volts_divisor=100, amps_divisor=1000, has_checksum=True)
MODELS: dict[str, UMModel] = {m.name: m for m in (UM24C, UM25C, UM34C)}
MODELS_BY_ID: dict[int, UMModel] = {m.model_id: m for m in MODELS.values()}


def model_named(name: str) -> UMModel:
    """The model for a name like ``um25c`` or ``UM25C``; raises ValueError for others."""
    try:
        return MODELS[name.strip().upper()]
    except KeyError:
        known = ", ".join(m.lower() for m in MODELS)
        raise ValueError(f"unknown UM model {name!r} (known: {known})") from None


@dataclass(frozen=True)
class UMGroup:
    """One of the ten data groups: accumulated charge and energy since the group was cleared."""

    milliamp_hours: int = 0
    milliwatt_hours: int = 0


def _empty_groups() -> tuple[UMGroup, ...]:
    return tuple(UMGroup() for _ in range(GROUP_COUNT))


@dataclass(frozen=True)
class UMFrame:
    """The decoded contents of one 130-byte frame, in SI units (integers where the meter counts)."""

    model: str
    volts: float
    amps: float
    watts: float
    celsius: int = 25
    fahrenheit: int = 77
    group: int = 0
    groups: tuple[UMGroup, ...] = field(default_factory=_empty_groups)
    data_plus_volts: float = 0.0
    data_minus_volts: float = 0.0
    charging_mode: int = 0
    record_milliamp_hours: int = 0
    record_milliwatt_hours: int = 0
    record_threshold_amps: float = 0.0
    record_seconds: int = 0
    recording: bool = False
    screen_timeout_minutes: int = 0
    brightness: int = 5
    load_ohms: float = 0.0
    screen: int = 0

    @property
    def counter_milliwatt_hours(self) -> int:
        """The selected group's energy counter."""
        return self.groups[self.group].milliwatt_hours

    @property
    def counter_milliamp_hours(self) -> int:
        """The selected group's charge counter."""
        return self.groups[self.group].milliamp_hours


def um34c_checksum(frame: bytes) -> int:
    """The UM34C checksum: XOR of the bytes at :data:`UM34C_CHECKSUM_POSITIONS`."""
    value = 0
    for position in UM34C_CHECKSUM_POSITIONS:
        value ^= frame[position]
    return value


def _scaled(value: float, divisor: int, what: str, limit: int = 1 << 16) -> int:
    raw = round(value * divisor)
    if not 0 <= raw < limit:
        raise ValueError(f"{what} {value!r} does not fit the frame")
    return raw


def encode_frame(frame: UMFrame) -> bytes:
    """The 130 bytes a meter of ``frame.model`` sends for these values (values are rounded to the
    model's resolution; end marker or checksum included)."""
    model = model_named(frame.model)
    if len(frame.groups) != GROUP_COUNT:
        raise ValueError(f"a frame has {GROUP_COUNT} data groups, got {len(frame.groups)}")
    if not 0 <= frame.group < GROUP_COUNT:
        raise ValueError(f"selected group {frame.group} is not 0..{GROUP_COUNT - 1}")
    counters: list[int] = []
    for group in frame.groups:
        counters += [group.milliamp_hours % _U32_LIMIT, group.milliwatt_hours % _U32_LIMIT]
    data = bytearray(
        _LAYOUT.pack(
            model.model_id,
            _scaled(frame.volts, model.volts_divisor, "voltage"),
            _scaled(frame.amps, model.amps_divisor, "current"),
            _scaled(frame.watts, 1000, "power", _U32_LIMIT),
            frame.celsius,
            frame.fahrenheit,
            frame.group,
            *counters,
            _scaled(frame.data_plus_volts, 100, "D+ voltage"),
            _scaled(frame.data_minus_volts, 100, "D- voltage"),
            frame.charging_mode,
            frame.record_milliamp_hours % _U32_LIMIT,
            frame.record_milliwatt_hours % _U32_LIMIT,
            _scaled(frame.record_threshold_amps, 100, "record threshold"),
            frame.record_seconds % _U32_LIMIT,
            int(frame.recording),
            frame.screen_timeout_minutes,
            frame.brightness,
            _scaled(frame.load_ohms, 10, "load resistance", _U32_LIMIT),
            frame.screen,
            0 if model.has_checksum else END_MARKER,
        )
    )
    if model.has_checksum:
        data[129] = um34c_checksum(data)
    return bytes(data)


def check_frame(data: bytes) -> UMModel:
    """The model of a complete, intact frame; raises FrameError for a wrong length, an unknown
    model id, a wrong end marker (UM24C/UM25C) or a wrong checksum (UM34C)."""
    if len(data) != FRAME_LENGTH:
        raise FrameError(f"a frame is {FRAME_LENGTH} bytes, got {len(data)}")
    model_id = (data[0] << 8) | data[1]
    model = MODELS_BY_ID.get(model_id)
    if model is None:
        raise FrameError(f"unknown model id 0x{model_id:04X}")
    if model.has_checksum:
        expected = um34c_checksum(data)
        if data[129] != expected:
            raise FrameError(f"{model.name} checksum 0x{data[129]:02X}, expected 0x{expected:02X}")
    else:
        end = (data[128] << 8) | data[129]
        if end != END_MARKER:
            raise FrameError(f"{model.name} end marker 0x{end:04X}, expected 0x{END_MARKER:04X}")
    return model


def decode_frame(data: bytes) -> UMFrame:
    """The values in one complete frame; raises FrameError if it is not intact."""
    model = check_frame(data)
    fields = _LAYOUT.unpack(data)
    (_, volts_raw, amps_raw, watts_raw, celsius, fahrenheit, group) = fields[:7]
    counters = fields[7 : 7 + 2 * GROUP_COUNT]
    (
        dplus_raw,
        dminus_raw,
        charging_mode,
        record_mah,
        record_mwh,
        threshold_raw,
        record_seconds,
        recording,
        screen_timeout,
        brightness,
        load_raw,
        screen,
        _end,
    ) = fields[7 + 2 * GROUP_COUNT :]
    if group >= GROUP_COUNT:
        raise FrameError(f"selected group {group} is not 0..{GROUP_COUNT - 1}")
    groups = tuple(UMGroup(counters[2 * g], counters[2 * g + 1]) for g in range(GROUP_COUNT))
    # Divide rather than multiply so that decimal readings decode to the nearest float (5.12, not
    # 5.1200000000000001).
    return UMFrame(
        model=model.name,
        volts=volts_raw / model.volts_divisor,
        amps=amps_raw / model.amps_divisor,
        watts=watts_raw / 1000,
        celsius=celsius,
        fahrenheit=fahrenheit,
        group=group,
        groups=groups,
        data_plus_volts=dplus_raw / 100,
        data_minus_volts=dminus_raw / 100,
        charging_mode=charging_mode,
        record_milliamp_hours=record_mah,
        record_milliwatt_hours=record_mwh,
        record_threshold_amps=threshold_raw / 100,
        record_seconds=record_seconds,
        recording=bool(recording),
        screen_timeout_minutes=screen_timeout,
        brightness=brightness,
        load_ohms=load_raw / 10,
        screen=screen,
    )


def extract_frame(buffer: bytes | bytearray) -> tuple[UMFrame | None, int]:
    """Find the first intact frame in ``buffer``.

    Returns ``(frame, consumed)``: the frame (or None if there is none yet) and how many bytes at
    the front of the buffer the caller should drop (garbage, plus the frame itself if found). Where
    the first two bytes are not a known model id, or a candidate's end marker or checksum is wrong,
    one byte is dropped and the search goes on, so a stray byte that looks like an id costs nothing.
    """
    position = 0
    while len(buffer) - position >= 2:
        model_id = (buffer[position] << 8) | buffer[position + 1]
        if model_id not in MODELS_BY_ID:
            position += 1
            continue
        if len(buffer) - position < FRAME_LENGTH:
            return None, position  # a frame may start here: wait for the rest
        candidate = bytes(buffer[position : position + FRAME_LENGTH])
        try:
            frame = decode_frame(candidate)
        except FrameError:
            position += 1
            continue
        return frame, position + FRAME_LENGTH
    return None, position


class UMMeter(Meter):
    """An RDTech UM24C, UM25C or UM34C on a serial port (usually Bluetooth ``/dev/rfcomm0``).

    ``model`` is optional: the model comes from the id in each frame; if given, a meter of another
    model is refused at ``open``. ``rate_hz`` is the meter's refresh (2 Hz); commands are spaced at
    least ``command_gap_seconds`` apart (default one period) because the meter drops a command sent
    right after another. ``timeout_seconds`` is how long to wait for a reply.
    """

    kind = "um"

    def __init__(
        self,
        port: str,
        *,
        model: str | None = None,
        baudrate: int = 9600,
        rate_hz: float = 2.0,
        timeout_seconds: float = 1.0,
        command_gap_seconds: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(clock)
        if rate_hz <= 0:
            raise ValueError(f"rate_hz must be positive, got {rate_hz}")
        self.port = port
        self.expected_model: UMModel | None = model_named(model) if model else None
        self.baudrate = baudrate
        self.rate_hz = rate_hz
        self.timeout_seconds = timeout_seconds
        self.command_gap_seconds = 1 / rate_hz if command_gap_seconds is None else command_gap_seconds
        self.model: UMModel | None = self.expected_model
        #: The last frame read, with everything the meter reports (temperature, groups, record).
        self.last_frame: UMFrame | None = None
        self._serial: serial.SerialBase | None = None
        self._last_command_at: float | None = None

    # -- Meter interface ---------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Whether the port is open."""
        return self._serial is not None

    def open(self) -> None:
        """Open the port and read one frame to identify the meter; raises MeterDisconnected if
        the port cannot be opened, MeterTimeout if no meter answers, MeterError for a wrong model."""
        if self._serial is not None:
            return
        self._serial = open_link(self.port, self.baudrate)
        try:
            # Two tries: the meter sometimes drops a command, and a Bluetooth link may need a moment.
            try:
                frame = self._request_frame()[0]
            except MeterTimeout:
                frame = self._request_frame()[0]
        except MeterError:
            self.close()
            raise
        found = MODELS[frame.model]
        if self.expected_model is not None and found != self.expected_model:
            self.close()
            raise MeterError(
                f"{self.port} holds a {found.name}, not the configured {self.expected_model.name}"
            )
        self.model = found

    def read(self) -> MeterSample:
        """Poll one frame; the sample's time is the middle of the request-reply exchange."""
        frame, seconds = self._request_frame()
        self.model = MODELS[frame.model]
        return MeterSample(
            seconds=seconds,
            watts=frame.watts,
            volts=frame.volts,
            amps=frame.amps,
            source=meter_source(frame.model, self.port),
            counter_milliwatt_hours=frame.counter_milliwatt_hours,
            counter_group=frame.group,
        )

    def close(self) -> None:
        """Close the port (safe to call twice)."""
        port, self._serial = self._serial, None
        close_link(port)

    def describe(self) -> MeterInfo:
        """Model (once identified), port, resolutions, rate and counter resolution."""
        model = self.model
        name = model.name if model else "UM"
        return MeterInfo(
            kind=self.kind,
            model=name,
            port=self.port,
            rate_hz=self.rate_hz,
            volts_resolution=model.volts_resolution if model else None,
            amps_resolution=model.amps_resolution if model else None,
            watts_resolution=0.001,
            counter_resolution_joules=JOULES_PER_MILLIWATT_HOUR,
            is_estimate=False,
            source=meter_source(name, self.port),
            detail="RDTech USB meter, 130-byte frames on request 0xF0",
        )

    @classmethod
    def probe(
        cls, port: str, *, timeout_seconds: float = 1.0, clock: Clock | None = None
    ) -> MeterInfo | None:
        """The meter's description if a UM meter answers on ``port``, else None."""
        meter = cls(port, timeout_seconds=timeout_seconds, clock=clock)
        try:
            meter.open()
        except MeterError:
            return None
        try:
            return meter.describe()
        finally:
            meter.close()

    # -- commands ----------------------------------------------------------------------------

    def send_command(self, code: int) -> None:
        """Send one command byte (see the module's constants); no reply is expected."""
        if not 0 <= code <= 0xFF:
            raise ValueError(f"a command is one byte, got {code}")
        self._wait_command_gap()
        port = self._require_open()
        try:
            port.write(bytes([code]))
            port.flush()
        except IO_ERRORS as exc:
            self._lost(exc)
        self._last_command_at = self.clock.now()

    def select_group(self, group: int) -> None:
        """Make data group ``group`` (0-9) the one that accumulates and is reported."""
        if not 0 <= group < GROUP_COUNT:
            raise ValueError(f"group must be 0..{GROUP_COUNT - 1}, got {group}")
        self.send_command(SELECT_GROUP_BASE + group)

    def clear_group(self) -> None:
        """Clear the selected data group's counters."""
        self.send_command(CLEAR_GROUP)

    # -- internals ---------------------------------------------------------------------------

    def _require_open(self) -> serial.SerialBase:
        if self._serial is None:
            raise MeterDisconnected(f"{self.port} is not open")
        return self._serial

    def _lost(self, exc: BaseException) -> None:
        self.close()
        raise MeterDisconnected(f"{self.port}: link lost ({describe_io_error(exc)})") from exc

    def _wait_command_gap(self) -> None:
        if self._last_command_at is not None:
            remaining = self.command_gap_seconds - (self.clock.now() - self._last_command_at)
            if remaining > 0:
                self.clock.sleep(remaining)

    def _request_frame(self) -> tuple[UMFrame, float]:
        """Send 0xF0 and read the reply; returns the frame and the exchange's midpoint time."""
        self._wait_command_gap()
        port = self._require_open()
        real_timeout = max(MIN_REAL_TIMEOUT_SECONDS, self.clock.to_real(self.timeout_seconds))
        try:
            # A late reply to an earlier request must not be taken for this one's.
            port.reset_input_buffer()
            before = self.clock.now()
            port.write(bytes([REQUEST_FRAME]))
            port.flush()
            self._last_command_at = before
            frame = self._read_reply(port, real_timeout)
            after = self.clock.now()
        except IO_ERRORS as exc:
            self._lost(exc)
            raise  # unreachable: _lost raises
        self.last_frame = frame
        # The meter answered somewhere between request and reply: the midpoint is the best guess.
        return frame, (before + after) / 2

    def _read_reply(self, port: serial.SerialBase, real_timeout: float) -> UMFrame:
        # Real time: the timeout guards a real link whatever the clock.
        deadline = time.monotonic() + real_timeout
        buffer = bytearray()
        received = 0
        while True:
            frame, consumed = extract_frame(buffer)
            del buffer[:consumed]
            if frame is not None:
                return frame
            if time.monotonic() >= deadline:
                # Drop what we have: the rest of a short reply must not shift the next frame.
                raise MeterTimeout(
                    f"{self.port}: no intact frame within {real_timeout:.2f} s "
                    f"({received} bytes received)"
                )
            chunk = port.read(max(1, FRAME_LENGTH - len(buffer)))
            received += len(chunk)
            buffer += chunk

