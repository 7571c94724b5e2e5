"""``tbftd serve``: run the daemon (uvicorn started from code on ``create_app(settings)``)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

from service.cli import CLIError
from service.settings import SettingsError, add_arguments, settings_from_args

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


def daemon_server_class() -> type:
    """A ``uvicorn.Server`` that handles SIGTERM and SIGINT itself and exits with status 0.

    uvicorn re-raises the stop signal once it has shut down, so a clean stop would look like a
    death by SIGTERM. Here the first signal starts the graceful shutdown and a second one forces it.
    """
    import uvicorn

    class DaemonServer(uvicorn.Server):
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
            logging.getLogger(__name__).info("received %s", signal.Signals(signum).name)
            self.handle_exit(signum, frame)  # first: graceful; again: force_exit

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

    from service.app import create_app

    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        raise CLIError(str(exc)) from exc
    configure_logging(settings.log_level)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        # Without it uvicorn waits for keep-alive clients forever before the lifespan shutdown runs.
        timeout_graceful_shutdown=int(max(1, settings.graceful_timeout_seconds)),
    )
    server = daemon_server_class()(config)
    server.run()
    return 0 if server.started else 1
