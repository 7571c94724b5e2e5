"""The last line of defence, as pure ASGI middleware: an unexpected exception becomes a JSON 500.

Starlette's own outermost layer answers an unhandled exception with a plain-text
``Internal Server Error`` and re-raises it, so the server logs it a second time. Installed as the
outermost middleware of the app (around the body-size cap and the token guard), :class:`ErrorGuard`
catches the exception first: it logs it once, with its traceback, and answers
``{"error": "...", "field": null}`` with status 500, so nothing behind it sees the exception.

If the response has already started, a second response cannot be sent: the exception is re-raised
unlogged, and the server logs it (once) and closes the connection. Imports no web framework.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger(__name__)


class ErrorGuard:
    """ASGI middleware answering an exception that escapes ``app`` with a JSON 500 (see the module
    docstring); ``logger`` receives the traceback (this module's logger by default)."""

    def __init__(self, app: ASGIApp, logger: logging.Logger | None = None) -> None:
        self.app = app
        self.logger = logger or log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # the lifespan reports its own failures; no websockets here
            await self.app(scope, receive, send)
            return

        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if response_started:
                raise
            method, path = scope.get("method", "?"), scope.get("path", "?")
            self.logger.error("unexpected %s answering %s %s", type(exc).__name__, method, path, exc_info=exc)
            message = (
                f"internal error ({type(exc).__name__}) answering {method} {path}; "
                "the daemon's log holds the traceback"
            )
            await _send_json(send, 500, {"error": message, "field": None})


async def _send_json(send: Send, status: int, document: dict[str, Any]) -> None:
    body = json.dumps(document).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
