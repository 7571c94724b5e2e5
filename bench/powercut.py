"""Power-cut benchmark: hundreds of cuts at random moments while devices post and a job trains.

The daemon's data directory lies on the power-cut file system of ``tests/powercut_fs.py`` (a FUSE
pass-through that keeps writes not yet fsynced in its own memory). Each cycle starts ``tbftd
serve`` on what the disk kept, checks it (``tests/crash_harness.py``: every acknowledged sample,
hint, job and cancellation is there, ``PRAGMA integrity_check`` is ok, every listed model version
loads, the active one answers ``/v1/predict``, no job is left running), lets devices post and a
job train, then cuts: SIGKILL to the daemon's process group and to the file system's server, so
every unsynced write is lost. A last start checks every acknowledged byte.

    sudo python bench/powercut.py                 # 200 cuts (needs /dev/fuse and fuse3)
    python bench/powercut.py --cuts 20 --json /tmp/powercut.json

Prints one table of the figures; exit status 1 when anything acknowledged was lost or a check
failed, 2 when FUSE is not available.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.crash_harness import FaultRun, make_base_model, sigkill_group
    from tests.powercut_fs import PowerCutMount, fuse_available

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--cuts", type=int, default=200, help="power cuts (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the moments and of the devices' data")
    parser.add_argument("--json", type=Path, help="where to write every cycle's report as JSON")
    args = parser.parse_args(argv)
    reason = fuse_available()
    if reason is not None:
        print(f"bench/powercut.py: the power-cut file system cannot run here: {reason}", file=sys.stderr)
        return 2
    started = time.monotonic()
    load_at_start = os.getloadavg()
    discarded: list[int] = []
    with tempfile.TemporaryDirectory(prefix="tbftd-bench-powercut-") as work:
        root = Path(work)
        for name in ("backing", "mnt", "logs"):
            (root / name).mkdir()
        with PowerCutMount(root / "backing", root / "mnt") as mount:

            def cut(process: Any) -> None:
                sigkill_group(process)
                discarded.append(mount.stats().pending_bytes)
                mount.cut()

            def mount_again() -> None:
                if not mount.running:
                    mount.start()

            run = FaultRun(root / "mnt" / "data", root / "logs", cut, make_base_model(root / "base.pt"),
                           seed=args.seed, before_start=mount_again)
            for index in range(args.cuts):
                report = run.cycle(index)
                status = "ok" if not report.problems else "; ".join(report.problems)[:200]
                print(f"cut {index + 1}/{args.cuts}: {report.phase_at_fault} after {report.fault_after_seconds:.1f} s, "
                      f"{discarded[-1]:,} unsynced bytes lost, {status}", file=sys.stderr, flush=True)
            final = run.final_check()
            versions = _versions(root / "mnt" / "data" / "tbftd.sqlite3")
    reports = run.reports
    problems = [p for r in reports for p in r.problems] + final

    def count(*prefixes: str) -> int:
        """Problems of one kind: the checks start each message with what it is about."""
        return sum(1 for p in problems if p.startswith(prefixes))

    phases = collections.Counter(_phase_kind(r.phase_at_fault) for r in reports)
    rows = [
        ("power cuts", f"{len(reports)}"),
        ("  at the moment of the cut", ", ".join(f"{kind} {n}" for kind, n in phases.most_common())),
        ("  cuts that lost unsynced writes",
         f"{sum(1 for n in discarded if n > 0)} ({sum(discarded) / 2**20:,.1f} MiB in all)"),
        ("acknowledged batches / samples", f"{len(run.ledger.batches):,} / {run.ledger.samples:,}"),
        ("acknowledged hints / jobs / cancellations / activations",
         " / ".join(str(len(v)) for v in (run.ledger.hints, run.ledger.jobs, run.ledger.cancelled,
                                          run.ledger.activations))),
        ("acknowledged samples lost", f"{count('acknowledged samples')} batches"),
        ("other acknowledged writes lost", f"{count('acknowledged hint', 'acknowledged job', 'acknowledged cancellation', 'activation')}"),
        ("integrity_check not ok", f"{count('integrity_check')} of {len(reports) + 1} restarts"),
        ("model versions that did not load", f"{count('model version')} (versions listed at the end: {versions})"),
        ("/v1/predict failures", f"{count('/v1/predict')}"),
        ("jobs left running", f"{count('job ')}"),
        ("interrupted jobs not re-queued", f"{count('interrupted job')}"),
        ("jobs found interrupted and re-queued", f"{sum(len(r.interrupted_jobs) for r in reports)}"),
        ("restarts checked", f"{sum(1 for r in reports if r.seconds_to_ready is not None) + 1}"),
        ("problems in all", f"{len(problems)}"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"\nmachine: {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}, "
          f"load average {[round(v, 2) for v in load_at_start]} at start, "
          f"{[round(v, 2) for v in os.getloadavg()]} at end; {time.monotonic() - started:,.0f} s")
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    for problem in problems[:20]:
        print(f"  problem: {problem}")
    if args.json:
        document = {"settings": vars(args) | {"json": str(args.json)}, "discarded_bytes": discarded,
                    "final_problems": final, "reports": [r.__dict__ for r in reports]}
        args.json.write_text(json.dumps(document, indent=2, default=str))
    return 1 if problems else 0


def _phase_kind(phase: str) -> str:
    """The phase reports name, without what they add in parentheses."""
    return phase.split(" (", 1)[0]


def _versions(database: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM model_versions").fetchone()[0])
    finally:
        conn.close()


if __name__ == "__main__":
    raise SystemExit(main())
