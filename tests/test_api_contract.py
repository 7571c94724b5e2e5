"""What an integrator relies on, through the real app: idempotent POSTs, fair buffers that name
their quota, hints that expire, and answers that agree with each other."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from device.checkpoint import save_checkpoint
from device.model import ModelConfig, ResNet26
from service.app import create_app
from service.payloads import encode_json_batch, encode_raw_batch
from service.settings import load_settings
from tests.factories import colour_samples


@pytest.fixture(scope="module")
def base_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("base") / "base.pt", ResNet26(ModelConfig(num_classes=4)))


def open_client(tmp_path: Path, base_model_path: Path, **overrides: Any) -> TestClient:
    values = {"data_dir": tmp_path / "data", "base_model": base_model_path, "meter_kind": "estimate",
              "baseline_seconds": 0, "epochs": 1, "min_samples": 20, "trainer_threads": 1, **overrides}
    return TestClient(create_app(load_settings(env={}, overrides=values)))


@pytest.fixture
def client(tmp_path: Path, base_model_path: Path) -> Iterator[TestClient]:
    with open_client(tmp_path, base_model_path) as test_client:
        yield test_client


def samples_body(count: int, seed: int, context: str = "cam-1", device_id: str | None = "dev-1") -> dict[str, Any]:
    samples = colour_samples(count, seed)
    return encode_json_batch(samples.x.numpy(), samples.y.numpy(), context=context, device_id=device_id)


# -- idempotency ------------------------------------------------------------------------------------


def test_a_retried_batch_is_stored_once(client: TestClient) -> None:
    body = samples_body(8, 1)
    first = client.post("/v1/samples", json=body, headers={"Idempotency-Key": "batch-0001"})
    retry = client.post("/v1/samples", json=body, headers={"Idempotency-Key": "batch-0001"})

    assert first.status_code == retry.status_code == 201
    assert retry.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert retry.json()["replayed"] is True and first.json()["replayed"] is False
    assert retry.json()["first_id"] == first.json()["first_id"] and retry.json()["accepted"] == 8
    assert client.get("/v1/status").json()["buffer"]["samples"] == 8
    # The raw form too: the key covers the query and the body.
    data, params = encode_raw_batch(colour_samples(4, 2).x.numpy(), [0, 1, 2, 3], context="cam-1")
    for _ in range(3):
        reply = client.post("/v1/samples", content=data, params=params,
                            headers={"content-type": "application/octet-stream", "Idempotency-Key": "raw-1"})
        assert reply.status_code == 201, reply.text
    assert client.get("/v1/status").json()["buffer"]["samples"] == 12


def test_a_key_reused_for_another_request_is_a_422(client: TestClient) -> None:
    assert client.post("/v1/samples", json=samples_body(4, 1), headers={"Idempotency-Key": "k"}).status_code == 201
    reply = client.post("/v1/samples", json=samples_body(4, 2), headers={"Idempotency-Key": "k"})
    assert reply.status_code == 422 and reply.json()["field"] == "Idempotency-Key"
    assert "different request" in reply.json()["error"]
    bad = client.post("/v1/samples", json=samples_body(4, 2), headers={"Idempotency-Key": "x" * 300})
    assert bad.status_code == 422 and bad.json()["field"] == "Idempotency-Key"
    assert client.get("/v1/status").json()["buffer"]["samples"] == 4


def test_a_retried_hint_and_job_are_answered_not_repeated(client: TestClient) -> None:
    client.post("/v1/samples", json=samples_body(30, 1))
    hint = {"type": "output", "context": "cam-1", "min_samples": 1000}
    first = client.post("/v1/drift", json=hint, headers={"Idempotency-Key": "hint-1"})
    again = client.post("/v1/drift", json=hint, headers={"Idempotency-Key": "hint-1"})
    assert first.status_code == again.status_code == 202 and again.json() == first.json()
    assert len(client.get("/v1/drift", params={"context": "cam-1"}).json()["hints"]) == 1

    job = {"context": "cam-1", "block": "fc"}
    first = client.post("/v1/jobs", json=job, headers={"Idempotency-Key": "job-1"})
    again = client.post("/v1/jobs", json=job, headers={"Idempotency-Key": "job-1"})
    # Without the key the retry would be a 409: the first attempt's job is pending.
    assert first.status_code == again.status_code == 201 and again.json()["id"] == first.json()["id"]
    assert client.post("/v1/jobs", json=job).status_code == 409


# -- fair buffers -----------------------------------------------------------------------------------


def test_a_chatty_device_gets_429_naming_its_quota_and_others_keep_posting(tmp_path: Path, base_model_path: Path) -> None:
    with open_client(tmp_path, base_model_path, max_device_samples=20, max_context_samples=30) as client:
        assert client.post("/v1/samples", json=samples_body(16, 1, "cam-1", "chatty")).status_code == 201
        reply = client.post("/v1/samples", json=samples_body(8, 2, "cam-1", "chatty"))
        assert reply.status_code == 429, reply.text
        error = reply.json()
        assert (error["field"], error["quota"], error["limit"], error["held"]) == ("device_id", "max_device_samples", 20, 16)
        assert "max_device_samples" in error["error"]
        # Another device of the same context is not held back; the context keeps its newest 30.
        reply = client.post("/v1/samples", json=samples_body(20, 3, "cam-1", "quiet"))
        assert reply.status_code == 201
        answer = reply.json()
        assert answer["evicted"] == 6 and answer["evicted_contexts"] == {"cam-1": 6}
        assert answer["evictions"] == [{"context": "cam-1", "samples": 6, "consumed": 0, "bytes": 6 * 3 * 32 * 32,
                                        "reason": "context quota: context 'cam-1' over max_context_samples 30"}]
        status = client.get("/v1/status").json()["buffer"]
        assert status["max_device_samples"] == 20 and status["max_context_samples"] == 30


def test_a_full_buffer_takes_from_the_largest_context_and_says_so(tmp_path: Path, base_model_path: Path) -> None:
    with open_client(tmp_path, base_model_path, max_buffer_samples=60, max_device_samples=None) as client:
        client.post("/v1/samples", json=samples_body(10, 1, "quiet"))
        client.post("/v1/samples", json=samples_body(40, 2, "chatty"))
        reply = client.post("/v1/samples", json=samples_body(20, 3, "chatty")).json()
        assert reply["evicted_contexts"] == {"chatty": 10}
        assert reply["evictions"][0]["reason"].startswith("buffer full (max_buffer_samples 60, ")
        assert client.get("/v1/status").json()["buffer"]["samples"] == 60
        jobs_quiet = client.post("/v1/jobs", json={"context": "quiet", "block": "fc"})
        assert jobs_quiet.status_code == 409 and "holds 10 samples" in jobs_quiet.json()["error"]  # all still there


# -- hints ------------------------------------------------------------------------------------------


def test_a_hint_that_starts_a_job_names_it(client: TestClient) -> None:
    client.post("/v1/samples", json=samples_body(30, 1))
    reply = client.post("/v1/drift", json={"type": "output", "context": "cam-1"}).json()
    assert reply["status"] == "scheduled" and reply["job"]["id"] == reply["hint"]["job_id"]
    assert reply["hint"]["state"] == "scheduled" and reply["expires_at"] is None
    merged = client.post("/v1/drift", json={"type": "input", "context": "cam-1"}).json()
    if merged["status"] == "merged":  # the job may already have finished on a fast machine
        assert merged["hint"]["job_id"] == merged["job"]["id"] == reply["job"]["id"]


def test_a_waiting_hint_expires_and_says_so(tmp_path: Path, base_model_path: Path) -> None:
    with open_client(tmp_path, base_model_path, hint_expiry_seconds=1) as client:
        reply = client.post("/v1/drift", json={"type": "input", "context": "empty"}).json()
        assert reply["status"] == "waiting for samples" and reply["hint"]["state"] == "waiting"
        assert reply["expires_at"] == pytest.approx(reply["hint"]["created_at"] + 1)
        deadline = time.monotonic() + 30  # the job worker sweeps every few seconds
        while (hints := client.get("/v1/drift", params={"context": "empty"}).json()["hints"])[0]["state"] == "waiting":
            assert time.monotonic() < deadline, hints
            time.sleep(0.2)
        assert hints[0]["state"] == "expired" and hints[0]["expired_at"] is not None
        # Samples arriving after it no longer start a job for it.
        reply = client.post("/v1/samples", json=samples_body(30, 1, "empty")).json()
        assert reply["job"] is None
        assert client.get("/v1/drift", params={"state": "expired"}).json()["hints"][0]["id"] == hints[0]["id"]


# -- answers that agree -----------------------------------------------------------------------------


def test_the_job_list_carries_energy_like_a_single_job(client: TestClient) -> None:
    client.post("/v1/samples", json=samples_body(30, 1))
    job = client.post("/v1/jobs", json={"context": "cam-1", "block": "fc"}).json()
    deadline = time.monotonic() + 180
    while (one := client.get(f"/v1/jobs/{job['id']}").json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    listed = client.get("/v1/jobs").json()["jobs"][0]
    assert listed["energy"] == one["energy"] and listed["energy"]["joules"] > 0
    assert listed["decision"]["outcome"] in ("promoted", "kept the model")


def test_a_wrong_drift_type_names_the_field(client: TestClient) -> None:
    reply = client.post("/v1/drift", json={"type": "sideways", "context": "cam-1"})
    assert reply.status_code == 422 and reply.json()["field"] == "type"
    assert "type" in reply.json()["error"]
    reply = client.get("/v1/models", params={"context": "no spaces"})
    assert reply.status_code == 422 and reply.json()["field"] == "context"
