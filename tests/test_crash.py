"""Crashes: SIGKILL to the daemon's whole process group (API and trainer) at random moments while
devices post and jobs train, then a restart on the same data directory (:mod:`tests.crash_harness`).

The operating system keeps what was written before the kill, so this checks crash consistency:
the transactions, the atomic model files and the recovery of interrupted jobs. Power cuts, which
also lose what was not fsynced, are ``tests/test_powercut.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.crash_harness import FaultRun, make_base_model, sigkill_group

pytestmark = pytest.mark.slow

CYCLES = 12


def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path: Path) -> None:
    base = make_base_model(tmp_path / "base.pt")
    logs = tmp_path / "logs"
    logs.mkdir()
    run = FaultRun(tmp_path / "data", logs, sigkill_group, base, seed=11)
    for index in range(CYCLES):
        report = run.cycle(index)
        assert not report.problems, (report, f"daemon logs in {logs}")
    # The last fault is checked by one more start, with every acknowledged byte compared.
    final = run.final_check()
    assert not final, final

    reports = run.reports
    assert run.ledger.samples > 0 and sum(r.batches_acknowledged for r in reports) == len(run.ledger.batches) - 1
    assert any(r.phase_at_fault == "training" for r in reports), [r.phase_at_fault for r in reports]
    # Jobs killed while running were found interrupted by the next start and re-queued.
    assert any(r.interrupted_jobs for r in reports), [r.phase_at_fault for r in reports]
    assert run.ledger.jobs, "no job was acknowledged"
