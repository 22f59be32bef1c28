"""Public HTTP client of a rollout server (used by evaluation and the launcher).

    from services.rollout.client import RolloutClient, build_request_messages

    c = RolloutClient("http://127.0.0.1:8300")
    c.wait_ready(timeout_s=120)
    out = c.generate_question("<image>How many circles?", [png_bytes], prompt_suffix=cfg.data.prompt_suffix,
                              temperature=0.0, max_new_tokens=2048, force_rethink=False)
    out["choices"][0]["text"], out["policy_version"]
    c.status()["rethinking"]

``token`` (e.g. ``cfg.rollout.api_token``) is sent as ``Authorization: Bearer <token>``.
``AsyncRolloutClient`` has the same methods as coroutines.  Connection errors, timeouts and 5xx/503
answers are retried with exponential backoff (``retries`` times); a 4xx raises ``RolloutClientError``
at once with the server's reason.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any, Sequence

import httpx
from pydantic import SecretStr

from common.data.prompts import split_question
from common.errors import RolloutServiceError
from common.http_guard import auth_headers


class RolloutClientError(RolloutServiceError, RuntimeError):
    """A request the server rejected (4xx, with its reason) or that kept failing after retries."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _image_part(img: bytes | str) -> dict[str, Any]:
    data = img if isinstance(img, str) else base64.b64encode(bytes(img)).decode()
    return {"type": "image", "image": data}


def build_request_messages(
    question: str, images: Sequence[bytes | str] = (), *, system: str | None = None
) -> list[dict[str, Any]]:
    """The ``messages`` of a ``/v1/generate`` request for ``question`` with ``<image>`` placeholders;
    images are encoded bytes (or base64 strings), sent base64-encoded.  Images are placed by
    ``common.data.prompts.split_question`` (those without a placeholder go first), as in training;
    the server builds the model's chat messages from these."""
    content: list[dict[str, Any]] = []
    for piece in split_question(question, len(images)):
        content.append(_image_part(images[piece]) if isinstance(piece, int) else {"type": "text", "text": piece})
    msgs: list[dict[str, Any]] = []
    if system is not None:
        msgs.append({"role": "system", "content": system})
    msgs.append({"role": "user", "content": content})
    return msgs


def _generate_body(messages: list[dict[str, Any]], kw: dict[str, Any]) -> dict[str, Any]:
    sampling_keys = ("n", "temperature", "top_p", "top_k", "max_new_tokens", "seed")
    body: dict[str, Any] = {"messages": messages, "sampling": {k: kw.pop(k) for k in sampling_keys if k in kw}}
    for k in ("prompt_suffix", "force_rethink", "return_token_ids", "return_logprobs"):
        if k in kw:
            body[k] = kw.pop(k)
    if kw:
        raise TypeError(f"unknown generate arguments: {sorted(kw)}")
    return body


def _error(resp: httpx.Response) -> RolloutClientError:
    try:
        detail = resp.json().get("detail", resp.text)
    except ValueError:
        detail = resp.text
    return RolloutClientError(f"{resp.request.method} {resp.request.url.path} -> {resp.status_code}: {detail}", resp.status_code)


class RolloutClient:
    """Synchronous client."""

    def __init__(
        self, base_url: str, *, timeout_s: float = 600.0, retries: int = 3, backoff_s: float = 0.5, token: SecretStr | str | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s, headers=auth_headers(token))

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                resp = self._http.request(method, path, **kw)
                if resp.status_code < 500:
                    return resp
                last = _error(resp)
            except httpx.TransportError as exc:
                last = exc
            if attempt < self.retries:
                time.sleep(self.backoff_s * 2**attempt)
        raise RolloutClientError(f"{method} {self.base_url}{path} failed after {self.retries + 1} attempts: {last}")

    def generate(self, messages: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
        """``POST /v1/generate``; keyword args: n, temperature, top_p, top_k, max_new_tokens, seed,
        prompt_suffix, force_rethink, return_token_ids, return_logprobs."""
        resp = self._request("POST", "/v1/generate", json=_generate_body(messages, dict(kw)))
        if resp.status_code != 200:
            raise _error(resp)
        return resp.json()

    def generate_question(self, question: str, images: Sequence[bytes | str] = (), **kw: Any) -> dict[str, Any]:
        return self.generate(build_request_messages(question, images), **kw)

    def status(self) -> dict[str, Any]:
        resp = self._request("GET", "/v1/status")
        if resp.status_code != 200:
            raise _error(resp)
        return resp.json()

    def healthz(self) -> bool:
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout_s: float = 300.0, poll_s: float = 0.25) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.healthz():
                return True
            time.sleep(poll_s)
        return False

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "RolloutClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRolloutClient:
    """Asyncio client with the same methods."""

    def __init__(
        self, base_url: str, *, timeout_s: float = 600.0, retries: int = 3, backoff_s: float = 0.5, token: SecretStr | str | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s, headers=auth_headers(token))

    async def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                resp = await self._http.request(method, path, **kw)
                if resp.status_code < 500:
                    return resp
                last = _error(resp)
            except httpx.TransportError as exc:
                last = exc
            if attempt < self.retries:
                await asyncio.sleep(self.backoff_s * 2**attempt)
        raise RolloutClientError(f"{method} {self.base_url}{path} failed after {self.retries + 1} attempts: {last}")

    async def generate(self, messages: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
        resp = await self._request("POST", "/v1/generate", json=_generate_body(messages, dict(kw)))
        if resp.status_code != 200:
            raise _error(resp)
        return resp.json()

    async def generate_question(self, question: str, images: Sequence[bytes | str] = (), **kw: Any) -> dict[str, Any]:
        return await self.generate(build_request_messages(question, images), **kw)

    async def status(self) -> dict[str, Any]:
        resp = await self._request("GET", "/v1/status")
        if resp.status_code != 200:
            raise _error(resp)
        return resp.json()

    async def healthz(self) -> bool:
        try:
            return (await self._http.get("/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    async def wait_ready(self, timeout_s: float = 300.0, poll_s: float = 0.25) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if await self.healthz():
                return True
            await asyncio.sleep(poll_s)
        return False

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncRolloutClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
