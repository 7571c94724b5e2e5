"""Stopping the daemon as systemd does: SIGTERM to a real ``tbftd serve`` process while a job trains
and a device keeps posting samples; then a restart on the same data."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from energy.emulator import Emulator
from energy.profiles import ConstantProfile
from service.payloads import encode_json_batch, encode_raw_batch
from tests.factories import colour_samples
from tests.test_systemd_notify import DaemonProcess, NotifySocket, make_base_model

pytestmark = pytest.mark.slow

UNIT = Path(__file__).resolve().parents[1] / "deploy" / "tbftd.service"
WATTS = 4.5
JOB_SAMPLES = 480


def stop_timeout_seconds() -> float:
    """``TimeoutStopSec`` of the shipped unit: the time systemd gives a stop before SIGKILL."""
    match = re.search(r"^TimeoutStopSec=(\d+)s?$", UNIT.read_text(), re.MULTILINE)
    assert match, "the unit sets TimeoutStopSec"
    return float(match.group(1))


@pytest.fixture
def meter() -> Iterator[Emulator]:
    emulator = Emulator(model="um25c", profile=ConstantProfile(WATTS))
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_base_model(tmp_path_factory.mktemp("base") / "base.pt")


def daemon_args(meter: Emulator) -> list[str]:
    return ["--meter-port", meter.port, "--meter-kind", "um25c", "--baseline-seconds", "1",
            "--epochs", "60", "--batch-size", "16", "--trainer-grace-seconds", "20"]


def sample_body(count: int, seed: int) -> dict[str, Any]:
    samples = colour_samples(count, seed)
    return encode_json_batch(samples.x.numpy(), samples.y.numpy(), context="cam-1", device_id="dev-1")


class Poster(threading.Thread):
    """A device posting batches of samples until the daemon stops answering; records what was
    acknowledged (201) as sample ids."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.acknowledged: list[int] = []
        self.refused: list[int] = []
        self.stop_posting = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30.0) as client:
            seed = 100
            while not self.stop_posting.is_set():
                seed += 1
                try:
                    reply = client.post("/v1/samples", json=sample_body(8, seed))
                except httpx.TransportError:
                    return  # the daemon has closed its listener
                if reply.status_code == 201:
                    data = reply.json()
                    self.acknowledged.extend(range(data["first_id"], data["last_id"] + 1))
                else:
                    self.refused.append(reply.status_code)


def start_training_job(daemon: DaemonProcess) -> int:
    """A whole-model job on 480 samples: epochs of 24 batches, so that even if early stopping
    ended it at the earliest (six epochs) it would still be running when the test stops it."""
    samples = colour_samples(JOB_SAMPLES, seed=1)
    body, params = encode_raw_batch(samples.x.numpy())
    params = {**params, "labels": ",".join(map(str, samples.y.tolist())), "context": "cam-1"}
    reply = daemon.client.post("/v1/samples", content=body, params=params,
                               headers={"content-type": "application/octet-stream"})
    assert reply.status_code == 201, reply.text
    job = daemon.client.post("/v1/jobs", json={"context": "cam-1", "block": "full"})
    assert job.status_code == 201, job.text
    job_id = int(job.json()["id"])
    deadline = time.monotonic() + 120
    while True:
        state = daemon.client.get(f"/v1/jobs/{job_id}").json()
        if state["state"] == "running" and (state.get("progress") or {}).get("phase") == "train":
            return job_id
        assert state["state"] in ("queued", "running"), state
        assert time.monotonic() < deadline, state
        time.sleep(0.2)


def trainer_children(pid: int) -> list[psutil.Process]:
    return [child for child in psutil.Process(pid).children(recursive=True)
            if "spawn_main" in " ".join(child.cmdline())]


@contextlib.contextmanager
def open_database(data_dir: Path) -> Iterator[sqlite3.Connection]:
    """The daemon's database, read-only, closed afterwards."""
    with contextlib.closing(sqlite3.connect(f"file:{data_dir / 'tbftd.sqlite3'}?mode=ro", uri=True)) as db:
        yield db


def test_sigterm_during_a_job_cancels_it_with_energy_and_loses_no_acknowledged_sample(
    tmp_path: Path, meter: Emulator, base_model: Path
) -> None:
    data_dir = tmp_path / "data"
    listener = NotifySocket.abstract()
    daemon = DaemonProcess(data_dir, base_model, daemon_args(meter),
                           env={"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "10000000"})
    poster = Poster(daemon.url)
    try:
        daemon.wait_healthy()
        job_id = start_training_job(daemon)

        # No child (the trainer, multiprocessing's resource tracker) inherited systemd's variables:
        # /proc/PID/environ is the environment a process was started with.
        assert len(trainer_children(daemon.pid)) == 1
        for child in psutil.Process(daemon.pid).children(recursive=True):
            assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(child.environ()), child.cmdline()
        listener.wait_for(lambda line: line.startswith(f"STATUS=training job {job_id} (full), epoch ")
                          and line.endswith(" W"), 30, "a training status with watts")

        poster.start()
        while len(poster.acknowledged) < 24:  # the device is mid-stream when systemd stops us
            assert poster.is_alive()
            time.sleep(0.05)
        sent_at = time.monotonic()
        daemon.signal(signal.SIGTERM)
        status = daemon.wait(stop_timeout_seconds())
        stop_seconds = time.monotonic() - sent_at
        poster.join(30)
        assert status == 0, daemon.stderr()
        assert stop_seconds < stop_timeout_seconds() / 2, stop_seconds  # well within TimeoutStopSec
        assert not poster.is_alive()
        assert set(poster.refused) <= {409, 503}, poster.refused
        stderr = daemon.stderr()
        assert "<3>" not in stderr, stderr
        assert "STOPPING=1" in listener.lines()
        assert f"STATUS=stopping: job {job_id} stops at its next batch" in listener.lines()
    finally:
        poster.stop_posting.set()
        daemon.close()
        listener.close()

    with open_database(data_dir) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        state, error = db.execute("SELECT state, error FROM jobs WHERE id = ?", (job_id,)).fetchone()
        assert state == "cancelled", error
        joules, seconds, source = db.execute(
            "SELECT joules, seconds, source FROM energy WHERE job_id = ?", (job_id,)).fetchone()
        stored = {row[0] for row in db.execute("SELECT id FROM samples")}
    assert joules > 0 and seconds > 0 and source.startswith("UM25C@"), (joules, seconds, source)
    assert joules == pytest.approx(WATTS * seconds, rel=0.25)
    assert set(poster.acknowledged) <= stored
    assert len(stored) >= JOB_SAMPLES + len(poster.acknowledged)  # a request cut off unanswered may have landed too

    restarted = DaemonProcess(data_dir, base_model, daemon_args(meter))
    try:
        restarted.wait_healthy()
        job = restarted.client.get(f"/v1/jobs/{job_id}").json()
        assert job["state"] == "cancelled" and job["energy"]["joules"] == pytest.approx(joules)
        assert restarted.client.get("/v1/status").json()["buffer"]["samples"] == len(stored)
        restarted.signal(signal.SIGTERM)
        assert restarted.wait(stop_timeout_seconds()) == 0, restarted.stderr()
    finally:
        restarted.close()
    with open_database(data_dir) as db:
        assert {row[0] for row in db.execute("SELECT id FROM samples")} == stored


def hold_a_request_open(port: int) -> socket.socket:
    """A slow device: a chunked upload that never ends, so a graceful stop waits for it."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /v1/samples HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n")
    return sock


def test_a_second_sigterm_escalates(tmp_path: Path, meter: Emulator, base_model: Path) -> None:
    """A hung trainer and a request that never ends hold the first stop for minutes; the second
    signal ends both at once, and the job and the database are still recorded properly."""
    data_dir = tmp_path / "data"
    patient = ["--graceful-timeout-seconds", "120", "--trainer-grace-seconds", "120"]
    daemon = DaemonProcess(data_dir, base_model, [*daemon_args(meter), *patient])
    slow_client = None
    try:
        daemon.wait_healthy()
        job_id = start_training_job(daemon)
        (trainer,) = trainer_children(daemon.pid)
        trainer.suspend()  # SIGSTOP: it will not see the stop event
        slow_client = hold_a_request_open(daemon.port)
        time.sleep(0.5)
        daemon.signal(signal.SIGTERM)
        time.sleep(3.0)
        assert daemon.process.poll() is None, "the first signal waits for the request and the trainer"
        sent_at = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0, daemon.stderr()
        assert time.monotonic() - sent_at < 30  # not the 120 s they were granted
        assert not trainer.is_running()
        assert "received SIGTERM again" in daemon.stderr()
    finally:
        if slow_client is not None:
            slow_client.close()
        daemon.close()
    with open_database(data_dir) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        state, error = db.execute("SELECT state, error FROM jobs WHERE id = ?", (job_id,)).fetchone()
        assert (state, error) == ("cancelled", "the trainer was terminated: the daemon was told twice to stop")
        assert db.execute("SELECT joules FROM energy WHERE job_id = ?", (job_id,)).fetchone()[0] > 0
