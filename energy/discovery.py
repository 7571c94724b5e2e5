"""Finding a meter: probe the usual serial ports, and pick the daemon's power source.

:func:`select_meter` takes the configured port and kind if there are any; otherwise it probes
``/dev/serial/by-id/*``, ``/dev/ttyUSB*``, ``/dev/ttyACM*`` and ``/dev/rfcomm*``; otherwise it
returns the estimator. Probing a UM meter sends it ``0xF0``; a line meter is only listened to.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from energy.clock import Clock
from energy.estimator import Estimator
from energy.line_meter import LineFormat, LineMeter
from energy.meter import Meter, MeterInfo
from energy.um import MODELS, UMMeter

logger = logging.getLogger(__name__)

#: Where meters show up: stable USB names first, then the raw device names, then Bluetooth.
CANDIDATE_PATTERNS: tuple[str, ...] = (
    "/dev/serial/by-id/*",
    "/dev/ttyUSB*",
    "/dev/ttyACM*",
    "/dev/rfcomm*",
)
#: Values of ``kind``: a driver, a UM model (the same driver, model checked), or the estimator.
KINDS: tuple[str, ...] = ("um", *(m.lower() for m in MODELS), "line", "estimate")


def candidate_ports(patterns: Iterable[str] = CANDIDATE_PATTERNS) -> list[str]:
    """Existing ports matching ``patterns``, in pattern order; a device reached through several
    names (a by-id link and its ttyUSB) is listed once, under its first name."""
    ports: list[str] = []
    seen: set[str] = set()
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            real = os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            ports.append(path)
    return ports


@dataclass(frozen=True)
class ProbeResult:
    """What answered on a port: a meter's description, or why nothing did."""

    port: str
    info: MeterInfo | None
    error: str | None = None

    @property
    def found(self) -> bool:
        """Whether a meter answered."""
        return self.info is not None


def _is_url(port: str) -> bool:
    return "://" in port


def probe_port(
    port: str,
    *,
    kinds: Sequence[str] = ("um", "line"),
    line_format: LineFormat | None = None,
    baudrate: int | None = None,
    timeout_seconds: float = 1.0,
    clock: Clock | None = None,
) -> ProbeResult:
    """Ask ``port`` for each kind in turn (``um``: send 0xF0; ``line``: listen for lines)."""
    if not _is_url(port) and not os.path.exists(port):
        return ProbeResult(port, None, "no such port")
    for kind in kinds:
        info: MeterInfo | None = None
        if kind == "um":
            info = UMMeter.probe(port, timeout_seconds=timeout_seconds, clock=clock)
        elif kind == "line":
            info = LineMeter.probe(
                port,
                line_format,
                baudrate=baudrate or 115200,
                timeout_seconds=max(timeout_seconds, 2.0),
                clock=clock,
            )
        else:
            raise ValueError(f"cannot probe for kind {kind!r}")
        if info is not None:
            return ProbeResult(port, info)
    return ProbeResult(port, None, "no meter answered")


def probe_ports(
    ports: Iterable[str] | None = None,
    *,
    patterns: Iterable[str] = CANDIDATE_PATTERNS,
    **probe_options: object,
) -> list[ProbeResult]:
    """Probe each port (by default every :func:`candidate_ports`); options as :func:`probe_port`."""
    chosen = list(ports) if ports is not None else candidate_ports(patterns)
    return [probe_port(port, **probe_options) for port in chosen]  # type: ignore[arg-type]


def make_meter(
    kind: str,
    port: str | None = None,
    *,
    line_format: LineFormat | None = None,
    baudrate: int | None = None,
    estimator: Estimator | None = None,
    clock: Clock | None = None,
) -> Meter:
    """An unopened meter of ``kind`` (see :data:`KINDS`) on ``port``."""
    kind = kind.strip().lower()
    if kind == "estimate":
        return estimator or Estimator(clock=clock)
    if port is None:
        raise ValueError(f"a {kind} meter needs a port")
    if kind == "um" or kind.upper() in MODELS:
        return UMMeter(
            port,
            model=None if kind == "um" else kind,
            baudrate=baudrate or 9600,
            clock=clock,
        )
    if kind == "line":
        return LineMeter(port, line_format, baudrate=baudrate or 115200, clock=clock)
    raise ValueError(f"unknown meter kind {kind!r} (known: {', '.join(KINDS)})")


def select_meter(
    port: str | None = None,
    kind: str | None = None,
    *,
    line_format: LineFormat | None = None,
    baudrate: int | None = None,
    probe: bool = True,
    patterns: Iterable[str] = CANDIDATE_PATTERNS,
    estimator: Estimator | None = None,
    clock: Clock | None = None,
    timeout_seconds: float = 1.0,
) -> Meter:
    """The daemon's power source, unopened (an :class:`~energy.window.EnergyWindow` opens it).

    - ``kind="estimate"``: the estimator.
    - A port and a kind: that meter, trusted without probing (a Bluetooth meter may be switched on
      later; the window covers its absence with the estimator and keeps reconnecting).
    - A port alone: probed; a kind alone: the candidate ports probed for that kind.
    - Neither: the candidate ports probed for a UM meter (and for a line meter if ``line_format``
      is given); the first that answers wins.
    - Nothing found (or ``probe=False``): ``estimator``, or an :class:`Estimator` for this board.
    """
    fallback = estimator or Estimator(clock=clock)
    if kind is not None and kind.strip().lower() == "estimate":
        return fallback
    if port is not None and kind is not None:
        return make_meter(kind, port, line_format=line_format, baudrate=baudrate, clock=clock)
    if not probe:
        return fallback
    if kind is None:
        kinds: tuple[str, ...] = ("um", "line") if line_format is not None else ("um",)
    else:
        kinds = ("line",) if kind.strip().lower() == "line" else ("um",)
    ports = [port] if port is not None else candidate_ports(patterns)
    for candidate in ports:
        result = probe_port(
            candidate,
            kinds=kinds,
            line_format=line_format,
            baudrate=baudrate,
            timeout_seconds=timeout_seconds,
            clock=clock,
        )
        if result.info is None or (result.info.kind == "line" and line_format is None):
            continue
        wanted = kind or (result.info.model.lower() if result.info.kind == "um" else "line")
        logger.info("power meter: %s (%s)", result.info.source, result.info.detail)
        return make_meter(
            wanted, candidate, line_format=line_format, baudrate=baudrate, clock=clock
        )
    where = port if port is not None else "the usual ports"
    logger.warning(
        "no power meter found on %s: energy figures will be estimates (%s)",
        where,
        fallback.describe().detail,
    )
    return fallback
