"""Real requests against the daemon's own ``/openapi.json``: what the daemon documents it takes, it
takes, and what clients send keeps to the document.

A real uvicorn server runs the real app (``create_app``, a real SQLite file, the shipped model)
behind :class:`WireRecorder`, an ASGI wrapper that keeps every request as the app received it. Each
recorded request (method, path, query, headers, content type, body) is validated with openapi-core
against the document the running daemon serves. The requests come from three places:

* :class:`service.client.TbftdClient`, every call it makes (samples in both wire forms, drift hints,
  jobs, predictions, models, energy);
* hand-built bodies in every form ``POST /v1/samples`` and ``POST /v1/predict`` document: base64
  JSON, nested-list JSON, raw octet-stream with the fields in the query or in ``X-*`` headers, and
  ``.npy`` under both its media types; each must also be accepted (2xx);
* for each operation, one request carrying every query parameter and header the document declares
  for it, with values taken from the document, so a parameter added later is sent, validated and
  must be accepted too.

A coverage test compares what was validated with what the document declares, and negative cases
show that the validator refuses what the daemon refuses.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import httpx
import numpy as np
import pytest
import uvicorn
from openapi_core import OpenAPI
from openapi_core.contrib.starlette.requests import StarletteOpenAPIRequest
from starlette.requests import Request

from service.app import create_app
from service.client import TbftdClient
from service.jobs import MIN_JOB_SAMPLES
from service.payloads import RAW_MEDIA_TYPE, encode_json_batch, encode_npy_batch, encode_raw_batch
from service.settings import load_settings
from tests.running_daemon import free_port

TOKEN = "openapi-token-3b9e"
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# --- the wire ----------------------------------------------------------------------------------------


@dataclass(repr=False)
class Exchange:
    """One HTTP request as the app received it, and the status it was answered with."""

    scope: dict[str, Any]
    body: bytes
    status: int | None = None

    @property
    def method(self) -> str:
        return str(self.scope["method"]).upper()

    @property
    def path(self) -> str:
        return str(self.scope["path"])

    @property
    def query_names(self) -> set[str]:
        return {name for name, _ in parse_qsl(self.scope["query_string"].decode("latin-1"), keep_blank_values=True)}

    @property
    def header_names(self) -> set[str]:
        return {name.decode("latin-1").lower() for name, _ in self.scope["headers"]}

    @property
    def media_type(self) -> str | None:
        for name, value in self.scope["headers"]:
            if name.lower() == b"content-type":
                return value.decode("latin-1").split(";", 1)[0].strip().lower()
        return None

    def describe(self) -> str:
        query = self.scope["query_string"].decode("latin-1")
        return f"{self.method} {self.path}{'?' + query if query else ''} ({self.media_type}) -> {self.status}"

    __repr__ = describe


class WireRecorder:
    """ASGI wrapper around the app: records each HTTP request, body whole, then hands it on unchanged."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app
        self.exchanges: list[Exchange] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        exchange = Exchange(dict(scope), b"".join(chunks))
        # Recorded before the app answers, so the test finds it as soon as its client has the answer.
        self.exchanges.append(exchange)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": exchange.body, "more_body": False}

        async def send_recording_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = int(message["status"])
            await send(message)

        await self.app(scope, replay, send_recording_status)


@dataclass(frozen=True)
class Checked:
    """A recorded request, the document's operation it calls, and what the validator found wrong with it."""

    exchange: Exchange
    operation: str  #: "METHOD /path/{template}"
    errors: list[str]


@dataclass
class Call:
    """A request the test means to put on the wire."""

    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    content_type: str | None = None


def json_call(method: str, path: str, body: Any) -> Call:
    return Call(method, path, content=json.dumps(body).encode(), content_type="application/json")


def operation_of(document: dict[str, Any], method: str, path: str) -> str | None:
    """``"METHOD /template"`` of the document's operation that ``method`` and ``path`` call, if any."""
    for template, item in document["paths"].items():
        if method.lower() not in item:
            continue
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            return f"{method.upper()} {template}"
    return None


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(method, path template, operation object) of each operation in the document."""
    for template, item in document["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield method.upper(), template, operation


def describe_error(error: BaseException, body: bytes) -> str:
    """An openapi-core error with its causes and each schema error under them, one a line."""
    lines: list[str] = []
    seen: BaseException | None = error
    while seen is not None:
        lines.append(shorten(f"{type(seen).__name__}: {seen}", body))
        for schema_error in getattr(seen, "schema_errors", None) or ():
            # A oneOf or anyOf error says only that no alternative fitted; its context says why each did not.
            for nested in (schema_error, *schema_error.context):
                where = "/".join(str(part) for part in nested.absolute_path) or "(root)"
                lines.append(shorten(f"    at {where}: {nested.message}", body))
        seen = seen.__cause__ or seen.__context__
    return "\n".join(lines)


def shorten(text: str, body: bytes, limit: int = 400) -> str:
    """``text`` without the request body and at most ``limit`` characters: the validator's messages repeat
    the value they reject, a whole binary body included."""
    text = text.replace(repr(body), f"<the {len(body)}-byte body>")
    text = re.sub(r": \(<ValidationError.*", "", text, flags=re.DOTALL)  # the schema errors follow, one a line
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def assert_valid(checked: list[Checked]) -> None:
    """Fail with each request the document does not describe and why, and nothing else (pytest's own
    account of the expression would repeat whole bodies)."""
    report = "\n\n".join(f"{c.exchange.describe()}\n{chr(10).join(c.errors)}" for c in checked if c.errors)
    if report:
        pytest.fail(f"requests that do not keep to /openapi.json:\n{report}", pytrace=False)


def assert_answered(checked: list[Checked], low: int, high: int) -> None:
    """Fail unless the daemon answered each request with a status in [low, high)."""
    wrong = [c.exchange.describe() for c in checked if not low <= (c.exchange.status or 0) < high]
    if wrong:
        pytest.fail(f"answered outside {low}..{high - 1}:\n" + "\n".join(wrong), pytrace=False)


# --- the daemon ------------------------------------------------------------------------------------


@dataclass
class RunningDaemon:
    """The app under a real uvicorn server, its recorder, the document it serves and a validator for it."""

    url: str
    recorder: WireRecorder
    http: httpx.Client
    document: dict[str, Any]
    openapi: OpenAPI
    running_job_id: int  #: a job the worker never runs, so cancelling it always answers 200
    _contexts: Iterator[int] = field(default_factory=lambda: iter(range(1, 10**6)))

    @property
    def base64_form(self) -> dict[str, Any]:
        body = self.document["paths"]["/v1/samples"]["post"]["requestBody"]["content"]["application/json"]
        return next(form for form in body["schema"]["oneOf"] if "data" in form["properties"])

    @property
    def image_shape(self) -> tuple[int, ...]:
        """(C, H, W) of the served model, as the document states it."""
        return tuple(int(item["const"]) for item in self.base64_form["properties"]["shape"]["prefixItems"][1:])

    @property
    def num_classes(self) -> int:
        """Classes of the served model, as the document states it."""
        return int(self.base64_form["properties"]["labels"]["items"]["maximum"]) + 1

    def images(self, count: int, seed: int) -> np.ndarray:
        return np.random.default_rng(seed).integers(0, 256, (count, *self.image_shape), dtype=np.uint8)

    def labels(self, count: int) -> list[int]:
        return [i % self.num_classes for i in range(count)]

    def fresh_context(self, prefix: str) -> str:
        return f"{prefix}-{next(self._contexts)}"

    def send(self, call: Call) -> Exchange:
        """Send ``call`` and return the request as the app received it."""
        start = len(self.recorder.exchanges)
        headers = dict(call.headers)
        if call.content_type is not None:
            headers["Content-Type"] = call.content_type
        self.http.request(call.method, call.path, params=call.params, headers=headers, content=call.content)
        recorded = self.recorder.exchanges[start:]
        assert len(recorded) == 1, recorded
        return recorded[0]

    def check(self, exchange: Exchange) -> Checked:
        """Validate a recorded request against the document."""
        operation = operation_of(self.document, exchange.method, exchange.path)
        assert operation is not None, f"not an operation of /openapi.json: {exchange.describe()}"
        request = StarletteOpenAPIRequest(Request(exchange.scope), exchange.body)
        errors = [describe_error(error, exchange.body) for error in self.openapi.request_validator.iter_errors(request)]
        return Checked(exchange, operation, errors)

    def send_and_check(self, call: Call) -> Checked:
        return self.check(self.send(call))


@contextmanager
def serve(recorder: WireRecorder, port: int) -> Iterator[None]:
    """Run ``recorder`` (and the app's lifespan) under uvicorn on 127.0.0.1:``port``, in a thread."""
    config = uvicorn.Config(recorder, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped during start-up"
        assert time.monotonic() < deadline, "uvicorn did not start within 30 s"
        time.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive(), "uvicorn did not stop"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    """The daemon behind a token, serving the shipped model; a day's energy budget of 0 J makes the
    worker cancel each job it takes before training, so jobs cost nothing."""
    settings = load_settings(env={}, overrides={
        "data_dir": tmp_path_factory.mktemp("openapi") / "data", "meter_kind": "estimate", "baseline_seconds": 0,
        "api_token": TOKEN, "energy_budget_day_joules": 0,
    })  # fmt: skip
    app = create_app(settings)
    recorder = WireRecorder(app)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serve(recorder, port), httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"},
                                             timeout=30) as http:
        answer = http.get("/openapi.json")
        assert answer.status_code == 200, answer.text
        document = answer.json()
        # from_dict also checks the document itself against the OpenAPI 3.1 specification.
        openapi = OpenAPI.from_dict(document)
        # Running, as the database says, but never claimed by the worker (it takes queued jobs only).
        job = app.state.daemon.store.create_job("seeded", block="fc", drift_type="output", requested_by="api",
                                                state="running")
        yield RunningDaemon(url, recorder, http, document, openapi, job.id)


# --- (1) what the client sends ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client_checks(daemon: RunningDaemon) -> list[Checked]:
    """Every request :class:`TbftdClient` makes in a session that calls each of its methods, validated."""
    client = TbftdClient(daemon.url, token=TOKEN, retries=0)
    start = len(daemon.recorder.exchanges)
    count = MIN_JOB_SAMPLES + 4
    client.healthz()
    client.status()
    raw = client.post_samples(daemon.images(count, 1), daemon.labels(count), context="cam-raw", device_id="cam-7",
                              batch_size=16)
    assert raw.batch_sizes == [16, count - 16]
    floats = daemon.images(count, 2).astype(np.float32) / 255
    client.post_samples(floats, daemon.labels(count), context="cam-json", form="json")
    hint = client.post_drift("output", context="cam-json", min_samples=100_000)
    assert hint["status"] == "waiting for samples", hint
    by_drift = client.submit_job("cam-raw", drift_type="output")
    by_block = client.submit_job("cam-json", block="fc")
    for job in (by_drift, by_block):  # the day's budget of 0 J: cancelled before it trains
        assert client.wait_for_job(job["id"], timeout_seconds=30, poll_seconds=0.05)["state"] == "cancelled"
    assert [job["id"] for job in client.jobs(state="cancelled", context="cam-raw", limit=5)] == [by_drift["id"]]
    client.power(by_block["id"])
    assert client.cancel_job(daemon.running_job_id)["cancel_requested"] is True
    assert client.predict(daemon.images(3, 3), batch_size=2).classes.shape == (3,)
    active = client.models()["active"]
    client.activate(active)
    client.energy(since=0, until=datetime.now(UTC), context="cam-raw", block="fc")
    assert client.energy(csv=True).startswith("job_id,")
    return [daemon.check(exchange) for exchange in daemon.recorder.exchanges[start:]]


def test_every_request_the_client_sends_keeps_to_the_document(client_checks: list[Checked]) -> None:
    assert_valid(client_checks)
    assert_answered(client_checks, 200, 300)
    sent = {c.operation for c in client_checks}
    assert {"POST /v1/samples", "POST /v1/predict", "DELETE /v1/jobs/{job_id}"} <= sent, sent
    media_types = {c.exchange.media_type for c in client_checks if c.operation == "POST /v1/samples"}
    assert media_types == {"application/json", RAW_MEDIA_TYPE}


# --- (2) every documented form of a batch ---------------------------------------------------------------


def header_name(query_name: str) -> str:
    """The ``X-*`` header that carries a query parameter beside a binary body (``device_id``: ``X-Device-Id``)."""
    return "X-" + "-".join(part.capitalize() for part in query_name.split("_"))


def batch_forms(daemon: RunningDaemon, path: str, labelled: bool) -> dict[str, Call]:
    """A two-image batch in each form the document gives for ``path``."""
    x = daemon.images(2, seed=4)
    labels = daemon.labels(2) if labelled else None
    # A context holds samples of one dtype, so the float32 batch goes to its own.
    context, float_context = ("cam-forms", "cam-forms-float") if labelled else (None, None)
    raw, params = encode_raw_batch(x, labels, context, "dev-7")
    nested: dict[str, Any] = {"samples": (x.astype(np.float32) / 255).tolist()}
    if labelled:
        nested.update(labels=labels, context=float_context)
    npy_params = {"labels": params["labels"]} if labelled else {}
    return {
        "json-base64": json_call("POST", path, encode_json_batch(x, labels, context, "dev-7")),
        "json-nested": json_call("POST", path, nested),
        "octet-stream-query": Call("POST", path, params, content=raw, content_type=RAW_MEDIA_TYPE),
        "octet-stream-headers": Call("POST", path, headers={header_name(k): v for k, v in params.items()},
                                     content=raw, content_type=RAW_MEDIA_TYPE),
        "npy-query": Call("POST", path, {**npy_params, **({"context": context} if context else {})},
                          content=encode_npy_batch(x), content_type="application/x-npy"),
        "npy-headers": Call("POST", path, headers={header_name(k): v for k, v in npy_params.items()},
                            content=encode_npy_batch(x), content_type="application/npy"),
    }


FORM_NAMES = ("json-base64", "json-nested", "octet-stream-query", "octet-stream-headers", "npy-query", "npy-headers")
BATCH_OPERATIONS = {"/v1/samples": True, "/v1/predict": False}  # path: whether labels are required


@pytest.fixture(scope="module")
def form_checks(daemon: RunningDaemon) -> dict[tuple[str, str], Checked]:
    """Each batch form sent to both batch operations and validated, by (path, form)."""
    return {(path, name): daemon.send_and_check(call)
            for path, labelled in BATCH_OPERATIONS.items()
            for name, call in batch_forms(daemon, path, labelled).items()}


@pytest.mark.parametrize("form", FORM_NAMES)
@pytest.mark.parametrize("path", list(BATCH_OPERATIONS))
def test_each_documented_batch_form_validates_and_is_accepted(
    form_checks: dict[tuple[str, str], Checked], path: str, form: str
) -> None:
    checked = form_checks[(path, form)]
    assert_valid([checked])
    assert_answered([checked], 200, 300)


# --- (3) every declared parameter at once ----------------------------------------------------------------

#: Values for parameters whose schema does not say what the daemon accepts (free-form strings), by name.
PARAMETER_VALUES: dict[str, Callable[[], str]] = {
    "context": lambda: "cam-params",
    "device_id": lambda: "dev-params",
    "since": lambda: "0",
    "until": lambda: "4102444800",  # 2100-01-01
    "block": lambda: "fc",
    "idempotency-key": lambda: str(uuid.uuid4()),  # a fresh one each time: each request is a new one
}


def parameter_value(parameter: dict[str, Any], call: Call) -> str:
    """A value the daemon accepts for a declared query or header parameter: a header ``X-Foo`` repeats the
    query parameter ``foo`` of ``call`` (the daemon's convention), a name in :data:`PARAMETER_VALUES` takes
    its value there, any other its schema's example, default, first enum value or minimum."""
    name = str(parameter["name"])
    if parameter["in"] == "header" and name.lower().startswith("x-"):
        mirrored = name[2:].lower().replace("-", "_")
        if mirrored in call.params:
            return call.params[mirrored]
    if name.lower() in PARAMETER_VALUES:
        return PARAMETER_VALUES[name.lower()]()
    schema = parameter.get("schema", {})
    schemas = [schema, *(s for s in schema.get("anyOf", []) + schema.get("oneOf", []) if s.get("type") != "null")]
    for candidate in schemas:
        for value in (*candidate.get("examples", ()), candidate.get("example"), candidate.get("default"),
                      *candidate.get("enum", ())[:1], candidate.get("minimum")):
            if value is not None:
                return str(value)
    raise AssertionError(f"no value for parameter {parameter}: add one to PARAMETER_VALUES")


def base_call(daemon: RunningDaemon, method: str, template: str) -> Call:
    """The least request to an operation that the daemon answers 2xx; its parameters are added to it."""
    path_values = {"job_id": str(daemon.running_job_id), "version": "1"}
    path = re.sub(r"\{([^}]+)\}", lambda m: path_values[m.group(1)], template)
    operation = f"{method} {template}"
    if template in BATCH_OPERATIONS and method == "POST":
        raw, params = encode_raw_batch(daemon.images(2, seed=5), daemon.labels(2))
        return Call(method, path, params, content=raw, content_type=RAW_MEDIA_TYPE)
    if operation == "POST /v1/drift":
        return json_call(method, path, {"type": "input", "context": "cam-params", "min_samples": 100_000})
    if operation == "POST /v1/jobs":  # a job needs samples, and none pending in its context
        context = daemon.fresh_context("cam-job")
        raw, params = encode_raw_batch(daemon.images(MIN_JOB_SAMPLES, 6), daemon.labels(MIN_JOB_SAMPLES), context)
        posted = daemon.send(Call("POST", "/v1/samples", params, content=raw, content_type=RAW_MEDIA_TYPE))
        assert posted.status == 201, posted.describe()
        return json_call(method, path, {"context": context, "block": "bn"})
    assert "requestBody" not in daemon.document["paths"][template][method.lower()], (
        f"{operation} takes a body: give base_call a request with one")
    return Call(method, path)


@pytest.fixture(scope="module")
def all_parameter_checks(daemon: RunningDaemon) -> list[Checked]:
    """For each operation with a body or parameters, one request with every query parameter and header
    the document declares for it, validated."""
    checked = []
    for method, template, operation in operations(daemon.document):
        if "requestBody" not in operation and not operation.get("parameters"):
            continue
        call = base_call(daemon, method, template)
        # Query parameters first: the X-* headers repeat them.
        for parameter in sorted(operation.get("parameters", []), key=lambda p: p["in"] != "query"):
            if parameter["in"] == "query" and parameter["name"] not in call.params:
                call.params[parameter["name"]] = parameter_value(parameter, call)
            elif parameter["in"] == "header" and parameter["name"].lower() not in {h.lower() for h in call.headers}:
                call.headers[parameter["name"]] = parameter_value(parameter, call)
        checked.append(daemon.send_and_check(call))
    return checked


def test_a_request_with_every_declared_parameter_validates_and_is_accepted(
    all_parameter_checks: list[Checked],
) -> None:
    assert all_parameter_checks
    assert_valid(all_parameter_checks)
    assert_answered(all_parameter_checks, 200, 300)


# --- the validator validates -----------------------------------------------------------------------------

BAD_BATCHES = (
    "samples-json-without-labels",
    "samples-json-int16",
    "samples-json-label-out-of-range",
    "samples-octet-stream-int16",
    "predict-json-wrong-image-size",
)


def bad_batch(daemon: RunningDaemon, case: str) -> tuple[Call, str]:
    """A batch the daemon refuses, and what the validator must say about it."""
    x = daemon.images(1, seed=7)
    body = encode_json_batch(x, [1])
    channels, height, width = daemon.image_shape
    if case == "samples-json-without-labels":
        body.pop("labels")
        return json_call("POST", "/v1/samples", body), "'labels' is a required property"
    if case == "samples-json-int16":
        return json_call("POST", "/v1/samples", {**body, "dtype": "int16"}), "'int16' is not one of"
    if case == "samples-json-label-out-of-range":
        classes = daemon.num_classes
        return (json_call("POST", "/v1/samples", {**body, "labels": [classes]}),
                f"{classes} is greater than the maximum of {classes - 1}")
    if case == "samples-octet-stream-int16":
        raw, params = encode_raw_batch(x, [1])
        return (Call("POST", "/v1/samples", {**params, "dtype": "int16"}, content=raw, content_type=RAW_MEDIA_TYPE),
                "'int16' is not one of")
    assert case == "predict-json-wrong-image-size"
    smaller = encode_json_batch(np.zeros((1, channels, height - 4, width), dtype=np.uint8), None)
    return json_call("POST", "/v1/predict", smaller), f"{height} was expected"


@pytest.mark.parametrize("case", BAD_BATCHES)
def test_a_request_the_daemon_refuses_fails_validation(daemon: RunningDaemon, case: str) -> None:
    call, reason = bad_batch(daemon, case)
    checked = daemon.send_and_check(call)
    assert checked.errors, f"the validator let through {checked.exchange.describe()}"
    assert any(reason in error for error in checked.errors), "\n".join(checked.errors)
    assert_answered([checked], 400, 500)


# --- coverage --------------------------------------------------------------------------------------------


def json_forms(operation: dict[str, Any]) -> list[dict[str, Any]]:
    """The alternatives (``oneOf``) of an operation's JSON body, where it has them."""
    content = operation.get("requestBody", {}).get("content", {})
    return list(content.get("application/json", {}).get("schema", {}).get("oneOf", []))


def is_form_of(body: Any, form: dict[str, Any]) -> bool:
    """Whether ``body`` is meant as ``form``: it has the form's required fields and no others (whether it
    is valid is openapi-core's to say)."""
    return isinstance(body, dict) and set(form.get("required", [])) <= body.keys() <= set(form.get("properties", {}))


def declared_inputs(document: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(operation, where, name) of each query parameter, header, body media type and JSON body form."""
    declared = set()
    for method, template, operation in operations(document):
        op = f"{method} {template}"
        for parameter in operation.get("parameters", []):
            if parameter["in"] in ("query", "header"):
                declared.add((op, parameter["in"], parameter["name"].lower()))
        for media_type in operation.get("requestBody", {}).get("content", {}):
            declared.add((op, "body", media_type))
        for index, form in enumerate(json_forms(operation)):
            declared.add((op, "json form", form.get("title", str(index))))
    return declared


def exercised_inputs(document: dict[str, Any], checked: list[Checked]) -> set[tuple[str, str, str]]:
    """The same triples for requests that were validated (whether they passed, the other tests say)."""
    exercised = set()
    for c in checked:
        method, template = c.operation.split(" ", 1)
        operation = document["paths"][template][method.lower()]
        exercised |= {(c.operation, "query", name.lower()) for name in c.exchange.query_names}
        exercised |= {(c.operation, "header", name) for name in c.exchange.header_names}
        if c.exchange.body and c.exchange.media_type:
            exercised.add((c.operation, "body", c.exchange.media_type))
        if c.exchange.media_type == "application/json":
            body = json.loads(c.exchange.body)
            exercised |= {(c.operation, "json form", form.get("title", str(index)))
                          for index, form in enumerate(json_forms(operation)) if is_form_of(body, form)}
    return exercised


def test_every_operation_parameter_and_body_form_in_the_document_was_validated(
    daemon: RunningDaemon,
    client_checks: list[Checked],
    form_checks: dict[tuple[str, str], Checked],
    all_parameter_checks: list[Checked],
) -> None:
    checked = [*client_checks, *form_checks.values(), *all_parameter_checks]
    document = daemon.document
    # No exclusions. Operations with neither a body nor parameters (/healthz, /v1/status, /metrics and,
    # today, /v1/models) have nothing to validate but their path; the client calls them all the same.
    with_inputs = {f"{method} {template}" for method, template, operation in operations(document)
                   if "requestBody" in operation or operation.get("parameters")}
    assert with_inputs >= {"POST /v1/samples", "POST /v1/predict", "GET /v1/energy"}, with_inputs
    validated = {c.operation for c in checked}
    assert with_inputs <= validated, f"never validated: {sorted(with_inputs - validated)}"
    missing = declared_inputs(document) - exercised_inputs(document, checked)
    assert not missing, f"declared but never sent in a request that was validated: {sorted(missing)}"
