"""``tbftd serve``: run the daemon (uvicorn started from code on ``create_app(settings)``).

Under systemd (``Type=notify``) the daemon sends ``READY=1`` once uvicorn serves, a ``STATUS=``
line every few seconds when it changes, ``WATCHDOG=1`` from the event loop when the unit has a
``WatchdogSec``, and ``STOPPING=1`` when it begins to stop (:mod:`service.systemd_notify`).

Stopping: the first SIGTERM or SIGINT stops the listener, tells the job manager to take no new work
and to stop a running job at its next batch (while uvicorn lets open requests finish, at most
``graceful_timeout_seconds``), then the application's shutdown records that job as cancelled with
its energy and closes the meter and the database. A second signal escalates: open connections are
dropped and the trainer is terminated at once; the job is still recorded. Samples are committed
before their POST is answered, so a stop loses nothing that was acknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING

from service.cli import CLIError
from service.settings import SettingsError, add_arguments, settings_from_args
from service.systemd_notify import Notifier, status_updates, watchdog_pings

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

    from service.app import Daemon

log = logging.getLogger(__name__)

#: Seconds between two looks at what the daemon does, for ``STATUS=`` (sent only when it changed).
STATUS_INTERVAL_SECONDS = 5.0

#: syslog priority prefixes, so journald files each line at its level (``journalctl -p warning``).
SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class SyslogPrefixFormatter(logging.Formatter):
    """``<N>logger: message`` with N the syslog priority of the record's level."""

    def format(self, record: logging.LogRecord) -> str:
        priority = SYSLOG_PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{record.name}: {super().format(record)}"


def configure_logging(level: str) -> None:
    """Log to stderr with syslog priority prefixes (journald adds the timestamps)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SyslogPrefixFormatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def status_text(daemon: Daemon) -> str:
    """One line saying what the daemon does, for ``systemctl status``.

    ``idle, 1200 samples buffered, model version 3`` or
    ``training job 17 (fc), epoch 3/10, 4.1 W``. Reads the database: call it off the event loop.
    """
    jobs = daemon.jobs
    job_id = jobs.running_job
    if job_id is None:
        usage = daemon.store.buffer_usage()
        models = len(daemon.registry.scope_versions())
        text = (f"idle, {usage.samples} samples buffered, model version {daemon.registry.default_version}"
                + (f" (+{models} context model{'s' * (models != 1)})" if models else ""))
        queued = len(daemon.store.list_jobs(state="queued", limit=100))
        return text + (f", {queued} job{'s' * (queued != 1)} queued" if queued else "")
    block = daemon.store.get_job(job_id).block or "full"
    parts = [f"training job {job_id} ({block})"]
    progress = jobs.latest_progress
    if progress is None:
        parts.append("starting")
    elif progress.get("phase") == "prepare":
        parts.append("evaluating the current model")
    else:
        parts.append(f"epoch {progress.get('epoch')}/{progress.get('epochs')}")
    power = jobs.latest_power
    if power is not None:
        from energy.window import is_estimate

        parts.append(f"{power.watts:.1f} W" + (" (estimated)" if is_estimate(power.source) else ""))
    return ", ".join(parts)


def daemon_server_class() -> type[uvicorn.Server]:
    """A ``uvicorn.Server`` that speaks sd_notify and handles SIGTERM and SIGINT itself.

    uvicorn re-raises the stop signal once it has shut down, so a clean stop would look like a
    death by SIGTERM; this one exits with status 0. The first signal starts the graceful stop, a
    second one escalates it (see the module docstring). Construct it as
    ``DaemonServer(config, app=app, notifier=notifier)``.
    """
    import uvicorn

    class DaemonServer(uvicorn.Server):
        def __init__(self, config: uvicorn.Config, *, app: FastAPI | None = None,
                     notifier: Notifier | None = None) -> None:
            super().__init__(config)
            self.app = app
            self.notifier = notifier or Notifier()
            self._loop: asyncio.AbstractEventLoop | None = None
            self._status_task: asyncio.Task[None] | None = None
            self._watchdog_task: asyncio.Task[None] | None = None

        def daemon(self) -> Daemon | None:
            """The application's running :class:`~service.app.Daemon`, once started."""
            return getattr(self.app.state, "daemon", None) if self.app is not None else None

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            self._loop = asyncio.get_running_loop()
            await super().startup(sockets)
            if not self.started:
                return
            try:
                status = await self._describe()
            except Exception:  # a status line is not worth failing the start for
                log.exception("cannot describe the daemon's state for systemd")
                status = "running"
            self.notifier.ready(status)
            self._watchdog_task = asyncio.create_task(watchdog_pings(self.notifier), name="tbftd-watchdog")
            self._status_task = asyncio.create_task(
                status_updates(self.notifier, self._describe, STATUS_INTERVAL_SECONDS, last_sent=status),
                name="tbftd-status",
            )

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            if self._status_task is not None:
                self._status_task.cancel()
            daemon = self.daemon()
            running = daemon.jobs.running_job if daemon is not None else None
            self.notifier.stopping(
                f"stopping: job {running} stops at its next batch" if running is not None else "stopping"
            )
            if daemon is not None:
                # Now, not after uvicorn has drained the open connections: the trainer stops meanwhile.
                daemon.jobs.request_stop(force=self.force_exit)
            await super().shutdown(sockets)
            lifespan_done = getattr(getattr(self, "lifespan", None), "shutdown_event", None)
            if self.force_exit and lifespan_done is not None and not lifespan_done.is_set():
                # uvicorn skips the application's shutdown when forced; ours records the running job
                # and closes the database, and with the trainer terminated it is quick.
                await self.lifespan.shutdown()
            if self._watchdog_task is not None:
                self._watchdog_task.cancel()  # pinged until now: stopping may take a while

        async def _describe(self) -> str:
            daemon = self.daemon()
            if daemon is None:
                return "starting"
            return await asyncio.to_thread(status_text, daemon)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        def _on_signal(self, signum: int, frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            if not self.should_exit:
                log.info("received %s: stopping (a second signal forces it)", name)
                self.should_exit = True
                return
            log.warning("received %s again: dropping connections and terminating a running trainer", name)
            self.force_exit = True
            if self._loop is not None:
                # Not from the signal handler itself: it may interrupt the main thread anywhere.
                self._loop.call_soon_threadsafe(self._escalate)

        def _escalate(self) -> None:
            daemon = self.daemon()
            if daemon is not None:
                daemon.jobs.request_stop(force=True)

    return DaemonServer


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``tbftd serve``."""
    parser = subparsers.add_parser(
        "serve",
        help="run the daemon (HTTP API, sample buffer, background fine-tuning)",
        description="Run the tbftd daemon. Settings come from defaults < --config TOML < TBFTD_* "
        "environment variables < these flags.",
    )
    add_arguments(parser)
    parser.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Start uvicorn on the app and block until it stops."""
    import uvicorn

    from service.allocator import tune_allocator
    from service.app import create_app

    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        raise CLIError(str(exc)) from exc
    configure_logging(settings.log_level)
    tune_allocator()  # a daemon that runs for months must give freed memory back
    # First, before anything can start a child process: read systemd's variables and remove them
    # from the environment, so that no child (the trainer) inherits them.
    notifier = Notifier.from_environment()
    notifier.status("starting: opening the database and loading the model")
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        # Without it uvicorn waits for keep-alive clients forever before the lifespan shutdown runs.
        timeout_graceful_shutdown=int(max(1, settings.graceful_timeout_seconds)),
    )
    server = daemon_server_class()(config, app=app, notifier=notifier)
    server.run()
    return 0 if server.started else 1
