"""``tbftd demo`` as a process, with tiny settings: its table, and that it leaves nothing behind,
whether it finishes or is interrupted."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.running_daemon import tbftd_command

pytestmark = pytest.mark.slow

TINY = ["--train-samples", "60", "--test-samples", "50", "--clean-samples", "20", "--epochs", "1"]
DAEMON_LINE = re.compile(r"^daemon: (http://127\.0\.0\.1:\d+) \(pid (\d+)\), data in (\S+)$", re.MULTILINE)
EXPECTED_BLOCKS = {"input": "block1", "feature": "block3", "output": "fc"}


def demo_environment() -> dict[str, str]:
    # Unbuffered, so the interrupt test sees each line as it is printed; a token in the caller's
    # environment must not matter to the demo's own daemon.
    return {**os.environ, "PYTHONUNBUFFERED": "1", "TBFTD_API_TOKEN": "not-the-demos"}


def assert_nothing_left(pid: int, directory: Path) -> None:
    assert not directory.exists(), f"{directory} was not removed"
    with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):  # gone, or a reused pid
        assert str(directory) not in " ".join(psutil.Process(pid).cmdline()), f"the daemon {pid} still runs"
    for process in psutil.process_iter(["cmdline"]):
        assert str(directory) not in " ".join(process.info["cmdline"] or ()), process


def demo_rows(out: str) -> dict[str, list[str]]:
    """The table's rows by drift type, cells split on runs of two or more spaces."""
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("drift    block"))
    rows = {}
    for line in lines[header + 2 :]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells
    return rows


def test_the_demo_prints_a_row_per_drift_type_and_leaves_no_daemon(tmp_path: Path) -> None:
    result = subprocess.run([*tbftd_command(), "demo", *TINY], check=False, capture_output=True, text=True, timeout=600,
                            env=demo_environment(), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    match = DAEMON_LINE.search(result.stdout)
    assert match, result.stdout
    pid, directory = int(match.group(2)), Path(match.group(3))
    rows = demo_rows(result.stdout)
    assert {drift: cells[1] for drift, cells in rows.items()} == EXPECTED_BLOCKS
    for cells in rows.values():
        before, after = cells[2].split(" → ")
        assert before.endswith("%") and after.rstrip("*").endswith("%")
        seconds, joules, full_seconds, full_joules = float(cells[3]), float(cells[4]), float(cells[6]), float(cells[7])
        assert seconds > 0 and joules > 0 and full_seconds > 0 and full_joules > 0, cells
        assert cells[8].endswith("%")
        assert cells[9].startswith("UM25C@") and "/ full:" not in cells[9], cells
    assert "1 − joules(block) / joules(full)" in result.stdout
    assert_nothing_left(pid, directory)
    assert list(tmp_path.iterdir()) == []  # nothing written to the working directory either


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_demo_stops_its_daemon_and_cleans_up(tmp_path: Path, stop_signal: signal.Signals) -> None:
    # A background job of a non-interactive shell (a CI script started with `&`) begins with SIGINT
    # ignored, and children inherit that, so Python would install no Ctrl+C handler in the demo. A
    # handler here is reset to the default action by exec, as in a terminal, where Ctrl+C comes from.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen([*tbftd_command(), "demo", *TINY, "--drift", "input"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=demo_environment(), cwd=tmp_path)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        assert process.stdout is not None
        out = ""
        deadline = time.monotonic() + 120
        while "full fine-tune for comparison" not in out:  # a job is queued or training now
            assert time.monotonic() < deadline and process.poll() is None, out
            out += process.stdout.readline()
        process.send_signal(stop_signal)
        rest, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, out + rest + err
    assert err.rstrip().endswith("interrupted")
    match = DAEMON_LINE.search(out)
    assert match, out
    assert_nothing_left(int(match.group(2)), Path(match.group(3)))
