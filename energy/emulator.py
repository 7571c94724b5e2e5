"""Emulated meters on pseudo-terminals: a UM24C/UM25C/UM34C that speaks the binary protocol byte
for byte, and a text-line bridge.

The emulator plays the meter on the master side of a pty; the driver opens the slave like any
serial port (through a stable symlink, as ``/dev/serial/by-id/`` gives for real hardware), so the
real pyserial path runs: timeouts, short reads, and an error when the "cable" is pulled. It
refreshes its reading at 2 Hz of its clock (polling faster returns the same reading), and keeps
its own mWh counters by integrating the profile exactly, as the meter's counters integrate power.

From code::

    emulator = Emulator("um25c", StepProfile(((10, 4.5), (10, 7.5))))
    port = emulator.start()      # a path to open with UMMeter(port)
    ...
    emulator.stop()
"""

from __future__ import annotations

import collections
import math
import os
import pty
import select
import shutil
import tempfile
import threading
import tty
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from energy.clock import MONOTONIC, Clock
from energy.line_meter import LineFormat
from energy.meter import JOULES_PER_MILLIWATT_HOUR
from energy.profiles import ConstantProfile, Profile
from energy.um import (
    BRIGHTNESS_BASE,
    CLEAR_GROUP,
    GROUP_COUNT,
    NEXT_SCREEN,
    PREVIOUS_SCREEN,
    RECORD_THRESHOLD_BASE,
    REQUEST_FRAME,
    ROTATE_SCREEN,
    SCREEN_TIMEOUT_BASE,
    SELECT_GROUP_BASE,
    UMFrame,
    UMGroup,
    encode_frame,
    model_named,
)

_U32_LIMIT = 1 << 32
# Joules per milliamp-hour per volt: 1 mAh = 3.6 C.
_COULOMBS_PER_MILLIAMP_HOUR = 3.6
_SCREENS = 6


class PtyLink:
    """A pseudo-terminal pair and a symlink to its slave that survives re-creation.

    ``open`` makes a fresh pty (raw mode, so the emulator never reads its own echo) and points the
    link at it; ``close`` closes both ends and removes the link, as udev removes a by-id link when
    a device is unplugged.
    """

    def __init__(self, link_path: Path) -> None:
        self.link_path = link_path
        self.master_fd: int | None = None
        self._slave_fd: int | None = None
        self.slave_path: str | None = None

    def open(self) -> None:
        """Create the pty and point the link at its slave."""
        master, slave = pty.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        # Holding the slave open keeps the master readable between driver connections.
        self.master_fd, self._slave_fd = master, slave
        self.slave_path = os.ttyname(slave)
        temporary = self.link_path.with_name(self.link_path.name + ".new")
        if temporary.is_symlink():
            temporary.unlink()
        os.symlink(self.slave_path, temporary)
        os.replace(temporary, self.link_path)

    def close(self) -> None:
        """Close both ends and remove the link (the driver's next read or write fails)."""
        for fd in (self.master_fd, self._slave_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.master_fd = self._slave_fd = None
        self.slave_path = None
        try:
            self.link_path.unlink()
        except FileNotFoundError:
            pass

    def write(self, data: bytes) -> None:
        """Write to the master; bytes nobody reads are dropped once the pty's buffer is full."""
        if self.master_fd is None:
            return
        try:
            os.write(self.master_fd, data)
        except (BlockingIOError, OSError):
            pass


class _EmulatorBase:
    """The thread, clock, pty and symlink shared by the emulators."""

    thread_name = "tbftd-meter-emulator"

    def __init__(self, link_name: str, link_path: str | os.PathLike[str] | None, clock: Clock | None):
        self.clock: Clock = clock or MONOTONIC
        self._link_name = link_name
        self._requested_link = None if link_path is None else Path(link_path)
        self._own_directory: str | None = None
        self._link: PtyLink | None = None  # made by start()
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake_read, self._wake_write = -1, -1
        self._controls: collections.deque[tuple[str, threading.Event]] = collections.deque()
        #: Clock time at ``start``: time 0 of the profile.
        self.origin_seconds: float = 0.0

    @property
    def port(self) -> str:
        """The path to open: a symlink to the current pty's slave (kept after ``stop``)."""
        if self._link is None:
            raise RuntimeError("the emulator has no port until start()")
        return str(self._link.link_path)

    @property
    def pty_path(self) -> str | None:
        """The current ``/dev/pts/N``, or None while unplugged or stopped."""
        return None if self._link is None else self._link.slave_path

    @property
    def _pty(self) -> PtyLink:
        if self._link is None:
            raise RuntimeError("the emulator was not started")
        return self._link

    @property
    def running(self) -> bool:
        """Whether the emulator thread is serving."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> str:
        """Create the pty, start serving, and return the port path."""
        if self._thread is not None:
            raise RuntimeError("emulator already started")
        link_path = self._requested_link
        if link_path is None:
            self._own_directory = tempfile.mkdtemp(prefix="tbftd-meter-")
            link_path = Path(self._own_directory) / self._link_name
        self._link = PtyLink(link_path)
        self._link.open()
        self._wake_read, self._wake_write = os.pipe()
        self.origin_seconds = self.clock.now()
        self._on_start()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._serve, name=self.thread_name, daemon=True)
        self._thread.start()
        return self.port

    def stop(self) -> None:
        """Stop serving, close the pty and remove the link (and its temporary folder)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stopping.set()
            self._wake()
            thread.join()
        if self._link is not None:
            self._link.close()
        for fd in (self._wake_read, self._wake_write):
            if fd >= 0:
                os.close(fd)
        self._wake_read = self._wake_write = -1
        if self._own_directory is not None:
            shutil.rmtree(self._own_directory, ignore_errors=True)
            self._own_directory = None

    def unplug(self) -> None:
        """Pull the cable: close the pty and remove the link; the meter itself keeps counting."""
        self._control("unplug")

    def replug(self) -> None:
        """Plug back in: a new pty behind the same link path."""
        self._control("replug")

    def __enter__(self) -> Self:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------------------------

    def _on_start(self) -> None:
        """Set up state at time 0 (subclasses)."""

    def _serve(self) -> None:
        raise NotImplementedError

    def _wake(self) -> None:
        if self._wake_write >= 0:
            try:
                os.write(self._wake_write, b"!")
            except OSError:
                pass

    def _control(self, action: str) -> None:
        # The serving thread owns the fds: closing one under its select() would race with reuse.
        if not self.running:
            self._apply_control(action)
            return
        done = threading.Event()
        self._controls.append((action, done))
        self._wake()
        if not done.wait(10.0):
            raise RuntimeError(f"the emulator thread did not {action} within 10 s")

    def _apply_control(self, action: str) -> None:
        if action == "unplug":
            self._pty.close()
        elif action == "replug" and self._pty.master_fd is None:
            self._pty.open()

    def _run_controls(self) -> None:
        while self._controls:
            action, done = self._controls.popleft()
            self._apply_control(action)
            done.set()

    def _wait_for_input(self, until_seconds: float) -> bytes:
        """Wait until ``until_seconds`` (clock time) or input; returns what the driver sent."""
        fds = [self._wake_read]
        master = self._pty.master_fd
        if master is not None:
            fds.append(master)
        timeout = self.clock.to_real(max(0.0, until_seconds - self.clock.now()))
        readable, _, _ = select.select(fds, [], [], timeout)
        if self._wake_read in readable:
            os.read(self._wake_read, 1024)
        if master is not None and master in readable:
            try:
                return os.read(master, 1024)
            except OSError:
                return b""  # no slave side at this instant: nothing was sent
        return b""


@dataclass
class _Faults:
    """Faults to inject into the next replies, for tests."""

    garbage: collections.deque[bytes]
    short_lengths: collections.deque[int]
    corrupt: int = 0
    ignore: int = 0


class Emulator(_EmulatorBase):
    """A UM24C, UM25C or UM34C on a pty, driven by a power profile.

    ``volts`` is the bus voltage it shows (the current is watts / volts). It refreshes its reading
    every ``1 / refresh_hz`` seconds of ``clock``, on a grid from ``start``: the reading at each
    refresh is the profile's power at that instant, so a step profile whose edges fall on the grid
    is shown without delay. Its counters (selected group and record) integrate the profile exactly.
    With ``drop_rapid_commands`` it ignores a command that arrives within a quarter period of the
    previous one, as real meters sometimes do.
    """

    def __init__(
        self,
        model: str = "um25c",
        profile: Profile | None = None,
        *,
        volts: float = 5.1,
        refresh_hz: float = 2.0,
        clock: Clock | None = None,
        link_path: str | os.PathLike[str] | None = None,
        drop_rapid_commands: bool = False,
    ) -> None:
        self.model = model_named(model)
        super().__init__(self.model.name.lower(), link_path, clock)
        if volts <= 0:
            raise ValueError(f"volts must be positive, got {volts}")
        self.profile: Profile = profile or ConstantProfile(5.0)
        self.volts = volts
        self.refresh_seconds = 1 / refresh_hz
        self.drop_rapid_commands = drop_rapid_commands
        # Counters kept in float milliwatt-/milliamp-hours; frames show them floored, as u32.
        self._group_milliwatt_hours = [0.0] * GROUP_COUNT
        self._group_milliamp_hours = [0.0] * GROUP_COUNT
        self._record_milliwatt_hours = 0.0
        self._record_milliamp_hours = 0.0
        self._record_seconds = 0.0
        self.group = 0
        self.record_threshold_amps = 0.10
        self.brightness = 5
        self.screen_timeout_minutes = 2
        self.screen = 0
        self._display_watts = 0.0
        self._integrated_to = 0.0
        self._next_refresh = 0.0
        self._last_command_at: float | None = None
        self._faults = _Faults(collections.deque(), collections.deque())
        #: How many 0xF0 requests were answered and how many refreshes happened (for tests).
        self.replies = 0
        self.refreshes = 0

    # -- what tests and demos ask of it ----------------------------------------------------

    def exact_joules(self, start_seconds: float, stop_seconds: float) -> float:
        """The exact energy of the profile between two times of the shared clock."""
        joules = self.profile.joules(start_seconds - self.origin_seconds, stop_seconds - self.origin_seconds)
        if joules is None:
            raise ValueError(f"the profile ({self.profile.describe()}) has no exact integral")
        return joules

    def current_frame(self) -> UMFrame:
        """The frame a request would get now."""
        with self._lock:
            self._integrate_to(self.clock.now())
            return self._frame()

    def counter_milliwatt_hours(self, group: int | None = None) -> int:
        """A group's energy counter as the meter shows it (the selected group by default)."""
        with self._lock:
            self._integrate_to(self.clock.now())
            g = self.group if group is None else group
            return math.floor(self._group_milliwatt_hours[g]) % _U32_LIMIT

    def set_counter(self, milliwatt_hours: float, group: int | None = None) -> None:
        """Set a group's energy counter (to test wrap-around near 2**32 mWh)."""
        with self._lock:
            self._integrate_to(self.clock.now())
            self._group_milliwatt_hours[self.group if group is None else group] = milliwatt_hours

    def clear_group(self) -> None:
        """Clear the selected group, as the button on the meter does."""
        with self._lock:
            self._integrate_to(self.clock.now())
            self._group_milliwatt_hours[self.group] = 0.0
            self._group_milliamp_hours[self.group] = 0.0

    def inject_garbage(self, data: bytes) -> None:
        """Send ``data`` before the next reply."""
        with self._lock:
            self._faults.garbage.append(bytes(data))

    def inject_short_reply(self, length: int) -> None:
        """Send only the first ``length`` bytes of the next reply."""
        with self._lock:
            self._faults.short_lengths.append(length)

    def inject_corrupt_reply(self, count: int = 1) -> None:
        """Spoil the end marker or checksum of the next ``count`` replies."""
        with self._lock:
            self._faults.corrupt += count

    def ignore_requests(self, count: int) -> None:
        """Do not answer the next ``count`` requests (a dropped command, a stalled link)."""
        with self._lock:
            self._faults.ignore += count

    # -- the meter -------------------------------------------------------------------------

    def _on_start(self) -> None:
        with self._lock:
            self._integrated_to = self.origin_seconds
            self._refresh(self.origin_seconds)
            self._next_refresh = self.origin_seconds + self.refresh_seconds

    def _serve(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                now = self.clock.now()
                if now >= self._next_refresh:
                    # After a stall, show the latest grid point rather than replaying missed ones.
                    ticks = math.floor((now - self.origin_seconds) / self.refresh_seconds)
                    self._refresh(self.origin_seconds + ticks * self.refresh_seconds)
                    self._next_refresh = self.origin_seconds + (ticks + 1) * self.refresh_seconds
                self._run_controls()
                until = self._next_refresh
            for code in self._wait_for_input(until):
                with self._lock:
                    self._command(code)

    def _refresh(self, at_seconds: float) -> None:
        self._integrate_to(at_seconds)
        self._display_watts = self.profile.watts(at_seconds - self.origin_seconds)
        self.refreshes += 1

    def _integrate_to(self, now: float) -> None:
        """Advance the counters to ``now``: exactly for a reproducible profile, else by the shown
        reading (sample and hold)."""
        start = self._integrated_to
        if now <= start:
            return
        joules = self.profile.joules(start - self.origin_seconds, now - self.origin_seconds)
        if joules is None:
            joules = self._display_watts * (now - start)
        self._integrated_to = now
        milliwatt_hours = joules / JOULES_PER_MILLIWATT_HOUR
        milliamp_hours = joules / self.volts / _COULOMBS_PER_MILLIAMP_HOUR
        self._group_milliwatt_hours[self.group] += milliwatt_hours
        self._group_milliamp_hours[self.group] += milliamp_hours
        if self._display_watts / self.volts >= self.record_threshold_amps:
            self._record_milliwatt_hours += milliwatt_hours
            self._record_milliamp_hours += milliamp_hours
            self._record_seconds += now - start

    def _frame(self) -> UMFrame:
        watts = max(0.0, self._display_watts)
        amps = watts / self.volts
        groups = tuple(
            UMGroup(
                milliamp_hours=math.floor(self._group_milliamp_hours[g]) % _U32_LIMIT,
                milliwatt_hours=math.floor(self._group_milliwatt_hours[g]) % _U32_LIMIT,
            )
            for g in range(GROUP_COUNT)
        )
        return UMFrame(
            model=self.model.name,
            volts=self.volts,
            amps=amps,
            watts=watts,
            group=self.group,
            groups=groups,
            data_plus_volts=0.6,
            data_minus_volts=0.6,
            record_milliamp_hours=math.floor(self._record_milliamp_hours),
            record_milliwatt_hours=math.floor(self._record_milliwatt_hours),
            record_threshold_amps=self.record_threshold_amps,
            record_seconds=math.floor(self._record_seconds),
            recording=amps >= self.record_threshold_amps,
            screen_timeout_minutes=self.screen_timeout_minutes,
            brightness=self.brightness,
            load_ohms=min(self.volts / amps, 9_999_999.0) if amps > 0 else 9_999_999.0,
            screen=self.screen,
        )

    def _command(self, code: int) -> None:
        now = self.clock.now()
        if (
            self.drop_rapid_commands
            and self._last_command_at is not None
            and now - self._last_command_at < self.refresh_seconds / 4
        ):
            self._last_command_at = now
            return
        self._last_command_at = now
        if code == REQUEST_FRAME:
            self._reply(now)
        elif code == CLEAR_GROUP:
            self._integrate_to(now)
            self._group_milliwatt_hours[self.group] = 0.0
            self._group_milliamp_hours[self.group] = 0.0
        elif SELECT_GROUP_BASE <= code < SELECT_GROUP_BASE + GROUP_COUNT:
            self._integrate_to(now)
            self.group = code - SELECT_GROUP_BASE
        elif code == NEXT_SCREEN:
            self.screen = (self.screen + 1) % _SCREENS
        elif code == PREVIOUS_SCREEN:
            self.screen = (self.screen - 1) % _SCREENS
        elif code == ROTATE_SCREEN:
            pass  # only turns the display
        elif RECORD_THRESHOLD_BASE <= code <= RECORD_THRESHOLD_BASE + 30:
            self.record_threshold_amps = (code - RECORD_THRESHOLD_BASE) / 100
        elif BRIGHTNESS_BASE <= code <= BRIGHTNESS_BASE + 5:
            self.brightness = code - BRIGHTNESS_BASE
        elif SCREEN_TIMEOUT_BASE <= code <= SCREEN_TIMEOUT_BASE + 9:
            self.screen_timeout_minutes = code - SCREEN_TIMEOUT_BASE
        # Anything else: a real meter ignores it.

    def _reply(self, now: float) -> None:
        faults = self._faults
        if faults.ignore:
            faults.ignore -= 1
            return
        self._integrate_to(now)
        data = encode_frame(self._frame())
        if faults.corrupt:
            faults.corrupt -= 1
            data = data[:-1] + bytes([data[-1] ^ 0x5A])
        if faults.short_lengths:
            data = data[: faults.short_lengths.popleft()]
        if faults.garbage:
            data = faults.garbage.popleft() + data
        self._pty.write(data)
        self.replies += 1


class LineEmulator(_EmulatorBase):
    """A text-line bridge on a pty: prints ``line_format`` lines at ``rate_hz`` of its clock.

    ``preamble`` is printed once at start (a boot banner, a header); ``chatter``, if given, is
    printed after every reading, as bridges that mix status messages into their output do.
    """

    def __init__(
        self,
        line_format: LineFormat | None = None,
        profile: Profile | None = None,
        *,
        volts: float = 5.0,
        rate_hz: float = 2.0,
        clock: Clock | None = None,
        link_path: str | os.PathLike[str] | None = None,
        preamble: str = "",
        chatter: str = "",
    ) -> None:
        super().__init__("line-meter", link_path, clock)
        self.line_format = line_format or LineFormat()
        self.profile: Profile = profile or ConstantProfile(5.0)
        self.volts = volts
        self.period_seconds = 1 / rate_hz
        self.preamble = preamble
        self.chatter = chatter
        self.lines_sent = 0

    def line_at(self, seconds: float) -> str:
        """The line printed at ``seconds`` since start."""
        watts = self.profile.watts(seconds)
        return self.line_format.format(self.volts, watts / self.volts)

    def _serve(self) -> None:
        if self.preamble:
            self._pty.write(self.preamble.encode("ascii"))
        tick = 0
        while not self._stopping.is_set():
            with self._lock:
                self._run_controls()
            due = self.origin_seconds + tick * self.period_seconds
            if self.clock.now() >= due:
                text = self.line_at(due - self.origin_seconds) + "\r\n"
                if self.chatter:
                    text += self.chatter + "\r\n"
                self._pty.write(text.encode("ascii"))
                self.lines_sent += 1
                tick = math.floor((self.clock.now() - self.origin_seconds) / self.period_seconds) + 1
                continue
            self._wait_for_input(due)  # the driver sends nothing; this is the pacing wait
