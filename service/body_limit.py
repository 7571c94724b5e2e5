"""A cap on request bodies, as pure ASGI middleware: 413 above it, 400 for a bad Content-Length.

Neither uvicorn nor FastAPI limits request bodies by default, and a microcontroller's chunked
upload carries no ``Content-Length``. So :class:`BodySizeLimit` does two things:

* a declared ``Content-Length`` above the cap is answered 413 before the app runs or a byte of
  the body is read (a malformed one is answered 400);
* the bytes are counted as the app reads them through ``receive()``; the read that crosses the
  cap raises inside the app, which stops it, and the middleware answers 413.

An app that reads the body may catch that exception: FastAPI turns any error while it parses a
body parameter into its own 400, and Starlette's ``ServerErrorMiddleware`` sends a 500 before
re-raising. So once the cap is crossed, whatever response the app starts is dropped and the 413
is sent in its place. Only when the app had already started its response before the crossing is
no 413 possible; the exception then propagates and the server closes the connection.

Clients write a whole body before they read the answer, and a server that closes while they
still write makes them see a reset instead of the 413. So after a streamed body crosses the cap,
up to ``drain_bytes`` more (1 MiB by default) are read and thrown away before the 413 goes out;
a body that ends within that budget gets its 413 cleanly, a longer one is cut off. A declared
``Content-Length`` over the cap is answered at once, unread: a client that wants the 413 before
sending its body sends ``Expect: 100-continue``. The 413 and 400 responses carry
``Connection: close``, so the server does not go on reading a refused body to keep the
connection alive.

Wrap the whole app (``BodySizeLimit(create_app(...), ...)``) or add it with
``app.add_middleware(BodySizeLimit, max_body_bytes=...)``; both work. Imports no web framework.
(Starlette 1.x and FastAPI 0.165 have an opt-in ``max_body_size``; this middleware keeps the
daemon's JSON error shape, the drain and the 400, and does not depend on their versions.)
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# More digits than this cannot be a size any cap allows (and int() of a 5,000-digit string
# raises in Python 3.11); such a value is treated as too large, not as malformed.
_MAX_LENGTH_DIGITS = 18
_HUGE_LENGTH = 10**_MAX_LENGTH_DIGITS

#: Bytes read and discarded after a streamed body crosses the cap, so the client can finish
#: writing and read the 413.
DEFAULT_DRAIN_BYTES = 1024 * 1024


class _BodyTooLarge(Exception):
    """Raised from ``receive()`` inside the app when the body grows past the cap."""

    def __init__(self, limit_bytes: int, received_bytes: int) -> None:
        super().__init__(
            f"request body exceeds the limit of {limit_bytes} bytes "
            f"({received_bytes} bytes received so far)"
        )


class BodySizeLimit:
    """ASGI middleware that refuses HTTP request bodies larger than ``max_body_bytes``.

    ``paths_prefix``, when given, limits the cap to request paths that start with it (e.g.
    ``"/v1/"``); other paths and non-HTTP scopes pass through untouched. ``drain_bytes`` bounds
    what is read and discarded after a streamed body crosses the cap (see the module docstring).
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        paths_prefix: str | None = None,
        *,
        drain_bytes: int = DEFAULT_DRAIN_BYTES,
    ) -> None:
        for name, value in (("max_body_bytes", max_body_bytes), ("drain_bytes", drain_bytes)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an integer, got {value!r}")
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.paths_prefix = paths_prefix
        self.drain_bytes = drain_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        prefix = self.paths_prefix
        if scope["type"] != "http" or (
            prefix is not None and not scope.get("path", "").startswith(prefix)
        ):
            await self.app(scope, receive, send)
            return

        declared = _content_length(scope)
        if isinstance(declared, str):
            await _send_error(send, 400, declared, {})
            return
        if declared is not None and declared > self.max_body_bytes:
            extra = {} if declared >= _HUGE_LENGTH else {"content_length_bytes": declared}
            await self._send_too_large(send, extra)
            return

        limit = self.max_body_bytes
        received_bytes = 0
        exceeded = False
        # Whether the server has nothing more to deliver; receive() would then wait for the
        # disconnect, so the drain must not call it.
        body_ended = False
        # Whether a response start has gone out to the server; after that no 413 can be sent.
        forwarded_start = False

        async def counting_receive() -> Message:
            nonlocal received_bytes, exceeded, body_ended
            if exceeded:  # an app that caught the first raise must not read on
                raise _BodyTooLarge(limit, received_bytes)
            message = await receive()
            if message["type"] == "http.request":
                received_bytes += len(message.get("body", b""))
                body_ended = not message.get("more_body", False)
                if received_bytes > limit:
                    exceeded = True
                    raise _BodyTooLarge(limit, received_bytes)
            else:
                body_ended = True  # http.disconnect
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal forwarded_start
            if exceeded and not forwarded_start:
                return  # the app's answer to the overflow (a 400 or 500); the 413 replaces it
            if message["type"] == "http.response.start":
                forwarded_start = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            # Any exception once the cap is crossed is the overflow, possibly wrapped (an
            # ExceptionGroup from a task group, FastAPI's HTTPException(400)).
            if not exceeded or forwarded_start:
                raise
        if exceeded and not forwarded_start:
            if not body_ended:
                await self._drain(receive)
            await self._send_too_large(send, {"received_bytes": received_bytes})

    async def _drain(self, receive: Receive) -> None:
        """Read and discard the rest of the body, up to ``drain_bytes``."""
        drained_bytes = 0
        while drained_bytes <= self.drain_bytes:
            message = await receive()
            if message["type"] != "http.request":
                return
            drained_bytes += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _send_too_large(self, send: Send, extra: dict[str, int]) -> None:
        await _send_error(
            send,
            413,
            f"request body exceeds the limit of {self.max_body_bytes} bytes",
            {"limit_bytes": self.max_body_bytes, **extra},
        )


def _content_length(scope: Scope) -> int | str | None:
    """The declared body length; None when absent, an error message when malformed.

    Repeated headers must agree (RFC 9110 section 8.6); a value too long to be a size counts as
    huge, so it gets a 413, not a 400.
    """
    headers = scope.get("headers", ())
    values = [value for name, value in headers if name.lower() == b"content-length"]
    if not values:
        return None
    texts = {bytes(value).strip() for value in values}
    if len(texts) > 1:
        return "malformed Content-Length header: repeated with different values"
    text = texts.pop()
    if not text or not text.isdigit():  # bytes.isdigit() is ASCII-only: no signs, no spaces
        shown = text[:40].decode("latin-1")
        return f"malformed Content-Length header: {shown!r} is not a number of bytes"
    if len(text) > _MAX_LENGTH_DIGITS:
        return _HUGE_LENGTH
    return int(text)


async def _send_error(send: Send, status: int, message: str, extra: dict[str, Any]) -> None:
    body = json.dumps({"error": message, **extra}).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
