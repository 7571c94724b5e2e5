"""The device client against a real ``tbftd serve`` process (token required), and against a port
nothing listens on."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from service.client import (
    ClientError,
    DaemonUnreachable,
    RetryAttempt,
    ServerError,
    TbftdClient,
)
from tests.running_daemon import Daemon, free_port, metered_daemon

TOKEN = "test-token-5f1c"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the module, guarded by ``TOKEN``, metered by an emulated UM25C."""
    with metered_daemon(tmp_path_factory.mktemp("client") / "data", 4.5, "--api-token", TOKEN) as running:
        yield running


@pytest.fixture
def client(daemon: Daemon) -> TbftdClient:
    return TbftdClient(daemon.url, token=TOKEN, retries=0)


def images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, count)


def stored_samples(daemon: Daemon, context: str) -> list[tuple[str | None, int, bytes]]:
    """(device_id, label, payload) of a context's samples, oldest first, read from the daemon's database."""
    path = daemon.stderr_path.parent / "data" / "tbftd.sqlite3"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT device_id, label, payload FROM samples WHERE context = ? ORDER BY id", (context,))
        return [(device, int(label), bytes(payload)) for device, label, payload in rows]


def test_post_samples_splits_into_batches_of_batch_size_over_octet_stream(daemon: Daemon, client: TbftdClient) -> None:
    x, y = images(150, seed=1)
    result = client.post_samples(x, y, context="cam-batches", device_id="cam-7", batch_size=64)
    assert result.batch_sizes == [64, 64, 22]
    assert (result.accepted, result.batches, result.context_samples) == (150, 3, 150)
    assert result.last_id - result.first_id == 149
    assert [r["last_id"] - r["first_id"] + 1 for r in result.replies] == [64, 64, 22]
    stored = stored_samples(daemon, "cam-batches")
    assert [label for _, label, _ in stored] == y.tolist()
    assert {device for device, _, _ in stored} == {"cam-7"}
    assert [payload for _, _, payload in stored] == [image.tobytes() for image in x]


def test_the_json_form_stores_the_same_samples(daemon: Daemon, client: TbftdClient) -> None:
    x, y = images(12, seed=2)
    result = client.post_samples(x.astype(np.float32) / 255, y, context="cam-json", form="json")
    assert result.batch_sizes == [12]
    stored = stored_samples(daemon, "cam-json")
    assert [label for _, label, _ in stored] == y.tolist()
    assert {device for device, _, _ in stored} == {None}


def test_labels_that_do_not_match_are_refused_before_sending(client: TbftdClient) -> None:
    x, y = images(5, seed=3)
    with pytest.raises(ValueError, match="4 labels"):
        client.post_samples(x, y[:4], context="cam-unsent")
    with pytest.raises(ValueError, match="batch_size"):
        client.post_samples(x, y, context="cam-unsent", batch_size=0)


def test_a_4xx_raises_client_error_with_the_daemons_message_and_is_not_retried(daemon: Daemon) -> None:
    retries: list[RetryAttempt] = []
    client = TbftdClient(daemon.url, token=TOKEN, retries=3, backoff_seconds=0.01, on_retry=retries.append)
    x, _ = images(3, seed=4)
    with pytest.raises(ClientError) as refused:
        client.post_samples(x, np.array([1, 10, 2]), context="cam-bad")
    assert refused.value.status == 422
    assert refused.value.field == "labels"
    assert refused.value.message == "label 10 at index 1 is out of range 0..9"
    with pytest.raises(ClientError) as missing:
        client.job(987654)
    assert (missing.value.status, missing.value.message) == (404, "no job 987654")
    with pytest.raises(ClientError) as conflict:
        client.submit_job("cam-empty", block="fc")
    assert conflict.value.status == 409 and "holds 0 samples" in conflict.value.message
    assert retries == []
    assert stored_samples(daemon, "cam-bad") == []


def test_the_token_is_sent_from_the_argument_or_the_environment(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TBFTD_API_TOKEN", raising=False)
    with pytest.raises(ClientError) as refused:
        TbftdClient(daemon.url, retries=0).status()
    assert refused.value.status == 401 and "bearer token" in refused.value.message
    with pytest.raises(ClientError):
        TbftdClient(daemon.url, token="wrong", retries=0).status()
    assert TbftdClient(daemon.url, token=TOKEN, retries=0).status()["model_version"] == 1
    monkeypatch.setenv("TBFTD_API_TOKEN", TOKEN)
    assert TbftdClient(daemon.url, retries=0).status()["meter"]["model"] == "UM25C"
    assert TbftdClient(daemon.url, token="", retries=0).healthz() == {"status": "ok"}  # /healthz needs none


def test_predict_splits_large_inputs_and_names_the_model_version(client: TbftdClient) -> None:
    x, _ = images(70, seed=5)
    prediction = client.predict(x, batch_size=32)
    assert prediction.model_version == 1
    assert prediction.classes.shape == (70,) and prediction.probabilities.shape == (70, 10)
    np.testing.assert_array_equal(prediction.classes, prediction.probabilities.argmax(axis=1))
    one = client.predict(x[40:41])
    assert one.classes[0] == prediction.classes[40]


def test_models_energy_and_status_answer_in_their_documented_shape(client: TbftdClient) -> None:
    models = client.models()
    assert models["active"] == 1 and [v["version"] for v in models["versions"]] == [1]
    assert client.activate(1)["version"] == 1
    log = client.energy()
    assert log["jobs"] == [] and log["units"]["joules"] == "J"
    assert client.energy(since=time.time() - 3600, csv=True).startswith("job_id,context,")
    with pytest.raises(ClientError) as bad_time:
        client.energy(since="yesterday")
    assert bad_time.value.status == 422 and "since" in bad_time.value.message
    status = client.status()
    assert status["running_job"] is None and status["meter"]["source"].startswith("UM25C@")


def test_connection_refused_is_retried_with_exponential_backoff_then_raises() -> None:
    port = free_port()  # nothing listens on it
    attempts: list[RetryAttempt] = []
    client = TbftdClient(f"http://127.0.0.1:{port}", retries=3, backoff_seconds=0.05, on_retry=attempts.append)
    started = time.monotonic()
    with pytest.raises(DaemonUnreachable) as unreachable:
        client.status()
    elapsed = time.monotonic() - started
    assert unreachable.value.attempts == 4
    assert str(unreachable.value) == f"no daemon at http://127.0.0.1:{port}: connection refused"
    assert [a.attempt for a in attempts] == [1, 2, 3]
    assert {a.reason for a in attempts} == {"connection refused"}
    for attempt in attempts:  # 0.05 · 2^(n−1), scaled by a jitter factor in [0.5, 1]
        ceiling = 0.05 * 2 ** (attempt.attempt - 1)
        assert 0.5 * ceiling <= attempt.delay_seconds <= ceiling
    assert elapsed >= sum(a.delay_seconds for a in attempts)


def test_without_retries_an_unreachable_daemon_fails_at_once() -> None:
    attempts: list[RetryAttempt] = []
    client = TbftdClient(f"http://127.0.0.1:{free_port()}", retries=0, on_retry=attempts.append)
    with pytest.raises(DaemonUnreachable):
        client.post_drift("input", "cam-1")
    assert attempts == []


def test_backoff_is_capped() -> None:
    attempts: list[RetryAttempt] = []
    client = TbftdClient(f"http://127.0.0.1:{free_port()}", retries=4, backoff_seconds=0.02,
                         max_backoff_seconds=0.05, on_retry=attempts.append)
    with pytest.raises(DaemonUnreachable):
        client.models()
    assert max(a.delay_seconds for a in attempts) <= 0.05


@pytest.fixture
def scripted_proxy() -> Iterator[tuple[str, list[int], list[str]]]:
    """A stand-in for a reverse proxy in front of the daemon: each request gets the next status of
    a script (the test fills it; 200 once it runs out, with a JSON body). Yields the URL, the
    script, and the paths requested, in order."""
    script: list[int] = []
    requested: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requested.append(self.path)
            status = script.pop(0) if script else 200
            body = json.dumps({"status": "ok"} if status == 200 else {"error": f"proxy says {status}"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", script, requested
    finally:
        server.shutdown()
        server.server_close()


def test_502_503_and_504_are_retried_until_the_daemon_answers(
    scripted_proxy: tuple[str, list[int], list[str]],
) -> None:
    url, script, requested = scripted_proxy
    script.extend([502, 503, 504])
    attempts: list[RetryAttempt] = []
    client = TbftdClient(url, retries=3, backoff_seconds=0.01, on_retry=attempts.append)
    assert client.healthz() == {"status": "ok"}
    assert requested == ["/healthz"] * 4
    assert [(a.attempt, a.reason) for a in attempts] == [(1, "HTTP 502"), (2, "HTTP 503"), (3, "HTTP 504")]


def test_a_proxy_error_that_outlasts_the_retries_raises_server_error(
    scripted_proxy: tuple[str, list[int], list[str]],
) -> None:
    url, script, requested = scripted_proxy
    script.extend([503] * 3)
    client = TbftdClient(url, retries=2, backoff_seconds=0.01)
    with pytest.raises(ServerError) as error:
        client.healthz()
    assert error.value.status == 503 and error.value.message == "proxy says 503"
    assert len(requested) == 3  # the first try and two retries, then no more


def test_other_5xx_answers_are_not_retried(scripted_proxy: tuple[str, list[int], list[str]]) -> None:
    url, script, requested = scripted_proxy
    script.extend([500, 507])
    attempts: list[RetryAttempt] = []
    client = TbftdClient(url, retries=3, backoff_seconds=0.01, on_retry=attempts.append)
    for status in (500, 507):
        with pytest.raises(ServerError) as error:
            client.healthz()
        assert error.value.status == status
    assert len(requested) == 2 and attempts == []
