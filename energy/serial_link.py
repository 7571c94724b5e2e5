"""Opening and failing serial links, shared by the serial drivers.

Ports are opened with ``serial.serial_for_url`` so that a device path, ``/dev/rfcomm0``,
``socket://host:port`` and ``loop://`` all work. An unplugged or dropped link shows up as
``SerialException``/``OSError`` from reads and writes, or ``termios.error`` from flushing a dead tty.
"""

from __future__ import annotations

import termios

import serial

from energy.meter import MeterDisconnected

#: The exceptions a serial read, write or flush raises when the link is gone.
IO_ERRORS: tuple[type[BaseException], ...] = (OSError, termios.error)
#: Ports are read in short slices so that a deadline is honoured without reconfiguring the port's
#: timeout (pyserial re-applies the termios settings on every change of ``timeout``).
READ_SLICE_SECONDS = 0.05
#: A loaded machine's scheduler delays are real, not emulated: never wait less than this for a
#: reply, however fast a scaled clock runs.
MIN_REAL_TIMEOUT_SECONDS = 0.3


def describe_io_error(exc: BaseException) -> str:
    """A readable message for a serial I/O error (termios.error carries a bare errno tuple)."""
    if isinstance(exc, termios.error) and len(exc.args) == 2:
        return f"[Errno {exc.args[0]}] {exc.args[1]}"
    return str(exc)


def open_link(url: str, baudrate: int) -> serial.SerialBase:
    """Open ``url`` for reading in slices; raises MeterDisconnected if it cannot be opened.

    DTR/RTS are not touched beyond pyserial's own attempt, which ignores ENOTTY (a pty, RFCOMM).
    """
    try:
        return serial.serial_for_url(url, baudrate=baudrate, timeout=READ_SLICE_SECONDS)
    except (*IO_ERRORS, ValueError) as exc:
        raise MeterDisconnected(f"cannot open {url}: {describe_io_error(exc)}") from exc


def close_link(link: serial.SerialBase | None) -> None:
    """Close a link, ignoring the errors of one that is already dead."""
    if link is None:
        return
    try:
        link.close()
    except IO_ERRORS:
        pass
