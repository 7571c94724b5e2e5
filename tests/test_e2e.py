"""End to end: ``tbftd serve`` as a real process, the emulated UM25C on a pseudo-terminal, and a
device posting drifted samples and a drift hint over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from drift.scenarios import shapes_scenario
from energy.emulator import Emulator
from energy.profiles import ConstantProfile
from service.payloads import encode_raw_batch

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tbftd_command() -> list[str]:
    return [sys.executable, "-m", "service.cli"]


class Daemon:
    """A running ``tbftd serve`` process and an HTTP client for it."""

    def __init__(self, data_dir: Path, meter_port: str, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stderr_path = data_dir.parent / "daemon.stderr"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TBFTD_")}
        self.process = subprocess.Popen(
            [*tbftd_command(), "serve", "--port", str(self.port), "--data-dir", str(data_dir),
             "--meter-port", meter_port, "--meter-kind", "um25c", "--baseline-seconds", "1", *extra],
            stdout=subprocess.DEVNULL,
            stderr=self.stderr_path.open("wb"),
            env=env,
        )
        self.client = httpx.Client(base_url=self.url, timeout=30.0)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited: {self.stderr_path.read_text()[-2000:]}")
            try:
                if self.client.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError("daemon did not become ready in 60 s")

    def stop(self) -> int:
        self.client.close()
        self.process.terminate()
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


@pytest.fixture
def meter() -> Iterator[Emulator]:
    emulator = Emulator(model="um25c", profile=ConstantProfile(4.5))
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


def test_a_device_posts_drifted_samples_and_a_hint_and_the_daemon_adapts(tmp_path: Path, meter: Emulator) -> None:
    scenario = shapes_scenario("output", train_size=600, val_size=0, test_size=300, seed=3)
    daemon = Daemon(tmp_path / "data", meter.port, "--min-samples", "600", "--epochs", "10")
    try:
        client = daemon.client
        test_body, test_params = encode_raw_batch(scenario.test.x)
        headers = {"content-type": "application/octet-stream"}

        def accuracy() -> tuple[float, int]:
            reply = client.post("/v1/predict", content=test_body, params=test_params, headers=headers).json()
            return float(np.mean(np.array(reply["classes"]) == scenario.test.y)), reply["model_version"]

        accuracy_before, version_before = accuracy()
        hint = client.post("/v1/drift", json={"type": "output", "context": "site-a"}).json()
        assert hint["status"] == "waiting for samples"
        for start in range(0, 600, 64):
            x, y = scenario.train.x[start : start + 64], scenario.train.y[start : start + 64]
            body, params = encode_raw_batch(x)
            params = {**params, "labels": ",".join(map(str, y)), "context": "site-a", "device_id": "cam-3"}
            reply = client.post("/v1/samples", content=body, params=params, headers=headers)
            assert reply.status_code == 201, reply.text
        job_id = reply.json()["job"]["id"]

        deadline = time.monotonic() + 240
        while (job := client.get(f"/v1/jobs/{job_id}").json())["state"] in ("queued", "running"):
            assert time.monotonic() < deadline, job
            time.sleep(0.5)
        assert job["state"] == "succeeded", job
        assert job["block"] == "fc"
        energy = job["energy"]
        assert energy["joules"] > 0 and energy["source"].startswith("UM25C@")
        assert energy["mean_watts"] == pytest.approx(4.5, abs=0.1)
        assert energy["counter_joules"] is not None

        accuracy_after, version_after = accuracy()
        assert version_after == version_before + 1
        assert accuracy_after > accuracy_before + 0.3, (accuracy_before, accuracy_after)
        log = client.get("/v1/energy", params={"context": "site-a"}).json()["jobs"]
        assert [row["job_id"] for row in log] == [job_id]
    finally:
        assert daemon.stop() == 0, daemon.stderr_path.read_text()[-2000:]
