"""Power profiles: what an emulated meter measures over time, with exact integrals where possible.

A profile gives watts at a time (seconds since the emulator started) and, where it is
deterministic, the exact joules between two times, which is what tests hold a window's figure to.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from energy.estimator import CpuLoad


class Profile(Protocol):
    """Watts as a function of time since the emulator started."""

    def watts(self, seconds: float) -> float:
        """Power at ``seconds``."""
        ...

    def joules(self, start_seconds: float, stop_seconds: float) -> float | None:
        """Exact energy between two times, or None where the profile is not reproducible."""
        ...

    def describe(self) -> str:
        """One line for people."""
        ...


@dataclass(frozen=True)
class ConstantProfile:
    """The same power all the time."""

    level_watts: float

    def watts(self, seconds: float) -> float:
        """``level_watts`` whatever the time."""
        return self.level_watts

    def joules(self, start_seconds: float, stop_seconds: float) -> float:
        """Power times duration."""
        return self.level_watts * (stop_seconds - start_seconds)

    def describe(self) -> str:
        """E.g. ``constant 5 W``."""
        return f"constant {self.level_watts:g} W"


@dataclass(frozen=True)
class StepProfile:
    """Power in steps: ``steps`` is a sequence of (duration seconds, watts).

    After the last step the profile starts over if ``repeat``, else holds the last level. Before
    time 0 it holds the first level.
    """

    steps: tuple[tuple[float, float], ...]
    repeat: bool = False
    _edges: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("a step profile needs at least one step")
        if any(seconds <= 0 for seconds, _ in self.steps):
            raise ValueError("every step needs a positive duration")
        object.__setattr__(self, "steps", tuple((float(s), float(w)) for s, w in self.steps))
        edges, total = [], 0.0
        for seconds, _ in self.steps:
            total += seconds
            edges.append(total)
        object.__setattr__(self, "_edges", tuple(edges))

    @property
    def period_seconds(self) -> float:
        """The length of one pass through the steps."""
        return self._edges[-1]

    def watts(self, seconds: float) -> float:
        """The level of the step that holds ``seconds`` (a step includes its start, not its end)."""
        if seconds < 0:
            return self.steps[0][1]
        if seconds >= self.period_seconds:
            if not self.repeat:
                return self.steps[-1][1]
            seconds = math.fmod(seconds, self.period_seconds)
        index = bisect.bisect_right(self._edges, seconds)
        return self.steps[min(index, len(self.steps) - 1)][1]

    def _energy_to(self, seconds: float) -> float:
        """Exact joules from 0 to ``seconds`` (negative before 0)."""
        if seconds <= 0:
            return self.steps[0][1] * seconds
        period = self.period_seconds
        cycle_joules = sum(s * w for s, w in self.steps)
        energy = 0.0
        if seconds >= period:
            if not self.repeat:
                return cycle_joules + self.steps[-1][1] * (seconds - period)
            cycles = math.floor(seconds / period)
            energy += cycles * cycle_joules
            seconds -= cycles * period
        start = 0.0
        for (_, level), end in zip(self.steps, self._edges, strict=True):
            if seconds <= start:
                break
            energy += level * (min(seconds, end) - start)
            start = end
        return energy

    def joules(self, start_seconds: float, stop_seconds: float) -> float:
        """Exact energy, summed step by step."""
        return self._energy_to(stop_seconds) - self._energy_to(start_seconds)

    def describe(self) -> str:
        """E.g. ``steps 4.5 W for 10 s, 7.5 W for 10 s (then hold)``."""
        parts = ", ".join(f"{w:g} W for {s:g} s" for s, w in self.steps)
        return f"steps {parts} ({'repeating' if self.repeat else 'then hold'})"


@dataclass(frozen=True)
class FunctionProfile:
    """Power from any function of time; joules by Simpson's rule at ``resolution_seconds``."""

    function: Callable[[float], float]
    label: str = "function"
    resolution_seconds: float = 0.001

    def watts(self, seconds: float) -> float:
        """``function(seconds)``."""
        return float(self.function(seconds))

    def joules(self, start_seconds: float, stop_seconds: float) -> float:
        """Numerical integral, exact for polynomials up to degree three."""
        span = stop_seconds - start_seconds
        if span == 0:
            return 0.0
        intervals = max(2, 2 * math.ceil(abs(span) / self.resolution_seconds / 2))
        step = span / intervals
        total = self.watts(start_seconds) + self.watts(stop_seconds)
        for i in range(1, intervals):
            total += (4 if i % 2 else 2) * self.watts(start_seconds + i * step)
        return total * step / 3

    def describe(self) -> str:
        """The label."""
        return self.label


class CpuLoadProfile:
    """Power that follows this machine's CPU load, like a Pi running a job: idle + per_load · u.

    Not reproducible, so it has no exact integral; the emulator integrates what it displays.
    """

    def __init__(
        self,
        idle_watts: float = 4.4032,
        watts_per_load: float = 3.4579,
        load_fraction: Callable[[], float] | None = None,
    ) -> None:
        self.idle_watts = idle_watts
        self.watts_per_load = watts_per_load
        self._load_fraction = load_fraction or CpuLoad()

    def watts(self, seconds: float) -> float:
        """Power at the CPU load since the previous call."""
        load = min(1.0, max(0.0, self._load_fraction()))
        return self.idle_watts + self.watts_per_load * load

    def joules(self, start_seconds: float, stop_seconds: float) -> float | None:
        """None: the load cannot be replayed."""
        return None

    def describe(self) -> str:
        """E.g. ``CPU load: 4.4 W + 3.46 W x load``."""
        return f"CPU load: {self.idle_watts:g} W + {self.watts_per_load:g} W x load"


def parse_profile(spec: str) -> Profile:
    """A profile from text, as ``tbftd meter emulate --profile`` takes it.

    ``5`` or ``constant:5`` (watts); ``steps:4.5@10,7.5@10,6@10`` (watts@seconds, then hold the
    last); ``cycle:…`` (the same, repeating); ``cpu`` or ``cpu:IDLE,PER_LOAD`` (follow CPU load).
    Raises ValueError with a readable message.
    """
    text = spec.strip()
    kind, _, rest = text.partition(":")
    kind = kind.strip().lower()
    try:
        if not rest and kind not in ("cpu",):
            return ConstantProfile(float(text))
        if kind == "constant":
            return ConstantProfile(float(rest))
        if kind in ("steps", "cycle"):
            steps: list[tuple[float, float]] = []
            for part in rest.split(","):
                watts_text, at, seconds_text = part.partition("@")
                if not at:
                    raise ValueError(f"step {part.strip()!r} is not WATTS@SECONDS")
                steps.append((float(seconds_text), float(watts_text)))
            return StepProfile(tuple(steps), repeat=kind == "cycle")
        if kind == "cpu":
            if not rest:
                return CpuLoadProfile()
            idle_text, _, per_load_text = rest.partition(",")
            return CpuLoadProfile(float(idle_text), float(per_load_text))
    except ValueError as exc:
        raise ValueError(f"bad profile {spec!r}: {exc}") from None
    raise ValueError(
        f"bad profile {spec!r}: use WATTS, constant:W, steps:W@S,…, cycle:W@S,… or cpu[:IDLE,PER_LOAD]"
    )

