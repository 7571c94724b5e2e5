"""``tbftd status | jobs | energy | models`` against a real daemon after a real (small) job, and
against no daemon at all."""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from drift.scenarios import shapes_scenario
from service.cli import main
from service.client import TbftdClient
from service.operator_commands import time_bound
from tests.running_daemon import Daemon, free_port, metered_daemon, tbftd_command

WATTS = 4.5
CONTEXT = "site-b"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the module: jobs start at 40 samples and train one epoch."""
    with metered_daemon(tmp_path_factory.mktemp("operator") / "data", WATTS,
                        "--min-samples", "40", "--epochs", "1") as running:
        yield running


@pytest.fixture(scope="module")
def started_job(daemon: Daemon) -> int:
    """The id of an output-drift (fc) job that a device's samples and hint started."""
    client = TbftdClient(daemon.url, token="")
    scenario = shapes_scenario("output", train_size=60, val_size=0, test_size=0, seed=1)
    client.post_samples(scenario.train.x, scenario.train.y, context=CONTEXT, device_id="cam-2")
    hint = client.post_drift("output", context=CONTEXT)
    assert hint["status"] == "scheduled", hint
    return int(hint["job"]["id"])


@pytest.fixture(scope="module")
def finished_job(daemon: Daemon, started_job: int) -> dict:
    job = TbftdClient(daemon.url, token="").wait_for_job(started_job, timeout_seconds=240)
    assert job["state"] == "succeeded", job
    return job


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``tbftd ARGV`` in this process: (exit status, stdout, stderr)."""
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def table_row(text: str, first_cell: str) -> list[str]:
    """The cells (split on runs of 2+ spaces) of the table row that starts with ``first_cell``."""
    for line in text.splitlines():
        cells = [c for c in line.strip().split("  ") if c]
        if cells and cells[0].strip() == first_cell:
            return [c.strip() for c in cells]
    raise AssertionError(f"no row {first_cell!r} in:\n{text}")


@pytest.mark.slow
def test_jobs_wait_follows_a_job_with_a_progress_bar_until_it_ends(
    daemon: Daemon, started_job: int, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(capsys, "jobs", "--url", daemon.url, "--wait", str(started_job))
    assert status == 0, err
    assert out.startswith(f"job {started_job} succeeded: fc on {CONTEXT}")
    assert "J (UM25C@" in out and "promoted to version 2" in out
    assert f"job {started_job} fc succeeded" in err  # stderr is no terminal here: one line per change
    status, out, _ = run(capsys, "jobs", "wait", str(started_job), "--url", daemon.url, "--json")
    assert status == 0 and json.loads(out)["energy"]["source"].startswith("UM25C@")


@pytest.mark.slow
def test_status_shows_the_model_version_and_the_meter(
    daemon: Daemon, finished_job: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(capsys, "status", "--url", daemon.url)
    assert status == 0
    assert table_row(out, "model version")[1] == "1 (default model)"
    assert table_row(out, "context models")[1] == f"{CONTEXT} v2"  # the job adapted its context's model
    assert table_row(out, "meter")[1].startswith("UM25C@")
    assert table_row(out, "meter health")[1] == "ok"
    assert table_row(out, "running job")[1] == "none"
    status, out, _ = run(capsys, "status", "--url", daemon.url, "--json")
    assert json.loads(out)["models"]["contexts"] == {CONTEXT: 2}


@pytest.mark.slow
def test_the_url_comes_from_the_environment(
    daemon: Daemon, finished_job: dict, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TBFTD_URL", daemon.url)
    status, out, _ = run(capsys, "status")
    assert status == 0 and table_row(out, "daemon")[1] == daemon.url


@pytest.mark.slow
def test_jobs_table_shows_the_job_with_its_energy(
    daemon: Daemon, finished_job: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(capsys, "jobs", "--url", daemon.url)
    assert status == 0
    header = out.splitlines()[0]
    assert "seconds (s)" in header and "joules (J)" in header and "energy source" in header
    row = table_row(out, str(finished_job["id"]))
    assert row[1:7] == [CONTEXT, "succeeded", "promoted", "output", "fc", "60"]
    assert row[8] == "1 → 2"
    assert float(row[-2]) == pytest.approx(finished_job["energy"]["joules"], abs=0.05)
    assert row[-1] == finished_job["energy"]["source"]
    status, out, _ = run(capsys, "jobs", "--url", daemon.url, "--state", "failed")
    assert status == 0 and out.strip() == "no jobs"


@pytest.mark.slow
def test_energy_table_and_csv_show_the_job(daemon: Daemon, finished_job: dict, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "energy", "--url", daemon.url)
    assert status == 0
    header = out.splitlines()[0]
    for unit in ("seconds (s)", "joules (J)", "net joules (J)", "mean watts (W)", "peak watts (W)", "energy source"):
        assert unit in header
    row = table_row(out, str(finished_job["id"]))
    assert row[1:5] == [CONTEXT, "output", "fc", "succeeded"]
    assert float(row[7]) > 0
    assert float(row[9]) == pytest.approx(WATTS, abs=0.1)
    assert row[11].startswith("UM25C@")
    assert table_row(out, "total")[1] == "1 job"

    status, out, _ = run(capsys, "energy", "--url", daemon.url, "--csv", "--since", "1h", "--block", "fc")
    assert status == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [int(r["job_id"]) for r in rows] == [finished_job["id"]]
    assert rows[0]["context"] == CONTEXT and rows[0]["block"] == "fc"
    assert float(rows[0]["joules"]) == pytest.approx(finished_job["energy"]["joules"])
    assert rows[0]["source"].startswith("UM25C@")

    status, out, _ = run(capsys, "energy", "--url", daemon.url, "--block", "block1")
    assert status == 0 and out.strip() == "no jobs measured in that range"
    later = datetime.fromtimestamp(time.time() + 3600, UTC).isoformat()
    status, out, _ = run(capsys, "energy", "--url", daemon.url, "--since", later, "--json")
    assert status == 0 and json.loads(out)["jobs"] == []


@pytest.mark.slow
def test_models_lists_versions_and_activate_rolls_back(
    daemon: Daemon, finished_job: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(capsys, "models", "--url", daemon.url, "--context", CONTEXT)
    assert status == 0 and out.splitlines()[0] == f"context {CONTEXT}: served version 2"
    assert table_row(out, "2")[1:4] == ["*", CONTEXT, "1"]
    assert table_row(out, "1")[1] == "base"  # not served to this context, and it is the base
    _, out, _ = run(capsys, "models", "--url", daemon.url)  # the default context has only the base
    assert out.splitlines()[0] == "context default: served version 1 (the default model)"
    assert table_row(out, "1")[1] == "*" and not any(line.split()[:1] == ["2"] for line in out.splitlines())
    try:
        status, out, _ = run(capsys, "models", "activate", "1", "--url", daemon.url, "--context", CONTEXT)
        assert status == 0 and out.strip() == f"context {CONTEXT}: serving version 1 (was 2)"
        _, out, _ = run(capsys, "status", "--url", daemon.url)
        assert table_row(out, "context models")[1] == f"{CONTEXT} v1"
        _, out, _ = run(capsys, "models", "--url", daemon.url, "--context", CONTEXT)
        assert table_row(out, "1")[1] == "*"
        status, _, err = run(capsys, "models", "--url", daemon.url, "activate", "99")
        assert status == 2 and err == f"tbftd: error: the daemon at {daemon.url} answered 404: no model version 99\n"
    finally:
        assert main(["models", "activate", "2", "--url", daemon.url, "--context", CONTEXT]) == 0


def test_no_daemon_is_one_line_and_exit_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for command in (["status"], ["jobs"], ["energy", "--csv"], ["models"], ["models", "activate", "1"], ["jobs", "wait", "1"]):
        started = time.monotonic()
        status, out, err = run(capsys, *command, "--url", url)
        assert status == 2 and out == ""
        assert err == f"tbftd: error: no daemon at {url}: connection refused (start one with `tbftd serve`, or give --url)\n"
        if command[-2:] != ["wait", "1"]:
            assert time.monotonic() - started < 1.0  # one-shot commands do not retry


def test_no_daemon_as_a_process_prints_no_traceback() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run([*tbftd_command(), "status", "--url", url], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"tbftd: error: no daemon at {url}: connection refused (start one with `tbftd serve`, or give --url)"
    ]


@pytest.mark.parametrize(
    ("text", "seconds_ago"),
    [("90s", 90), ("30m", 1800), ("1h", 3600), ("2d", 172800), ("1w", 604800), ("1.5h", 5400)],
)
def test_since_takes_a_time_ago(text: str, seconds_ago: float) -> None:
    assert time_bound(text) == pytest.approx(time.time() - seconds_ago, abs=2)


def test_since_takes_epoch_seconds_and_iso_8601_with_a_zone() -> None:
    assert time_bound("1700000000") == 1700000000.0
    assert time_bound("1700000000.5") == 1700000000.5
    assert time_bound("2024-05-01T12:00:00Z") == datetime(2024, 5, 1, 12, tzinfo=UTC).timestamp()
    assert time_bound("2024-05-01T14:00:00+02:00") == datetime(2024, 5, 1, 12, tzinfo=UTC).timestamp()
    with pytest.raises(argparse.ArgumentTypeError, match="time zone"):
        time_bound("2024-05-01T12:00:00")
    with pytest.raises(argparse.ArgumentTypeError, match="epoch seconds, ISO 8601"):
        time_bound("yesterday")


def test_a_bad_since_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["energy", "--since", "last week"])
    assert exited.value.code == 2
    assert "--since: expected epoch seconds" in capsys.readouterr().err
