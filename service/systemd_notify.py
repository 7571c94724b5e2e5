"""sd_notify: tell systemd that the daemon is ready, what it is doing, that it is alive, that it stops.

The protocol (``sd_notify(3)``): newline-separated ``KEY=VALUE`` lines in one datagram on the
AF_UNIX socket named by ``$NOTIFY_SOCKET``; a leading ``@`` names the abstract namespace. With the
variable unset (not started by systemd, or not ``Type=notify``) every call does nothing. The
watchdog is on only when ``$WATCHDOG_USEC`` is set and ``$WATCHDOG_PID`` is unset or this process;
pings then go out every half ``WATCHDOG_USEC``, from the event loop (:func:`watchdog_pings`), so a
blocked loop stops them and systemd restarts the service.

:meth:`Notifier.from_environment` removes the variables from ``os.environ`` once read, so that no
child process (the trainer, multiprocessing's helpers) inherits them and talks to systemd in the
daemon's name.

Standard library only; must not import torch or the rest of the service.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

#: The variables systemd passes to a ``Type=notify`` service with a watchdog.
NOTIFY_VARIABLES: tuple[str, ...] = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
#: ``STATUS=`` text is one line; systemd shows it in ``systemctl status``. Longer is cut.
MAX_STATUS_CHARS = 200


def notify(socket_path: str, message: str) -> None:
    """Send ``message`` as one datagram to the notify socket ``socket_path``; raises OSError."""
    address = "\0" + socket_path[1:] if socket_path.startswith("@") else socket_path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode("utf-8"), address)


@dataclass
class Notifier:
    """The daemon's end of the notify protocol.

    ``socket_path`` None makes every call a no-op. ``watchdog_seconds`` is systemd's
    ``WatchdogSec`` (None: no watchdog). Build it with :meth:`from_environment`.
    """

    socket_path: str | None = None
    watchdog_seconds: float | None = None
    _warned: bool = field(default=False, init=False, repr=False)

    @classmethod
    def from_environment(
        cls,
        environ: MutableMapping[str, str] | None = None,
        pid: int | None = None,
        *,
        remove: bool = True,
    ) -> Notifier:
        """A notifier for what systemd passed in ``environ`` (default ``os.environ``).

        ``remove`` deletes the variables from ``environ`` afterwards, so child processes do not
        inherit them. ``pid`` is the process ``WATCHDOG_PID`` must name (default: this one).
        """
        environ = os.environ if environ is None else environ
        pid = os.getpid() if pid is None else pid
        socket_path = environ.get("NOTIFY_SOCKET") or None
        if socket_path is not None and not socket_path.startswith(("/", "@")):
            log.warning("NOTIFY_SOCKET=%r is not a path or an abstract name: not notifying systemd", socket_path)
            socket_path = None
        watchdog_seconds = _watchdog_seconds(environ.get("WATCHDOG_USEC"), environ.get("WATCHDOG_PID"), pid)
        if remove:
            for name in NOTIFY_VARIABLES:
                environ.pop(name, None)
        return cls(socket_path, watchdog_seconds)

    @property
    def enabled(self) -> bool:
        """Whether systemd listens (``NOTIFY_SOCKET`` was set)."""
        return self.socket_path is not None

    @property
    def watchdog_interval_seconds(self) -> float | None:
        """Seconds between two ``WATCHDOG=1`` pings (half ``WatchdogSec``), None without a watchdog."""
        if self.socket_path is None or self.watchdog_seconds is None:
            return None
        return self.watchdog_seconds / 2

    def send(self, *lines: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; False when not sent (disabled or an error).

        An error is logged once and otherwise ignored: the daemon keeps serving without systemd.
        """
        if self.socket_path is None:
            return False
        try:
            notify(self.socket_path, "\n".join(lines))
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd on %s: %s", self.socket_path, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up is complete and the daemon serves."""
        return self.send("READY=1", *_status_lines(status))

    def status(self, text: str) -> bool:
        """``STATUS=text``: one line for ``systemctl status``."""
        return self.send(*_status_lines(text))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the daemon is alive."""
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: the daemon has begun to shut down."""
        return self.send("STOPPING=1", *_status_lines(status))


async def watchdog_pings(notifier: Notifier) -> None:
    """Ping the watchdog every half ``WatchdogSec`` until cancelled; returns at once without one.

    Runs as a task on the daemon's event loop, on purpose: if the loop is blocked the pings stop
    and systemd restarts the service.
    """
    interval = notifier.watchdog_interval_seconds
    if interval is None:
        return
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)


async def status_updates(
    notifier: Notifier,
    describe: Callable[[], Awaitable[str]],
    interval_seconds: float,
    *,
    last_sent: str | None = None,
) -> None:
    """Every ``interval_seconds`` until cancelled, send ``STATUS=await describe()`` if it differs
    from the text sent last (``last_sent`` at first).

    A failing ``describe`` is logged and tried again at the next interval.
    """
    if not notifier.enabled:
        return
    last = last_sent
    while True:
        try:
            text = await describe()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("cannot describe the daemon's state for systemd")
        else:
            if text != last:
                notifier.status(text)
                last = text
        await asyncio.sleep(interval_seconds)


def _status_lines(text: str | None) -> list[str]:
    if text is None:
        return []
    line = " ".join(text.split())  # one line: a newline would start a new KEY=VALUE
    if len(line) > MAX_STATUS_CHARS:
        line = line[: MAX_STATUS_CHARS - 1] + "…"
    return [f"STATUS={line}"]


def _watchdog_seconds(usec: str | None, watchdog_pid: str | None, pid: int) -> float | None:
    if not usec:
        return None
    if watchdog_pid:
        try:
            if int(watchdog_pid) != pid:
                return None  # the watchdog is meant for another process (we were started by it)
        except ValueError:
            log.warning("WATCHDOG_PID=%r is not a process id: watchdog off", watchdog_pid)
            return None
    try:
        microseconds = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not an integer: watchdog off", usec)
        return None
    if microseconds <= 0:
        return None
    return microseconds / 1_000_000
