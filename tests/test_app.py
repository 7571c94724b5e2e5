"""The HTTP API against the real app, a real SQLite file and real trainer child processes."""

from __future__ import annotations

import csv
import io
import logging
import multiprocessing
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from device.checkpoint import load_checkpoint, save_checkpoint
from device.inference import predict
from device.model import ModelConfig, ResNet26
from device.weights_delta import load_delta
from service.app import create_app
from service.model_registry import ModelFileError
from service.payloads import encode_json_batch, encode_npy_batch, encode_raw_batch
from service.settings import Settings, load_settings
from service.store import Store
from tests.factories import colour_samples

TERMINAL = {"succeeded", "failed", "cancelled", "interrupted"}


@pytest.fixture(scope="module")
def base_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small untrained 4-class base model: fast to fine-tune, and anything learnt shows."""
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("base") / "base.pt", ResNet26(ModelConfig(num_classes=4)))


def make_settings(tmp_path: Path, base_model_path: Path, **overrides: Any) -> Settings:
    values = {
        "data_dir": tmp_path / "data",
        "base_model": base_model_path,
        "meter_kind": "estimate",
        "baseline_seconds": 0,
        "epochs": 3,
        "batch_size": 32,
        "min_samples": 40,
        "trainer_threads": 1,
        **overrides,
    }
    return load_settings(env={}, overrides=values)


@pytest.fixture
def client(tmp_path: Path, base_model_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(tmp_path, base_model_path))) as test_client:
        yield test_client


def post_colour_samples(client: TestClient, count: int, seed: int, context: str = "cam-1") -> dict[str, Any]:
    samples = colour_samples(count, seed)
    body = encode_json_batch(samples.x.numpy(), samples.y.numpy(), context=context, device_id="dev-7")
    response = client.post("/v1/samples", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def wait_for_job(client: TestClient, job_id: int, timeout_seconds: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in TERMINAL:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish: {job}")


# -- ingest -------------------------------------------------------------------------------------------


def test_samples_in_every_format_are_stored_exactly(client: TestClient, tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    labels = [0, 1, 3]
    assert client.post("/v1/samples", json=encode_json_batch(x, labels, context="a")).status_code == 201
    raw, params = encode_raw_batch(x)
    response = client.post("/v1/samples", content=raw, params={**params, "labels": "0,1,3", "context": "b"},
                           headers={"content-type": "application/octet-stream"})
    assert response.status_code == 201, response.text
    response = client.post("/v1/samples?labels=0,1,3&context=c", content=encode_npy_batch(x),
                           headers={"content-type": "application/x-npy"})
    assert response.status_code == 201, response.text
    nested = {"samples": (x[:1].astype(np.float32) / 255).tolist(), "labels": [2], "context": "d"}
    assert client.post("/v1/samples", json=nested).status_code == 201

    store = Store.open(tmp_path / "data" / "tbftd.sqlite3")
    try:
        for context in "abc":
            stored, stored_labels, _ = store.load_samples(context)
            assert np.array_equal(stored, x) and stored.dtype == np.uint8
            assert stored_labels.tolist() == labels
        stored, _, _ = store.load_samples("d")
        assert stored.dtype == np.float32 and np.allclose(stored[0] * 255, x[0], atol=1e-3)
    finally:
        store.close()


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"dtype": "uint8", "shape": [1, 3, 28, 28], "data": "AAAA", "labels": [0]}, 422, "does not match the model input"),
        ({"samples": [[[[0.5] * 32] * 32] * 3], "labels": [7]}, 422, "out of range"),
        ({"samples": [[[[float("nan")] * 32] * 32] * 3], "labels": [1]}, 422, "finite"),
        ({"dtype": "int16", "shape": [1, 3, 32, 32], "data": "AAAA", "labels": [0]}, 422, "dtype"),
        ({"dtype": "uint8", "shape": [1, 3, 32, 32], "data": "!!!", "labels": [0]}, 422, "base64"),
        ({"samples": [[[[0.5] * 32] * 32] * 3], "labels": [1], "context": "no spaces"}, 422, "context"),
        ({"samples": [[[[0.5] * 32] * 32] * 3], "labels": [1, 2]}, 422, "labels"),
    ],
)
def test_bad_samples_get_a_4xx_that_names_the_problem(client: TestClient, body: dict, status: int, words: str) -> None:
    response = client.post("/v1/samples", content=_json_with_nan(body), headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert words in response.json()["error"]
    assert client.get("/v1/status").json()["buffer"]["samples"] == 0


def _json_with_nan(body: dict) -> bytes:
    import json

    return json.dumps(body).encode()  # json.dumps writes NaN, as a sloppy device would


def test_malformed_bodies_and_unknown_types_are_4xx(client: TestClient) -> None:
    response = client.post("/v1/samples", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "JSON" in response.json()["error"]
    response = client.post("/v1/samples", content=b"x", headers={"content-type": "text/plain"})
    assert response.status_code == 415 and "content type" in response.json()["error"]


def test_batch_size_limit(tmp_path: Path, base_model_path: Path) -> None:
    settings = make_settings(tmp_path, base_model_path, max_batch_samples=4)
    with TestClient(create_app(settings)) as client:
        samples = colour_samples(5, 0)
        response = client.post("/v1/samples", json=encode_json_batch(samples.x.numpy(), samples.y.numpy()))
        assert response.status_code == 422 and "exceeds the limit of 4" in response.json()["error"]


def test_body_cap_with_and_without_content_length(tmp_path: Path, base_model_path: Path) -> None:
    settings = make_settings(tmp_path, base_model_path, max_body_bytes=4096)
    with TestClient(create_app(settings)) as client:
        big = b"\0" * 10_000
        response = client.post("/v1/samples?dtype=uint8&shape=1,3,32,32&labels=0", content=big,
                               headers={"content-type": "application/octet-stream"})
        assert response.status_code == 413 and "4096" in response.json()["error"]

        def chunks() -> Iterator[bytes]:
            for _ in range(10):
                yield b"\0" * 1000

        response = client.post("/v1/samples?dtype=uint8&shape=1,3,32,32&labels=0", content=chunks(),
                               headers={"content-type": "application/octet-stream"})
        assert response.status_code == 413
        assert client.get("/v1/status").json()["buffer"]["samples"] == 0


def test_eviction_is_reported(tmp_path: Path, base_model_path: Path) -> None:
    settings = make_settings(tmp_path, base_model_path, max_buffer_samples=50)
    with TestClient(create_app(settings)) as client:
        post_colour_samples(client, 40, 0, context="old")
        reply = post_colour_samples(client, 30, 1, context="new")
        assert reply["evicted"] == 20 and reply["evicted_contexts"] == {"old": 20}
        assert client.get("/v1/status").json()["buffer"]["samples"] == 50


# -- auth -----------------------------------------------------------------------------------------


def test_token_guards_everything_but_healthz(tmp_path: Path, base_model_path: Path) -> None:
    settings = make_settings(tmp_path, base_model_path, host="0.0.0.0", api_token="s3cret")
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        for path in ("/v1/status", "/metrics", "/v1/jobs", "/openapi.json"):
            response = client.get(path)
            assert response.status_code == 401 and "bearer token" in response.json()["error"], path
        assert client.get("/v1/status", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/v1/status", headers={"authorization": "Bearer s3cret"}).status_code == 200


def test_binding_beyond_loopback_without_a_token_is_refused(tmp_path: Path, base_model_path: Path) -> None:
    with pytest.raises(ValueError, match="api_token"):
        make_settings(tmp_path, base_model_path, host="0.0.0.0")


# -- jobs -------------------------------------------------------------------------------------------


def test_hint_waits_for_samples_then_trains_promotes_and_logs_energy(client: TestClient) -> None:
    reply = client.post("/v1/drift", json={"type": "output", "context": "cam-1"}).json()
    assert reply["status"] == "waiting for samples" and reply["job"] is None
    post_colour_samples(client, 20, 1)
    reply = post_colour_samples(client, 100, 2)
    assert reply["job"] is not None and reply["job"]["block"] == "fc"
    job = wait_for_job(client, reply["job"]["id"])
    assert job["state"] == "succeeded", job
    assert job["drift_type"] == "output" and job["sample_count"] == 120
    assert job["accuracy_after"] > job["accuracy_before"]
    assert job["decision"]["promoted"] is True
    assert job["energy"]["joules"] > 0 and job["energy"]["source"].startswith("estimate")

    models = client.get("/v1/models", params={"context": "cam-1"}).json()
    assert models["active"] == job["model_version_out"] == 2 and models["contexts"] == {"cam-1": 2}
    assert sorted(v["version"] for v in models["versions"]) == [1, 2]
    assert client.get("/v1/models").json()["active"] == 1  # the default context still has the base
    power = client.get(f"/v1/jobs/{job['id']}/power").json()
    assert len(power["points"]) >= 2 and power["units"]["watts"] == "W"

    energy = client.get("/v1/energy").json()
    assert energy["units"]["joules"] == "J" and [r["job_id"] for r in energy["jobs"]] == [job["id"]]
    rows = list(csv.DictReader(io.StringIO(client.get("/v1/energy?format=csv").text)))
    assert rows[0]["block"] == "fc" and float(rows[0]["joules"]) == pytest.approx(job["energy"]["joules"])
    assert client.get("/v1/energy?block=block1").json()["jobs"] == []
    assert client.get("/v1/energy?context=cam-1&since=2000-01-01T00:00:00Z").json()["jobs"]
    assert client.get("/v1/energy?since=yesterday").status_code == 422

    text = client.get("/metrics").text
    assert 'tbftd_jobs{state="succeeded"} 1' in text
    assert 'tbftd_energy_joules_total{block="fc"}' in text and "tbftd_samples_buffered 120" in text


def test_repeated_hints_merge_into_the_pending_job(client: TestClient) -> None:
    post_colour_samples(client, 60, 1)
    first = client.post("/v1/drift", json={"type": "input", "context": "cam-1"}).json()
    second = client.post("/v1/drift", json={"type": "input", "context": "cam-1"}).json()
    assert first["status"] == "scheduled" and second["status"] == "merged"
    assert second["job"]["id"] == first["job"]["id"]
    wait_for_job(client, first["job"]["id"])
    assert len(client.get("/v1/jobs").json()["jobs"]) == 1


def test_explicit_jobs_cancellation_and_conflicts(client: TestClient) -> None:
    assert client.post("/v1/jobs", json={"context": "cam-1", "block": "full"}).status_code == 409  # no samples
    post_colour_samples(client, 200, 1)
    assert client.post("/v1/jobs", json={"context": "cam-1"}).status_code == 422
    assert client.post("/v1/jobs", json={"context": "cam-1", "block": "layer9"}).status_code == 422
    job = client.post("/v1/jobs", json={"context": "cam-1", "block": "full"}).json()
    assert client.post("/v1/jobs", json={"context": "cam-1", "block": "fc"}).status_code == 409
    deadline = time.monotonic() + 60
    while client.get(f"/v1/jobs/{job['id']}").json()["state"] != "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.delete(f"/v1/jobs/{job['id']}").json()["cancel_requested"] is True
    done = wait_for_job(client, job["id"])
    assert done["state"] == "cancelled" and done["energy"]["seconds"] > 0
    assert client.get("/v1/models").json()["active"] == 1
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 409
    assert client.get("/v1/jobs/999").status_code == 404


def test_a_cancelled_trainer_that_does_not_stop_in_time_is_terminated_and_the_job_cancelled(
    tmp_path: Path, base_model_path: Path
) -> None:
    # No grace at all: the trainer is still starting (importing torch) when it is terminated.
    settings = make_settings(tmp_path, base_model_path, trainer_grace_seconds=0)
    with TestClient(create_app(settings)) as client:
        post_colour_samples(client, 100, 1)
        job = client.post("/v1/jobs", json={"context": "cam-1", "block": "full"}).json()
        deadline = time.monotonic() + 60
        while client.get(f"/v1/jobs/{job['id']}").json()["state"] != "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.delete(f"/v1/jobs/{job['id']}").json()["cancel_requested"] is True
        done = wait_for_job(client, job["id"])
        assert done["state"] == "cancelled", done
        assert "did not stop within 0 s" in done["error"] and "terminated" in done["error"]
        assert done["model_version_out"] is None and client.get("/v1/models").json()["active"] == 1
        assert not [p for p in multiprocessing.active_children() if p.name.startswith("tbftd-trainer")]
        # The daemon goes on: the next job runs to the end.
        again = client.post("/v1/jobs", json={"context": "cam-1", "block": "fc"}).json()
        assert wait_for_job(client, again["id"])["state"] == "succeeded"


def test_predict_and_rollback(client: TestClient) -> None:
    samples = colour_samples(8, 5)
    body = encode_json_batch(samples.x.numpy(), None, context="cam-1")
    reply = client.post("/v1/predict", json=body).json()
    assert reply["model_version"] == 1 and len(reply["classes"]) == 8
    assert np.allclose(np.sum(reply["probabilities"], axis=1), 1, atol=1e-4)
    post_colour_samples(client, 100, 1)
    job = client.post("/v1/jobs", json={"context": "cam-1", "block": "fc"}).json()
    assert wait_for_job(client, job["id"])["state"] == "succeeded"
    served = client.post("/v1/predict", json=body).json()
    assert served["model_version"] == 2 and served["context"] == "cam-1"
    other = client.post("/v1/predict", json=encode_json_batch(samples.x.numpy(), None, context="cam-2")).json()
    assert other["model_version"] == 1  # another camera keeps the base
    # The API process serves the trainer's delta on the base; it must predict what torch does.
    versions = {v["version"]: v for v in client.get("/v1/models", params={"context": "cam-1"}).json()["versions"]}
    assert versions[2]["path"].endswith(".delta.npz") and versions[2]["delta_of"] == 1
    model = load_checkpoint(versions[1]["path"]).model
    state = load_delta(versions[2]["path"]).apply({k: v.numpy() for k, v in model.state_dict().items()})
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    expected = predict(model, samples.x.numpy())
    np.testing.assert_allclose(served["probabilities"], expected.probabilities, atol=1e-5)
    rolled = client.post("/v1/models/1/activate", params={"context": "cam-1"}).json()
    assert rolled["version"] == 1 and rolled["context"] == "cam-1"
    assert client.post("/v1/predict", json=body).json()["model_version"] == 1
    assert client.get("/v1/models", params={"context": "cam-1"}).json()["contexts"] == {"cam-1": 1}
    assert client.post("/v1/models/42/activate").status_code == 404


def test_a_bare_state_dict_serves_as_the_base_model_with_its_architecture_read(tmp_path: Path) -> None:
    """The paper's checkpoints are plain state dicts: 17 classes at 128 px for Living17 (here 5 at 64 px)."""
    torch.manual_seed(3)
    network = ResNet26(ModelConfig(num_classes=5, input_size=64)).eval()
    bare = tmp_path / "paper.pth"
    torch.save(network.state_dict(), bare)
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 64, 64), dtype=np.uint8)
    with TestClient(create_app(make_settings(tmp_path, bare))) as client:
        reply = client.post("/v1/predict", json=encode_json_batch(images, None))
        assert reply.status_code == 200, reply.text
        assert np.asarray(reply.json()["probabilities"]).shape == (3, 5)
        expected = predict(network, images)
        np.testing.assert_allclose(reply.json()["probabilities"], expected.probabilities, atol=1e-5)
        wrong = client.post("/v1/predict", json=encode_json_batch(images[:, :, :32, :32], None))
        assert wrong.status_code in (400, 422) and "64" in wrong.text
        base = client.get("/v1/models").json()["versions"][0]
    # Stored self-describing: trainers read the architecture from the file, not from shapes again.
    stored = load_checkpoint(base["path"])
    assert stored.config == network.config and "config_inferred" in stored.extra


def test_a_job_runs_with_its_fine_tuning_profile_and_records_what_it_ran(tmp_path: Path, base_model_path: Path) -> None:
    settings = make_settings(tmp_path, base_model_path, epochs=None, batch_size=None)
    with TestClient(create_app(settings)) as client:
        post_colour_samples(client, 100, 1)
        bad = client.post("/v1/jobs", json={"context": "cam-1", "block": "fc", "profile": "fast"})
        assert bad.status_code == 422 and "profile" in bad.text
        default = client.post("/v1/jobs", json={"context": "cam-1", "block": "block1"}).json()
        default = wait_for_job(client, default["id"])
        paper = client.post("/v1/jobs", json={"context": "cam-1", "block": "block1", "profile": "paper"}).json()
        paper = wait_for_job(client, paper["id"])
    assert default["state"] == paper["state"] == "succeeded"
    assert default["params"]["finetune_profile"] == "tbftd" and paper["params"]["finetune_profile"] == "paper"
    assert default["params"]["finetune"]["batch_size"] == 16 and default["params"]["finetune"]["epochs"] == 3
    assert "batch_size" not in paper["params"]["finetune"] and "epochs" not in paper["params"]["finetune"]
    # What the trainer ran: the short profile stops by its third epoch, the paper's runs up to ten.
    assert default["progress"]["result"]["epochs_run"] <= 3 < paper["progress"]["result"]["epochs_run"]


def test_running_jobs_left_by_a_crash_become_interrupted(tmp_path: Path, base_model_path: Path) -> None:
    settings = make_settings(tmp_path, base_model_path)
    settings.data_dir.mkdir(parents=True)
    store = Store.open(settings.database_path)
    job = store.create_job("cam-1", block="fc", state="running")
    store.close()
    (settings.models_dir).mkdir(parents=True)
    partial = settings.models_dir / ".partial-job-1.pt.abc"
    partial.write_bytes(b"half a model")
    with TestClient(create_app(settings)) as client:
        assert client.get(f"/v1/jobs/{job.id}").json()["state"] == "interrupted"
    assert not partial.exists()


def test_versions_without_weights_files_are_converted_at_start(tmp_path: Path, base_model_path: Path) -> None:
    settings = make_settings(tmp_path, base_model_path)
    samples = colour_samples(6, 9)
    body = encode_json_batch(samples.x.numpy(), None)
    with TestClient(create_app(settings)) as client:
        first = client.post("/v1/predict", json=body).json()
    # A data directory from before weights files existed: only the torch checkpoints.
    weights = list(settings.models_dir.glob("*.npz"))
    assert [w.name for w in weights] == ["base.npz"]
    weights[0].unlink()
    with TestClient(create_app(settings)) as client:
        again = client.post("/v1/predict", json=body).json()
    assert weights[0].exists()
    assert again["classes"] == first["classes"]
    np.testing.assert_allclose(again["probabilities"], first["probabilities"], atol=1e-6)


def test_a_bad_base_model_fails_start_up_by_name(tmp_path: Path, base_model_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match=r"bad\.pt: cannot be served: .*not a loadable PyTorch checkpoint"):
        with TestClient(create_app(make_settings(tmp_path, bad))):
            pass
    store = Store.open(make_settings(tmp_path, bad).database_path)
    try:
        assert store.list_versions() == []  # nothing recorded for a model that cannot be served
    finally:
        store.close()


def test_status_and_openapi(client: TestClient) -> None:
    status = client.get("/v1/status").json()
    assert status["model_version"] == 1 and status["running_job"] is None
    assert status["meter"]["estimate"] is True and status["meter"]["source"].startswith("estimate")
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/samples", "/v1/drift", "/v1/jobs", "/v1/predict", "/v1/energy"} <= set(paths)


# -- auto jobs and energy budgets ---------------------------------------------------------------------


def test_an_auto_job_records_its_detection_and_strategies(client: TestClient) -> None:
    post_colour_samples(client, 80, 1)
    reply = client.post("/v1/drift", json={"type": "auto", "context": "cam-1"}).json()
    assert reply["status"] == "scheduled" and reply["job"]["block"] == "auto"
    job = wait_for_job(client, reply["job"]["id"])
    assert job["state"] == "succeeded", job
    decision = job["decision"]
    # Whatever it found, the job says what, why, and what each strategy cost and gained.
    assert job["drift_type"] == decision["detected"] in ("input", "feature", "output", "none")
    assert 0 <= decision["confidence"] <= 1 and decision["rule"] and job["evidence"]
    assert decision["detection_joules"] > 0
    assert [s["strategy"] for s in decision["strategies"]] == decision["ladder"][: len(decision["strategies"])]
    for step in decision["strategies"]:
        assert step["joules"] > 0 and 0 <= step["accuracy_after"] <= 1
    if decision["kept"]:
        assert job["block"] == decision["kept"][-1] and job["model_version_out"] == 2
    else:
        assert job["block"] is None and job["model_version_out"] is None and decision["promoted"] is False
    assert job["energy"]["drift_type"] == job["drift_type"]


def test_the_job_budget_stops_an_auto_job_before_its_strategies(tmp_path: Path, base_model_path: Path) -> None:
    # The estimator draws watts from the first second on; detection alone spends more than 1 J.
    settings = make_settings(tmp_path, base_model_path, energy_budget_job_joules=1.0)
    with TestClient(create_app(settings)) as client:
        post_colour_samples(client, 80, 1)
        job = client.post("/v1/jobs", json={"context": "cam-1", "drift_type": "auto"}).json()
        job = wait_for_job(client, job["id"])
    assert job["state"] == "succeeded", job
    decision = job["decision"]
    if decision["detected"] == "none":
        pytest.skip("the untrained model saw no drift, so no strategy was due")
    assert decision["stopped_by_budget"] is True and decision["strategies"] == []
    assert decision["budget_joules"] == pytest.approx(1.0)
    assert job["model_version_out"] is None


def test_the_day_budget_stops_jobs_from_starting(tmp_path: Path, base_model_path: Path) -> None:
    settings = make_settings(tmp_path, base_model_path, energy_budget_day_joules=1.0)
    with TestClient(create_app(settings)) as client:
        post_colour_samples(client, 60, 1)
        first = wait_for_job(client, client.post("/v1/jobs", json={"context": "cam-1", "block": "fc"}).json()["id"])
        assert first["state"] == "succeeded" and first["energy"]["joules"] > 1.0
        second = wait_for_job(client, client.post("/v1/jobs", json={"context": "cam-1", "block": "fc"}).json()["id"])
    assert second["state"] == "cancelled"
    assert "energy budget" in second["error"] and "energy_budget_day_joules" in second["error"]
    assert second["energy"] is None  # nothing ran, nothing measured


def test_auto_detect_starts_auto_jobs_on_fresh_samples_only(tmp_path: Path, base_model_path: Path) -> None:
    settings = make_settings(tmp_path, base_model_path, auto_detect=True, min_samples=40)
    with TestClient(create_app(settings)) as client:
        assert post_colour_samples(client, 30, 1)["job"] is None
        job = post_colour_samples(client, 20, 2)["job"]
        assert job is not None and job["block"] == "auto" and job["requested_by"] == "auto_detect"
        assert wait_for_job(client, job["id"])["state"] == "succeeded"
        assert post_colour_samples(client, 30, 3)["job"] is None  # 30 new samples: not yet
        again = post_colour_samples(client, 10, 4)["job"]
        assert again is not None and again["id"] == job["id"] + 1
        wait_for_job(client, again["id"])


# -- errors and the OpenAPI document ------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path, field",
    [
        ("GET", "/v1/jobs/99999999999999999999999", "job_id"),
        ("POST", "/v1/models/99999999999999999999/activate", "version"),
        ("GET", f"/v1/jobs/{2**63}", "job_id"),
        ("DELETE", "/v1/jobs/0", "job_id"),
    ],
)
def test_ids_beyond_what_sqlite_stores_are_422_naming_the_field(
    client: TestClient, method: str, path: str, field: str
) -> None:
    response = client.request(method, path)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == field and field in body["error"] and body["details"]


def test_the_largest_id_sqlite_stores_is_simply_not_found(client: TestClient) -> None:
    assert client.get(f"/v1/jobs/{2**63 - 1}").status_code == 404
    assert client.post(f"/v1/models/{2**63 - 1}/activate").status_code == 404


@pytest.mark.parametrize(
    "method, path, body, status, field",
    [
        ("GET", "/v1/jobs?limit=0", None, 422, "limit"),
        ("GET", "/v1/jobs?limit=100000000000000000000000", None, 422, "limit"),
        ("GET", "/v1/jobs?state=done", None, 422, "state"),
        ("GET", "/v1/energy?since=nan", None, 422, "since"),
        ("GET", "/v1/energy?until=1e999", None, 422, "until"),
        ("GET", "/v1/energy?until=", None, 422, "until"),
        ("POST", "/v1/drift", {"type": "sideways"}, 422, "type"),
        ("POST", "/v1/drift", {"type": "input", "min_samples": 10**30}, 422, "min_samples"),
        ("POST", "/v1/drift", {"type": "input", "colour": "red"}, 422, "colour"),
        ("POST", "/v1/jobs", {"context": "cam-1"}, 422, "block"),
        ("POST", "/v1/drift", b"{not json", 400, "body"),
        ("POST", "/v1/jobs", b"[1,", 400, "body"),
    ],
)
def test_every_4xx_is_json_naming_the_field(
    client: TestClient, method: str, path: str, body: Any, status: int, field: str
) -> None:
    if isinstance(body, bytes):
        response = client.request(method, path, content=body, headers={"content-type": "application/json"})
    else:
        response = client.request(method, path, json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["field"] == field and response.json()["error"]


@pytest.mark.parametrize("token", [None, "s3cret"])
def test_an_unexpected_exception_is_a_json_500_logged_once_with_its_traceback(
    tmp_path: Path, base_model_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    token: str | None,
) -> None:
    overrides = {"api_token": token} if token else {}
    headers = {"authorization": f"Bearer {token}"} if token else {}
    with TestClient(create_app(make_settings(tmp_path, base_model_path, **overrides))) as client:
        store = client.app.state.daemon.store  # type: ignore[attr-defined]

        def broken() -> None:
            raise ZeroDivisionError("a bug in the store")

        # The only fake in this file: a bug is needed on purpose, and nothing real has one.
        monkeypatch.setattr(store, "buffer_usage", broken)
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            response = client.get("/v1/status", headers=headers)
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert "ZeroDivisionError" in body["error"] and "/v1/status" in body["error"] and body["field"] is None
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is ZeroDivisionError]
    assert len(logged) == 1, caplog.records
    assert "a bug in the store" in logged[0].exc_text or "a bug in the store" in str(logged[0].exc_info[1])
    assert "Traceback" in caplog.text and "in broken" in caplog.text


def test_a_context_holds_one_dtype(client: TestClient) -> None:
    x = np.zeros((2, 3, 32, 32), dtype=np.uint8)
    assert client.post("/v1/samples", json=encode_json_batch(x, [0, 1], context="cam-1")).status_code == 201
    response = client.post("/v1/samples", json=encode_json_batch(x.astype(np.float32), [0, 1], context="cam-1"))
    assert response.status_code == 409, response.text
    assert response.json()["field"] == "dtype" and "holds uint8" in response.json()["error"]
    elsewhere = encode_json_batch(x.astype(np.float32), [0, 1], context="cam-2")
    assert client.post("/v1/samples", json=elsewhere).status_code == 201
    assert client.get("/v1/status").json()["buffer"]["samples"] == 4


def test_a_daemon_shutting_down_answers_503(client: TestClient) -> None:
    daemon = client.app.state.daemon  # type: ignore[attr-defined]
    daemon.jobs.shutdown()  # what the lifespan does first on SIGTERM; requests may still be in flight
    response = client.post("/v1/drift", json={"type": "input", "context": "cam-1"})
    assert response.status_code == 503 and "shutting down" in response.json()["error"]
    daemon.store.close()  # and then the database closes
    response = client.get("/v1/status")
    assert response.status_code == 503 and "shutting down" in response.json()["error"]


def test_a_version_whose_file_cannot_be_served_is_a_500_naming_it(client: TestClient, tmp_path: Path) -> None:
    broken = tmp_path / "data" / "models" / "job-7.delta.npz"
    broken.write_bytes(b"not a weights file")
    version = client.app.state.daemon.store.add_model_version(broken, scope="cam-1", delta_of=1)  # type: ignore[attr-defined]
    response = client.post(f"/v1/models/{version}/activate", params={"context": "cam-1"})
    assert response.status_code == 500, response.text
    body = response.json()
    assert body["field"] == "version" and f"model version {version}" in body["error"]
    assert "job-7.delta.npz" in body["error"]
    assert client.post("/v1/predict", json=encode_json_batch(colour_samples(2, 3).x.numpy(), None)).status_code == 200


def test_openapi_describes_sample_bodies_and_every_error(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    for path in ("/v1/samples", "/v1/predict"):
        operation = document["paths"][path]["post"]
        content = operation["requestBody"]["content"]
        assert set(content) == {"application/json", "application/octet-stream", "application/x-npy", "application/npy"}
        forms = content["application/json"]["schema"]["oneOf"]
        assert [sorted(f["required"]) for f in forms] == (
            [["data", "dtype", "labels", "shape"], ["labels", "samples"]] if path == "/v1/samples"
            else [["data", "dtype", "shape"], ["samples"]]
        )
        assert forms[0]["properties"]["shape"]["prefixItems"][1:] == [{"const": 3}, {"const": 32}, {"const": 32}]
        names = {(p["in"], p["name"]) for p in operation["parameters"]}
        assert {("query", n) for n in ("dtype", "shape", "labels", "context", "device_id")} <= names
        assert {("header", n) for n in ("X-Dtype", "X-Shape", "X-Labels", "X-Context", "X-Device-Id")} <= names
    statuses = {(path, method): set(op["responses"]) for path, item in document["paths"].items()
                for method, op in item.items()}
    assert statuses[("/v1/samples", "post")] == {"201", "400", "409", "413", "415", "422", "429", "500", "503", "507"}
    assert "202" in statuses[("/v1/drift", "post")] and "201" in statuses[("/v1/jobs", "post")]
    for (path, method), codes in statuses.items():
        assert "500" in codes, (path, method)
        for code in codes - {"200", "201", "202"}:
            schema = document["paths"][path][method]["responses"][code]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, method, code)
    assert document["components"]["schemas"]["ErrorBody"]["required"] == ["error"]
    assert "HTTPValidationError" not in document["components"]["schemas"]
    energy = document["paths"]["/v1/energy"]["get"]["responses"]["200"]
    assert set(energy["content"]) == {"application/json", "text/csv"}
