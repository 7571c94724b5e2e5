"""The trainer's threads follow the cores that are free when a job starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from service.cores import free_cores, idle_fractions, trainer_threads


@pytest.mark.parametrize(
    ("idle", "free"),
    [([0.0, 0.97], 1), ([0.97, 0.97], 2), ([0.5, 0.5], 1), ([0.2, 0.3], 0), ([0.8, 0.0, 0.0, 0.0], 1), ([], 0)],
)
def test_free_cores_count_whole_idle_cores(idle: list[float], free: int) -> None:
    assert free_cores(idle) == free


def test_threads_are_the_free_cores_within_the_cores_minus_one() -> None:
    assert trainer_threads(3, cores=2, measure=lambda: [0.0, 0.0]) == 3  # configured: as given
    assert trainer_threads(None, cores=4, measure=lambda: [0.0, 1.0, 1.0, 1.0]) == 3
    assert trainer_threads(None, cores=4, measure=lambda: [0.0, 0.1, 1.0, 1.0]) == 2
    assert trainer_threads(None, cores=4, measure=lambda: [1.0] * 4) == 3  # one core stays with the API
    assert trainer_threads(None, cores=2, measure=lambda: [0.0, 0.0]) == 1  # never none
    assert trainer_threads(None, cores=1, measure=lambda: [1.0]) == 1


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity")
def test_a_core_kept_busy_by_another_process_is_measured_busy() -> None:
    core = sorted(os.sched_getaffinity(0))[0]
    spinner = subprocess.Popen(
        [sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{core}}})\nwhile True: pass"]
    )
    try:
        # Other load only makes the core busier: this holds on a loaded machine too.
        idle = idle_fractions(window_seconds=0.5)
        assert len(idle) == os.cpu_count()
        assert all(0.0 <= f <= 1.0 for f in idle)
        assert idle[core] < 0.5
    finally:
        spinner.kill()
        spinner.wait()
