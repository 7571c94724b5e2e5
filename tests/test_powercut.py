"""Power cuts: the daemon's data directory on the power-cut file system (:mod:`tests.powercut_fs`),
cut at random moments while devices post and a job trains, and the daemon restarted each time on
what the disk kept (:mod:`tests.crash_harness`).

A cut is SIGKILL to the daemon's process group together with SIGKILL to the file system's
server, which loses every write not yet fsynced, as a page cache does when the plug is pulled;
``tests/test_powercut_fs.py`` shows that it does. ``bench/powercut.py`` runs the same for 200 cuts.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.crash_harness import FaultRun, make_base_model, sigkill_group
from tests.powercut_fs import PowerCutMount, fuse_available

pytestmark = pytest.mark.slow

CUTS = 20


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[PowerCutMount]:
    reason = fuse_available()
    if reason is not None:
        pytest.skip(f"power-cut file system unavailable: {reason}")
    (tmp_path / "backing").mkdir()
    (tmp_path / "mnt").mkdir()
    with PowerCutMount(tmp_path / "backing", tmp_path / "mnt") as mounted:
        yield mounted


def power_cut(mount: PowerCutMount, discarded_bytes: list[int]) -> FaultRun:
    """A fault that kills the daemon and the file system's unsynced writes at once; appends to
    ``discarded_bytes`` how many bytes each cut threw away."""

    def cut(process: subprocess.Popen[bytes]) -> None:
        sigkill_group(process)
        discarded_bytes.append(mount.stats().pending_bytes)
        mount.cut()

    def mount_again() -> None:
        if not mount.running:
            mount.start()

    logs = mount.mountpoint.parent / "logs"
    logs.mkdir(exist_ok=True)
    base = make_base_model(mount.mountpoint.parent / "base.pt")
    return FaultRun(mount.mountpoint / "data", logs, cut, base, seed=23, before_start=mount_again)


def test_power_cuts_at_random_moments_lose_nothing_acknowledged(mount: PowerCutMount) -> None:
    discarded_bytes: list[int] = []
    run = power_cut(mount, discarded_bytes)
    for index in range(CUTS):
        report = run.cycle(index)
        assert not report.problems, report
    final = run.final_check()
    assert not final, final

    reports = run.reports
    assert run.ledger.samples > 0
    assert sum(r.phase_at_fault == "training" for r in reports) >= 3, [r.phase_at_fault for r in reports]
    assert any(r.interrupted_jobs for r in reports)
    # The cuts did throw unsynced writes away: without that this would be the SIGKILL test again.
    assert sum(1 for n in discarded_bytes if n > 0) >= CUTS // 4, discarded_bytes
