"""End to end: ``tbftd serve`` as a real process, the emulated UM25C on a pseudo-terminal, and a
device posting drifted samples and a drift hint over HTTP."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from drift.scenarios import shapes_scenario
from drift.suite import shapes_source
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
            params = {**test_params, "context": "site-a"}  # site-a's own model, once it has one
            reply = client.post("/v1/predict", content=test_body, params=params, headers=headers).json()
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


def test_an_auto_hint_detects_input_drift_and_tries_the_cheapest_strategy_first(
    tmp_path: Path, um25c_meter: Emulator
) -> None:
    noisy = shapes_scenario("input", train_size=300, val_size=0, test_size=300, seed=4,
                            corruption="gaussian_noise", severity=5)
    clean = shapes_source(300, seed=4)
    daemon = Daemon(tmp_path / "data", um25c_meter.port, "--min-samples", "300", "--epochs", "2")
    headers = {"content-type": "application/octet-stream"}
    try:
        client = daemon.client

        def post(context: str, x: np.ndarray, y: np.ndarray) -> dict:
            for start in range(0, len(y), 100):
                body, params = encode_raw_batch(x[start : start + 100])
                params = {**params, "labels": ",".join(map(str, y[start : start + 100])), "context": context}
                reply = client.post("/v1/samples", content=body, params=params, headers=headers)
                assert reply.status_code == 201, reply.text
            hint = client.post("/v1/drift", json={"type": "auto", "context": context}).json()
            assert hint["status"] == "scheduled", hint
            return wait(hint["job"]["id"])

        def wait(job_id: int) -> dict:
            deadline = time.monotonic() + 300
            while (job := client.get(f"/v1/jobs/{job_id}").json())["state"] in ("queued", "running"):
                assert time.monotonic() < deadline, job
                time.sleep(0.5)
            return job

        def accuracy() -> float:
            body, params = encode_raw_batch(noisy.test.x, context="site-noisy")
            reply = client.post("/v1/predict", content=body, params=params, headers=headers).json()
            return float(np.mean(np.array(reply["classes"]) == noisy.test.y))

        # Samples like the source: the detector says so and nothing is trained.
        job = post("site-clean", clean.x, clean.y)
        assert job["state"] == "succeeded" and job["drift_type"] == "none", job["decision"]
        assert job["decision"]["outcome"] == "nothing to adapt", job["decision"]
        listed = client.get("/v1/jobs", params={"context": "site-clean"}).json()["jobs"]
        assert listed[0]["decision"]["outcome"] == "nothing to adapt" and listed[0]["energy"]["joules"] > 0
        assert job["decision"]["strategies"] == [] and job["model_version_out"] is None
        assert job["energy"]["source"].startswith("UM25C@")

        before = accuracy()
        job = post("site-noisy", noisy.train.x, noisy.train.y)
        assert job["state"] == "succeeded", job
        decision = job["decision"]
        assert job["drift_type"] == decision["detected"] == "input", decision
        steps = decision["strategies"]
        assert steps[0]["strategy"] == "bn" and steps[0]["joules"] > 0
        assert [s["strategy"] for s in steps] in (["bn"], ["bn", "block1"])
        if len(steps) == 2:  # escalated only because bn fell short of the target
            assert steps[0]["accuracy_after"] < decision["target_accuracy"]
            assert steps[1]["joules"] > steps[0]["joules"]
        assert job["energy"]["source"].startswith("UM25C@")
        assert job["energy"]["joules"] >= decision["detection_joules"] + sum(s["joules"] for s in steps) * 0.9
        assert job["model_version_out"] == 2
        assert accuracy() > before + 0.2
    finally:
        assert daemon.stop() == 0, daemon.stderr_path.read_text()[-2000:]
