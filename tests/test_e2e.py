"""End to end: ``tbftd serve`` as a real process, the emulated UM25C on a pseudo-terminal, and a
device posting drifted samples and a drift hint over HTTP."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from drift.scenarios import shapes_scenario
from energy.emulator import Emulator
from service.payloads import encode_raw_batch
from tests.running_daemon import Daemon

pytestmark = pytest.mark.slow


def test_a_device_posts_drifted_samples_and_a_hint_and_the_daemon_adapts(tmp_path: Path, um25c_meter: Emulator) -> None:
    scenario = shapes_scenario("output", train_size=600, val_size=0, test_size=300, seed=3)
    daemon = Daemon(tmp_path / "data", um25c_meter.port, "--min-samples", "600", "--epochs", "10")
    try:
        client = daemon.client
        test_body, test_params = encode_raw_batch(scenario.test.x)
        headers = {"content-type": "application/octet-stream"}

        def accuracy() -> tuple[float, int]:
            reply = client.post("/v1/predict", content=test_body, params=test_params, headers=headers).json()
            return float(np.mean(np.array(reply["classes"]) == scenario.test.y)), reply["model_version"]

        accuracy_before, version_before = accuracy()
        # The API process serves with numpy: torch's 200 MB belong to the trainer child alone.
        maps = Path(f"/proc/{daemon.process.pid}/maps").read_text()
        assert "libtorch" not in maps
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
