"""A model per context: each context adapts and is served its own model, stored as a delta on the
base; the base and every served version survive pruning, which deletes files only after its commit;
and all of it holds across a restart of a real daemon."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device.numpy_model import weights_path_for
from device.weights_delta import read_state, save_delta
from drift.scenarios import shapes_scenario
from energy.emulator import Emulator
from service.model_registry import ModelRegistry
from service.payloads import encode_raw_batch
from service.store import Store
from tests.running_daemon import Daemon


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[ModelRegistry]:
    store = Store.open(tmp_path / "data" / "tbftd.sqlite3")
    registry = ModelRegistry(store, tmp_path / "data" / "models", model_groups={"cam-c": "lobby", "cam-d": "lobby"})
    registry.bootstrap()
    yield registry
    store.close()


def add_version(registry: ModelRegistry, context: str, seed: int, *, activate: bool = True) -> int:
    """A version of ``context`` whose fc differs from the base, recorded as a job's would be."""
    base_state = read_state(weights_path_for(registry.store.get_version(registry.base.version).path))
    state = dict(base_state)
    state["fc.bias"] = base_state["fc.bias"] + np.float32(seed)
    job = registry.store.create_job(context, block="fc")
    path = registry.candidate_path(job.id)
    save_delta(path, registry.config, state, base_state, {"job_id": job.id})
    return registry.register(path, context=context, parent_version=registry.version_for(context), job_id=job.id,
                             accuracy={}, activate=activate, notes="test")


def test_contexts_are_served_their_own_versions_and_groups_share_one(registry: ModelRegistry) -> None:
    x = np.zeros((2, *registry.config.input_shape), dtype=np.uint8)
    a = add_version(registry, "cam-a", 1)
    c = add_version(registry, "cam-c", 2)

    assert registry.predict("cam-a", x)[0] == a
    assert registry.predict("cam-b", x)[0] == registry.base.version == 1
    assert registry.predict("cam-d", x)[0] == c  # cam-d shares its group's model
    base_logits = registry.base.model.logits(x)
    assert np.allclose(registry.model_for("cam-a").model.logits(x) - base_logits, 1.0, atol=1e-4)
    assert np.allclose(registry.model_for("cam-d").model.logits(x) - base_logits, 2.0, atol=1e-4)
    assert registry.scope_versions() == {"cam-a": a, "lobby": c}
    registry.activate(1, "cam-a")  # rollback to the base, for cam-a alone
    assert registry.version_for("cam-a") == 1 and registry.version_for("cam-c") == c


def test_prune_keeps_the_base_and_served_versions_and_deletes_files_after_the_commit(
    registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = registry.store.path
    unlinked: list[tuple[str, bool]] = []
    real_unlink = Path.unlink

    def unlink(path: Path, missing_ok: bool = False) -> None:
        # What another connection (a restarted daemon) sees at the moment the file goes.
        with sqlite3.connect(database) as conn:
            recorded = conn.execute("SELECT 1 FROM model_versions WHERE path = ?", (str(path),)).fetchone()
        unlinked.append((path.name, recorded is not None))
        real_unlink(path, missing_ok=missing_ok)

    versions = [add_version(registry, "cam-a", seed) for seed in range(1, 5)]
    registry.activate(versions[0], "cam-b")  # another context serves cam-a's first version
    monkeypatch.setattr(Path, "unlink", unlink)

    removed = registry.prune("cam-a", keep=2)

    assert [v.version for v in removed] == [versions[1]]
    assert unlinked and all(not recorded for _, recorded in unlinked), unlinked
    kept = {v.version for v in registry.store.list_versions("cam-a")}
    assert kept == {1, versions[0], versions[2], versions[3]}
    for version in kept:
        assert Path(registry.store.get_version(version).path).exists()
    assert not Path(removed[0].path).exists()


def test_a_restart_sweeps_files_no_version_records(registry: ModelRegistry, tmp_path: Path) -> None:
    version = add_version(registry, "cam-a", 1)
    stray = registry.models_dir / "job-999.delta.npz"  # a prune's file left by a crash after its commit
    stray.write_bytes(b"left over")
    again = ModelRegistry(registry.store, registry.models_dir)
    again.bootstrap()
    assert not stray.exists()
    assert Path(registry.store.get_version(version).path).exists()
    assert (registry.models_dir / "base.pt").exists() and (registry.models_dir / "base.npz").exists()
    assert again.version_for("cam-a") == version


# -- a real daemon ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cameras_adapt_their_own_models_on_one_daemon_and_keep_them_across_a_restart(
    tmp_path: Path, um25c_meter: Emulator
) -> None:
    relabelled = shapes_scenario("output", train_size=240, val_size=0, test_size=200, seed=5)
    options = ("--keep-versions", "2", "--model-groups", "lobby=cam-c,cam-d", "--max-device-samples", "300",
               "--max-context-samples", "200", "--hint-expiry-seconds", "2")
    headers = {"content-type": "application/octet-stream"}
    daemon = Daemon(tmp_path / "data", um25c_meter.port, *options)
    try:
        client = daemon.client

        def post(context: str, device: str, x: np.ndarray, y: np.ndarray, key: str | None = None) -> Any:
            body, params = encode_raw_batch(x, y, context=context, device_id=device)
            return client.post("/v1/samples", content=body, params=params,
                               headers={**headers, **({"Idempotency-Key": key} if key else {})})

        def adapt(context: str) -> dict[str, Any]:
            job = client.post("/v1/jobs", json={"context": context, "block": "fc"}).json()
            deadline = time.monotonic() + 240
            while (job := client.get(f"/v1/jobs/{job['id']}").json())["state"] in ("queued", "running"):
                assert time.monotonic() < deadline, job
                time.sleep(0.3)
            assert job["state"] == "succeeded", job
            return job

        def served(context: str) -> tuple[int, float]:
            body, params = encode_raw_batch(relabelled.test.x, context=context)
            reply = client.post("/v1/predict", content=body, params=params, headers=headers).json()
            assert reply["context"] == context
            return reply["model_version"], float(np.mean(np.array(reply["classes"]) == relabelled.test.y))

        _, base_accuracy = served("cam-a")
        waiting = client.post("/v1/drift", json={"type": "input", "context": "cam-quiet"}).json()["hint"]
        for start in range(0, 240, 80):
            x, y = relabelled.train.x[start : start + 80], relabelled.train.y[start : start + 80]
            answer = post("cam-a", "cam-a", x, y, key=f"cam-a-{start}")
            assert answer.status_code == 201
            assert post("cam-c", "cam-c", x, y).status_code == 201
        # The third batch took cam-a over its quota of 200: its oldest went, and the answer says so.
        assert answer.json()["evictions"] == [{"context": "cam-a", "samples": 40, "consumed": 0, "bytes": 40 * relabelled.train.x[0].nbytes,
                                               "reason": "context quota: context 'cam-a' over max_context_samples 200"}]
        retried = post("cam-a", "cam-a", relabelled.train.x[:80], relabelled.train.y[:80], key="cam-a-0")
        assert retried.status_code == 201 and retried.json()["replayed"] is True
        assert retried.json()["context_samples"] == 200  # stored once

        job = adapt("cam-a")
        version_a = job["model_version_out"]
        assert job["decision"]["outcome"] == "promoted" and job["model_version_in"] == 1
        assert served("cam-a")[0] == version_a and served("cam-a")[1] > base_accuracy + 0.3
        assert served("cam-b") == (1, base_accuracy)  # another camera keeps the base, untouched
        job_c = adapt("cam-c")
        assert job_c["model_version_in"] == 1  # from its own (the base), not cam-a's model
        assert served("cam-d")[0] == job_c["model_version_out"]  # cam-d shares the lobby's model
        assert client.get("/v1/models", params={"context": "cam-d"}).json()["scope"] == "lobby"

        # Only what differs from the base is stored: fc and BatchNorm statistics, not the model.
        versions = client.get("/v1/models", params={"context": "cam-a"}).json()["versions"]
        paths = {v["version"]: Path(v["path"]) for v in versions}
        assert paths[version_a].stat().st_size < 0.1 * weights_path_for(paths[1]).stat().st_size

        # Two more versions for cam-a with keep_versions 2: pruning never takes the base or a served one.
        for _ in range(2):
            adapt("cam-a")
        models = client.get("/v1/models", params={"context": "cam-a"}).json()
        own = [v["version"] for v in models["versions"] if v["scope"] == "cam-a"]
        assert len(own) <= 3 and models["active"] in own and 1 in [v["version"] for v in models["versions"]]
        for v in models["versions"]:
            assert Path(v["path"]).exists(), v
        assert client.post("/v1/models/1/activate", params={"context": "cam-a"}).status_code == 200
        assert served("cam-a") == (1, base_accuracy)
        client.post(f"/v1/models/{models['active']}/activate", params={"context": "cam-a"})

        # A device over its quota is told so, naming it (it posts to two contexts, each under its quota).
        x, y = relabelled.train.x[:80], relabelled.train.y[:80]
        for context in ("cam-e", "cam-f", "cam-e"):
            assert post(context, "chatty", x, y).status_code == 201
        refused = post("cam-f", "chatty", x, y)
        assert refused.status_code == 429 and refused.json()["quota"] == "max_device_samples"
        before = {c: served(c)[0] for c in ("cam-a", "cam-b", "cam-c", "cam-d")}
        # The hint for a context that never got samples has expired, and says so.
        hints = client.get("/v1/drift", params={"context": "cam-quiet"}).json()["hints"]
        assert [(h["id"], h["state"]) for h in hints] == [(waiting["id"], "expired")]
    finally:
        assert daemon.stop() == 0, daemon.stderr_path.read_text()[-2000:]

    daemon = Daemon(tmp_path / "data", um25c_meter.port, *options)
    try:
        client = daemon.client
        assert {c: served(c)[0] for c in before} == before
    finally:
        assert daemon.stop() == 0, daemon.stderr_path.read_text()[-2000:]
