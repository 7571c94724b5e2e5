"""No meter: the board's power estimated from CPU load, and always labelled as an estimate.

Linear models P = idle_watts + watts_per_load · u, with u the whole-CPU busy fraction (0..1),
fitted against an external meter by PowerJoular for the Pi 5, Pi 4B and Pi 3B+. The board is read
from ``/proc/device-tree/model``. Any other machine gets :data:`GENERIC`, a rough guess.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from energy.clock import Clock
from energy.meter import Meter, MeterInfo, MeterSample

#: Where Linux names the board on device-tree machines (the Pi).
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")


@dataclass(frozen=True)
class PowerModel:
    """A board's power as a linear function of CPU load."""

    board: str
    name: str
    idle_watts: float
    watts_per_load: float
    note: str = ""

    def watts(self, load_fraction: float) -> float:
        """Estimated whole-board watts at a CPU busy fraction (clamped to 0..1)."""
        load = min(1.0, max(0.0, load_fraction))
        return self.idle_watts + self.watts_per_load * load

    @property
    def source(self) -> str:
        """The label on every figure from this model: ``estimate:<board>``."""
        return f"estimate:{self.board}"


PI5 = PowerModel("pi5", "Raspberry Pi 5", 4.4032, 3.4579, "PowerJoular fit")
PI4B = PowerModel("pi4b", "Raspberry Pi 4 Model B", 2.2857, 4.5344, "PowerJoular fit, 64-bit OS")
PI3BPLUS = PowerModel("pi3b+", "Raspberry Pi 3 Model B Plus", 2.0022, 3.2983, "PowerJoular fit")
#: Anything else. A rough guess, not a fit: 3 W idle plus 4 W at full load, the range of the
#: Pi-class boards above; on a desktop or laptop it may be off by several times.
GENERIC = PowerModel("generic", "unknown machine", 3.0, 4.0, "rough guess, no measurement behind it")

BOARD_MODELS: dict[str, PowerModel] = {m.board: m for m in (PI5, PI4B, PI3BPLUS, GENERIC)}

# Device-tree model prefixes (the string goes on with " Rev 1.x").
_BOARD_PREFIXES: tuple[tuple[str, PowerModel], ...] = (
    ("Raspberry Pi 5", PI5),
    ("Raspberry Pi 4 Model B", PI4B),
    ("Raspberry Pi 3 Model B Plus", PI3BPLUS),
)


def read_board_name(path: Path | str = DEVICE_TREE_MODEL) -> str | None:
    """The board's name from the device tree, or None where there is none (not a Pi)."""
    try:
        raw = Path(path).read_bytes()
    except OSError:
        return None
    name = raw.split(b"\0", 1)[0].decode("utf-8", errors="replace").strip()
    return name or None


def power_model_for(board_name: str | None) -> PowerModel:
    """The power model for a device-tree board name; :data:`GENERIC` for anything unknown."""
    if board_name:
        for prefix, model in _BOARD_PREFIXES:
            if board_name.startswith(prefix):
                return model
    return GENERIC


def detect_power_model(path: Path | str = DEVICE_TREE_MODEL) -> PowerModel:
    """The power model for the board this runs on."""
    return power_model_for(read_board_name(path))


class CpuLoad:
    """Whole-CPU busy fraction (0..1) since the previous call, from ``/proc/stat`` via psutil.

    Each instance keeps its own previous reading (``psutil.cpu_percent(None)`` shares one across
    the process). The first call covers the time since boot.
    """

    def __init__(self) -> None:
        self._previous: tuple[float, float] = (0.0, 0.0)
        self._last_fraction = 0.0

    def __call__(self) -> float:
        times = psutil.cpu_times()
        # Guest time is already counted in user and nice on Linux.
        guest = getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
        total = sum(times) - guest
        idle = times.idle + getattr(times, "iowait", 0.0)
        previous_total, previous_idle = self._previous
        delta_total = total - previous_total
        if delta_total <= 0:
            return self._last_fraction  # called again within one tick of the kernel's counters
        self._previous = (total, idle)
        busy = 1.0 - (idle - previous_idle) / delta_total
        self._last_fraction = min(1.0, max(0.0, busy))
        return self._last_fraction


class Estimator(Meter):
    """A meter that is not one: watts from CPU load through a :class:`PowerModel`.

    The model comes from ``power_model``, or from the board named in ``model_path``; either of its
    coefficients can be overridden with ``idle_watts`` / ``watts_per_load``. ``load_fraction``
    (a callable returning 0..1) replaces the psutil reading, for tests. Every sample is labelled
    ``estimate:<board>``.
    """

    kind = "estimate"

    def __init__(
        self,
        power_model: PowerModel | None = None,
        *,
        model_path: Path | str = DEVICE_TREE_MODEL,
        idle_watts: float | None = None,
        watts_per_load: float | None = None,
        load_fraction: Callable[[], float] | None = None,
        rate_hz: float = 2.0,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(clock)
        model = power_model or detect_power_model(model_path)
        if idle_watts is not None or watts_per_load is not None:
            model = PowerModel(
                board=model.board,
                name=model.name,
                idle_watts=model.idle_watts if idle_watts is None else idle_watts,
                watts_per_load=model.watts_per_load if watts_per_load is None else watts_per_load,
                note="coefficients overridden",
            )
        self.power_model = model
        self.rate_hz = rate_hz
        self._load_fraction = load_fraction or CpuLoad()
        self._open = False

    @property
    def is_open(self) -> bool:
        """Whether ``open`` was called (an estimator cannot fail to open)."""
        return self._open

    def open(self) -> None:
        """Start measuring CPU load from now."""
        self._load_fraction()  # prime: the next reading covers the time since now
        self._open = True

    def read(self) -> MeterSample:
        """Estimated watts for the CPU load since the previous reading."""
        if not self._open:
            self.open()
        watts = self.power_model.watts(self._load_fraction())
        return MeterSample(
            seconds=self.clock.now(),
            watts=watts,
            volts=None,
            amps=None,
            source=self.power_model.source,
        )

    def close(self) -> None:
        """Nothing to release."""
        self._open = False

    def describe(self) -> MeterInfo:
        """The board, its coefficients, and that this is an estimate."""
        model = self.power_model
        return MeterInfo(
            kind=self.kind,
            model=model.name,
            port=None,
            rate_hz=self.rate_hz,
            volts_resolution=None,
            amps_resolution=None,
            watts_resolution=None,
            counter_resolution_joules=None,
            is_estimate=True,
            source=model.source,
            detail=(
                f"estimate from CPU load: {model.idle_watts:g} W + {model.watts_per_load:g} W x load"
                + (f" ({model.note})" if model.note else "")
            ),
        )
