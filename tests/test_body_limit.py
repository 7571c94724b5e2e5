"""The request body cap: 413 by Content-Length before the app runs, 413 while counting a chunked
body, 400 for a malformed Content-Length; in process and through a real uvicorn server."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import Body, FastAPI, Request

from service.body_limit import BodySizeLimit

CAP = 1024
TOO_LARGE = {"error": f"request body exceeds the limit of {CAP} bytes", "limit_bytes": CAP}


@dataclass
class Calls:
    """What the endpoints saw: how often each ran and the byte counts they finished reading."""

    started: dict[str, int] = field(default_factory=dict)
    read_bytes: list[int] = field(default_factory=list)
    #: The Content-Length each echo request declared (None: chunked).
    declared: list[str | None] = field(default_factory=list)

    def start(self, name: str) -> None:
        self.started[name] = self.started.get(name, 0) + 1


def make_app(calls: Calls) -> FastAPI:
    """A tiny app whose endpoints read the body the ways real endpoints do."""
    app = FastAPI()

    @app.post("/v1/echo")
    async def echo(request: Request) -> dict[str, int]:
        calls.start("echo")
        calls.declared.append(request.headers.get("content-length"))
        body = await request.body()
        calls.read_bytes.append(len(body))
        return {"bytes": len(body)}

    @app.post("/v1/parsed")
    async def parsed(payload: dict[str, Any] = Body(...)) -> dict[str, int]:
        # FastAPI reads this body itself and turns any error while reading into its own 400.
        calls.start("parsed")
        return {"keys": len(payload)}

    @app.post("/v1/swallow")
    async def swallow(request: Request) -> dict[str, str]:
        # An endpoint that catches everything must not turn the overflow into a 200.
        calls.start("swallow")
        try:
            await request.body()
        except Exception:
            return {"outcome": "swallowed"}
        return {"outcome": "read"}

    @app.post("/other/echo")
    async def other_echo(request: Request) -> dict[str, int]:
        calls.start("other")
        return {"bytes": len(await request.body())}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


@pytest.fixture
def calls() -> Calls:
    return Calls()


class Client:
    """Requests to an ASGI app in process through httpx's ASGITransport, which hands a body
    to the app chunk by chunk as the client produces it (Starlette's TestClient is deprecated
    with this httpx)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def post(
        self, path: str, content: bytes | Iterator[bytes], headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return asyncio.run(self._request("POST", path, content, headers))

    def get(self, path: str) -> httpx.Response:
        return asyncio.run(self._request("GET", path, None, None))

    async def _request(
        self,
        method: str,
        path: str,
        content: bytes | Iterator[bytes] | None,
        headers: dict[str, str] | None,
    ) -> httpx.Response:
        body: Any = content
        if content is not None and not isinstance(content, bytes):
            body = _aiter(content)  # an AsyncClient streams only async iterables
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.request(method, path, content=body, headers=headers)


async def _aiter(parts: Iterator[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.fixture
def client(calls: Calls) -> Client:
    return Client(BodySizeLimit(make_app(calls), max_body_bytes=CAP))


def chunks(total: int, size: int = 100) -> Iterator[bytes]:
    """``total`` bytes as a generator, so clients send them chunked without a Content-Length."""
    sent = 0
    while sent < total:
        piece = min(size, total - sent)
        sent += piece
        yield b"x" * piece


# --- in process ------------------------------------------------------------------------------


def test_under_the_cap_passes(client: Client, calls: Calls) -> None:
    response = client.post("/v1/echo", content=b"a" * 10)
    assert response.status_code == 200 and response.json() == {"bytes": 10}
    assert calls.read_bytes == [10]


def test_exactly_at_the_cap_passes(client: Client, calls: Calls) -> None:
    assert client.post("/v1/echo", content=b"a" * CAP).json() == {"bytes": CAP}
    chunked = client.post("/v1/echo", content=chunks(CAP))
    assert chunked.status_code == 200 and chunked.json() == {"bytes": CAP}
    assert calls.read_bytes == [CAP, CAP]


def test_declared_length_over_the_cap_is_refused_before_the_endpoint(
    client: Client, calls: Calls
) -> None:
    response = client.post("/v1/echo", content=b"a" * (CAP + 1))
    assert response.status_code == 413
    assert response.json() == {**TOO_LARGE, "content_length_bytes": CAP + 1}
    assert response.headers["content-type"] == "application/json"
    assert response.headers["connection"] == "close"
    assert calls.started == {}  # the endpoint never ran


def test_chunked_body_over_the_cap_is_refused_while_streaming(
    client: Client, calls: Calls
) -> None:
    response = client.post("/v1/echo", content=chunks(CAP + 1))
    assert response.status_code == 413
    body = response.json()
    assert body["error"] == TOO_LARGE["error"] and body["limit_bytes"] == CAP
    assert CAP < body["received_bytes"] <= CAP + 100  # stopped at the chunk that crossed
    assert calls.started == {"echo": 1} and calls.read_bytes == []  # it never got the body
    assert calls.declared == [None]  # sent chunked: no length to trust


def test_overflow_is_413_even_where_fastapi_would_answer_400(
    client: Client, calls: Calls
) -> None:
    as_json = {"content-type": "application/json"}
    ok = client.post("/v1/parsed", content=b'{"a": 1}', headers=as_json)
    assert ok.status_code == 200 and ok.json() == {"keys": 1}
    text = json.dumps({"k": "v" * 2 * CAP}).encode()
    refused = client.post("/v1/parsed", content=iter([text[:CAP], text[CAP:]]), headers=as_json)
    assert refused.status_code == 413 and refused.json()["error"] == TOO_LARGE["error"]
    assert calls.started == {"parsed": 1}  # FastAPI reads a body parameter before the call


def test_overflow_is_413_even_when_the_endpoint_catches_it(
    client: Client, calls: Calls
) -> None:
    response = client.post("/v1/swallow", content=chunks(3 * CAP))
    assert response.status_code == 413
    assert calls.started == {"swallow": 1}


def test_paths_outside_the_prefix_are_not_limited(calls: Calls) -> None:
    client = Client(BodySizeLimit(make_app(calls), max_body_bytes=CAP, paths_prefix="/v1/"))
    assert client.post("/other/echo", content=b"a" * (5 * CAP)).json() == {"bytes": 5 * CAP}
    assert client.post("/v1/echo", content=b"a" * (5 * CAP)).status_code == 413
    assert client.get("/healthz").json() == {"status": "ok"}


def test_works_as_fastapi_middleware(calls: Calls) -> None:
    # Added this way it sits inside Starlette's ServerErrorMiddleware, which must not get to
    # answer the overflow with a 500.
    app = make_app(calls)
    app.add_middleware(BodySizeLimit, max_body_bytes=CAP)
    client = Client(app)
    assert client.post("/v1/echo", content=b"a" * CAP).status_code == 200
    assert client.post("/v1/echo", content=b"a" * (CAP + 1)).status_code == 413
    for path in ("/v1/echo", "/v1/parsed", "/v1/swallow"):
        response = client.post(path, content=chunks(2 * CAP))
        assert response.status_code == 413, path
        assert response.json()["error"] == TOO_LARGE["error"]


# --- at the ASGI level: headers no HTTP client would send ------------------------------------


@dataclass
class Exchange:
    status: int | None = None
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes = b""
    app_ran: bool = False
    #: Body messages nobody read; receive() calls after the body ended (a server would block).
    unread: int = 0
    reads_after_end: int = 0

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    limit_bytes: int,
    headers: list[tuple[bytes, bytes]],
    parts: list[bytes],
    *,
    respond_first: bool = False,
    drain_bytes: int = 1 << 20,
) -> Exchange:
    """Run one request through ``BodySizeLimit`` around a bare ASGI app that reads the body."""
    exchange = Exchange()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        exchange.app_ran = True
        if respond_first:  # a streaming response that starts before the body is read
            await send({"type": "http.response.start", "status": 200, "headers": []})
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if not respond_first:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(body)).encode()})

    messages = [
        {"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
        for i, part in enumerate(parts)
    ]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        exchange.reads_after_end += 1
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert exchange.status is None, "a second response start"
            exchange.status = message["status"]
            exchange.headers = dict(message["headers"])
        else:
            exchange.body += message.get("body", b"")

    scope = {"type": "http", "method": "POST", "path": "/v1/samples", "headers": headers}
    try:
        asyncio.run(BodySizeLimit(app, limit_bytes, drain_bytes=drain_bytes)(scope, receive, send))
    finally:
        exchange.unread = len(messages)
    return exchange


@pytest.mark.parametrize(
    ("values", "shown"),
    [
        ([b"abc"], "'abc'"),
        ([b"-1"], "'-1'"),
        ([b"+5"], "'+5'"),
        ([b"1.5"], "'1.5'"),
        ([b"0x10"], "'0x10'"),
        ([b""], "''"),
        ([b"\xd9\xa3"], "'Ù£'"),  # an Arabic-Indic digit: str.isdigit() would take it
    ],
)
def test_malformed_content_length_is_400(values: list[bytes], shown: str) -> None:
    exchange = call(CAP, [(b"content-length", v) for v in values], [b"abc"])
    assert exchange.status == 400 and not exchange.app_ran
    assert exchange.json() == {
        "error": f"malformed Content-Length header: {shown} is not a number of bytes"
    }


def test_conflicting_content_lengths_are_400() -> None:
    exchange = call(CAP, [(b"content-length", b"3"), (b"Content-Length", b"4")], [b"abc"])
    assert exchange.status == 400 and not exchange.app_ran
    assert exchange.json() == {
        "error": "malformed Content-Length header: repeated with different values"
    }


def test_malformed_content_length_through_httpx_is_400(client: Client, calls: Calls) -> None:
    response = client.post("/v1/echo", content=b"abc", headers={"content-length": "three"})
    assert response.status_code == 400
    assert response.json()["error"] == (
        "malformed Content-Length header: 'three' is not a number of bytes"
    )
    assert calls.started == {}


def test_repeated_equal_content_lengths_and_padding_are_accepted() -> None:
    exchange = call(CAP, [(b"content-length", b" 3 "), (b"content-length", b"3")], [b"abc"])
    assert (exchange.status, exchange.body) == (200, b"3")


def test_enormous_content_length_is_413_not_400() -> None:
    exchange = call(CAP, [(b"content-length", b"9" * 5000)], [b"abc"])
    assert exchange.status == 413 and not exchange.app_ran
    assert exchange.json() == TOO_LARGE  # no number worth echoing


def test_a_body_longer_than_its_content_length_is_still_counted() -> None:
    exchange = call(CAP, [(b"content-length", b"10")], [b"a" * 600, b"a" * 600])
    assert exchange.status == 413 and exchange.app_ran
    assert exchange.json() == {**TOO_LARGE, "received_bytes": 1200}
    assert exchange.reads_after_end == 0  # the last part ended the body: nothing to drain


def test_the_rest_of_a_refused_body_is_drained_then_cut_off() -> None:
    # Drained within the budget: the client finishes writing and reads its 413.
    exchange = call(CAP, [], [b"a" * 600] * 5, drain_bytes=2000)
    assert exchange.status == 413 and exchange.json()["received_bytes"] == 1200
    assert (exchange.unread, exchange.reads_after_end) == (0, 0)
    # Past the budget: the 413 goes out with the body unread; Connection: close ends it.
    exchange = call(CAP, [], [b"a" * 600] * 10, drain_bytes=1000)
    assert exchange.status == 413 and exchange.headers[b"connection"] == b"close"
    assert exchange.unread == 10 - 2 - 2  # two counted, two drained (1200 > 1000 bytes)


def test_overflow_after_the_response_started_propagates() -> None:
    # The 200 is on the wire: a 413 is impossible, so the error reaches the server, which
    # closes the connection instead of letting the app believe it read the whole body.
    with pytest.raises(Exception, match=f"exceeds the limit of {CAP} bytes"):
        call(CAP, [], [b"a" * 600, b"a" * 600], respond_first=True)


def test_zero_cap_allows_only_empty_bodies() -> None:
    assert call(0, [], [b""]).status == 200
    assert call(0, [], [b"a"]).status == 413


def test_other_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    async def nothing() -> dict[str, Any]:
        raise AssertionError("not called")

    async def ignore(message: Any) -> None:
        raise AssertionError("not called")

    limited = BodySizeLimit(app, 0)
    asyncio.run(limited({"type": "lifespan"}, nothing, ignore))
    asyncio.run(limited({"type": "websocket", "path": "/", "headers": []}, nothing, ignore))
    assert seen == ["lifespan", "websocket"]


def test_rejects_a_bad_cap() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        BodySizeLimit(make_app(Calls()), -1)
    with pytest.raises(TypeError, match="integer"):
        BodySizeLimit(make_app(Calls()), 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="drain_bytes"):
        BodySizeLimit(make_app(Calls()), 10, drain_bytes=-1)


# --- through a real uvicorn server -----------------------------------------------------------


@pytest.fixture(scope="module")
def server_port() -> Iterator[tuple[int, Calls]]:
    """A real uvicorn server on 127.0.0.1 and an ephemeral port, run in a thread."""
    calls = Calls()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        BodySizeLimit(make_app(calls), max_body_bytes=CAP),
        log_level="warning",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped during start-up"
        assert time.monotonic() < deadline, "uvicorn did not start within 10 s"
        time.sleep(0.01)
    try:
        yield port, calls
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


def post(port: int, path: str, body: bytes | Iterator[bytes]) -> tuple[int, dict[str, str], Any]:
    """POST with http.client: a generator body goes out with Transfer-Encoding: chunked."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        request_headers = {"content-type": "application/octet-stream"}
        connection.request("POST", path, body=body, headers=request_headers)
        response = connection.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, headers, json.loads(response.read())
    finally:
        connection.close()


def test_real_server_counts_a_chunked_body(server_port: tuple[int, Calls]) -> None:
    port, calls = server_port
    status, headers, body = post(port, "/v1/echo", chunks(CAP, size=256))
    assert (status, body) == (200, {"bytes": CAP})

    status, headers, body = post(port, "/v1/echo", chunks(4 * CAP, size=256))
    assert status == 413
    # uvicorn hands over whatever has arrived, several chunks at a time.
    assert body.keys() == {*TOO_LARGE, "received_bytes"}
    assert CAP < body["received_bytes"] <= 4 * CAP
    assert headers["connection"] == "close"
    assert calls.read_bytes == [CAP]  # the refused body never reached the endpoint whole
    assert calls.declared == [None, None]  # both went out chunked, without a length


def test_real_server_refuses_a_declared_length(server_port: tuple[int, Calls]) -> None:
    port, calls = server_port
    before = dict(calls.started)
    status, _, body = post(port, "/v1/echo", b"a" * (CAP + 1))
    assert (status, body) == (413, {**TOO_LARGE, "content_length_bytes": CAP + 1})
    assert calls.started == before
    status, _, body = post(port, "/v1/parsed", chunks(2 * CAP, size=128))
    assert status == 413 and body["error"] == TOO_LARGE["error"]


def test_real_server_answers_expect_100_continue_with_413(server_port: tuple[int, Calls]) -> None:
    # A client that asks first never sends the refused body: uvicorn only says "100 Continue"
    # once the app reads, and the middleware refuses without reading.
    port, _ = server_port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000000\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert json.loads(body) == {**TOO_LARGE, "content_length_bytes": 5_000_000}
