"""How many torch threads a job's trainer gets: the cores actually free when it starts.

On a busy machine more threads than free cores do not add speed, they add waiting: measured on a
2-core x86 machine with the other core busy, one forward+backward of a batch of 128 took 0.84–0.92 s
at 1 thread and 2.8–4.6 s at 2 (``bench/threads.py`` measures it side by side). torch's threads
meet at a barrier after every operator, and a thread that shares its core with another process
makes all of them wait for its time slice. So the trainer runs on the cores that were idle over a
short window before the job, never on more than the cores minus one (one stays with the API), and
on at least one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

import psutil

#: How long the idle cores are measured before a job starts (seconds).
FREE_CORES_WINDOW_SECONDS = 0.5
#: A core counts as free from this idle fraction on: the API's own polling and the kernel's
#: housekeeping leave even an idle core a few percent busy.
FREE_CORE_IDLE_FRACTION = 0.75


def usable_cores() -> int:
    """The cores this process may run on (systemd's ``CPUAffinity=`` or a cpuset may limit them)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def idle_fractions(window_seconds: float = FREE_CORES_WINDOW_SECONDS) -> list[float]:
    """Each core's idle fraction (0..1) over ``window_seconds``, from ``/proc/stat`` via psutil."""
    busy_percent: Sequence[float] = psutil.cpu_percent(interval=window_seconds, percpu=True)
    return [1.0 - min(100.0, max(0.0, p)) / 100.0 for p in busy_percent]


def free_cores(idle: Sequence[float]) -> int:
    """The number of whole cores free, from per-core idle fractions: the summed idle time counts,
    so two half-idle cores make one free core, and a core is free from
    :data:`FREE_CORE_IDLE_FRACTION` of idle time on."""
    return math.floor(sum(idle) + (1.0 - FREE_CORE_IDLE_FRACTION) + 1e-9)


def trainer_threads(
    configured: int | None,
    cores: int | None = None,
    measure: Callable[[], Sequence[float]] = idle_fractions,
) -> int:
    """``configured`` when set; otherwise the free cores (``measure`` gives per-core idle fractions),
    at most the usable cores minus one, at least one."""
    if configured is not None:
        return configured
    cores = cores if cores is not None else usable_cores()
    ceiling = max(1, cores - 1)
    return max(1, min(ceiling, free_cores(measure())))
