"""Request guards shared by the HTTP services: a body-size limit and bearer-token checks.

- ``BodyLimitMiddleware(app, max_bytes=N, field="rollout.max_body_bytes")``: a pure ASGI middleware
  that answers 413 (``{"detail": ..., "limit": N}``) to a request whose declared
  ``Content-Length`` or streamed body exceeds ``N`` bytes, before the application reads or parses
  anything; the body of an accepted request is handed on unchanged.
- ``bearer_matches(header_token, secret)``: constant-time comparison with a configured secret.
- ``bearer_dependency(secret, field)``: a FastAPI dependency answering 401 (with
  ``WWW-Authenticate: Bearer``) unless the request carries ``Authorization: Bearer <secret>``; no
  check at all while ``secret`` is None.

Tokens are compared, never logged or echoed: error messages name the config field, not the value.
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Awaitable, Callable

from fastapi import HTTPException, Request
from pydantic import SecretStr

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


async def _send_json(send: Callable[[dict], Awaitable[None]], status: int, body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
                    (b"connection", b"close")],
    })
    await send({"type": "http.response.body", "body": raw})


class BodyLimitMiddleware:
    """Answer 413 to request bodies over ``max_bytes`` (checked before the app sees the request)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, field: str) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)
        self.field = field

    def _too_large(self, size: int | None) -> dict[str, Any]:
        what = f"request body of {size} bytes" if size is not None else "request body"
        return {"detail": f"{what} exceeds {self.field}={self.max_bytes} bytes", "limit": self.max_bytes}

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_json(send, 400, {"detail": "Content-Length header is not an integer"})
                    return
                if declared > self.max_bytes:
                    await _send_json(send, 413, self._too_large(declared))
                    return
        # Read the (chunked or declared-small) body up to the limit, then replay it to the app.
        chunks: list[bytes] = []
        size = 0
        more = True
        disconnect: dict | None = None
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnect = message
                break
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await _send_json(send, 413, self._too_large(None))
                return
            chunks.append(body)
            more = bool(message.get("more_body", False))
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay_receive() -> dict:
            if replay:
                return replay.pop()
            if disconnect is not None:
                return disconnect
            return await receive()

        await self.app(scope, replay_receive, send)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value (None otherwise)."""
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return None


def bearer_matches(token: str | None, expected: SecretStr | str | None) -> bool:
    """``token`` equals the configured secret (constant time); False when either is missing."""
    if not token or expected is None:
        return False
    want = expected.get_secret_value() if isinstance(expected, SecretStr) else str(expected)
    return secrets.compare_digest(token.encode(), want.encode())


def bearer_dependency(expected: SecretStr | None, field: str) -> Callable[..., None]:
    """A FastAPI dependency: 401 unless ``Authorization: Bearer <expected>`` (no-op when unset)."""

    def check(request: Request) -> None:
        if expected is None:
            return
        if not bearer_matches(bearer_token(request.headers.get("authorization")), expected):
            raise HTTPException(401, f"this endpoint requires 'Authorization: Bearer <{field}>'",
                                headers={"WWW-Authenticate": "Bearer"})

    return check


def auth_headers(token: SecretStr | str | None) -> dict[str, str]:
    """The request headers that present ``token`` (none when it is unset): what the clients send."""
    if token is None:
        return {}
    value = token.get_secret_value() if isinstance(token, SecretStr) else str(token)
    return {"Authorization": f"Bearer {value}"} if value else {}
