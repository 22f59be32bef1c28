"""Public HTTP client of the verifier service (what rollout servers and evaluation use).

``VerifierClient(base_url, timeout_s, retries)``:
- ``verify(items) -> list[VerifyResult]`` (sync) and ``averify(items)`` (async), in item order;
  items are ``VerifyItem``s, dicts with the same fields, or ``(response, gold)`` tuples;
- large lists are split into batches of at most ``batch_size`` items (the server's ``max_items``);
- connection errors, timeouts and 5xx answers are retried ``retries`` times with exponential
  backoff (``backoff_s`` doubling up to ``backoff_max_s``); then ``VerifierUnavailable`` is raised;
- a 4xx answer raises ``VerifierRequestError`` at once, with the server's message (e.g. the limit
  that a 413 names);
- connections are kept: one ``httpx.Client`` for the sync calls and one ``httpx.AsyncClient`` per
  event loop for the async ones (a new client per call would build a new TLS context each time,
  which cost a rollout server about a third of its CPU); after the verifier was unreachable the
  async client is dropped and the next call opens fresh connections; ``close()`` / ``aclose()``
  release them.

``VerifierClient.from_config(cfg)`` uses ``verifier.base_url()``, ``verifier.max_items``,
``verifier.api_token`` (sent as ``Authorization: Bearer <token>``) and the rollout section's
``verifier_timeout_s``/``verifier_retries``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Iterable, Sequence

import httpx
from pydantic import SecretStr

from common.config import RethinkerConfig
from common.errors import VerifierServiceError
from common.http_guard import auth_headers
from common.schemas.verifier import VerifyItem, VerifyResult

__all__ = ["VerifierClient", "VerifierError", "VerifierRequestError", "VerifierUnavailable", "VerifyItem", "VerifyResult"]


class VerifierError(VerifierServiceError, RuntimeError):
    """Base of the client's errors."""


class VerifierRequestError(VerifierError):
    """The server rejected the request (4xx); retrying the same request will not help."""

    def __init__(self, status: int, detail: Any) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"verifier rejected the request ({status}): {detail}")


class VerifierUnavailable(VerifierError):
    """The server could not be reached or kept failing (connection errors, timeouts, 5xx)."""


def _as_item(it: Any) -> VerifyItem:
    if isinstance(it, VerifyItem):
        return it
    if isinstance(it, dict):
        return VerifyItem.model_validate(it, strict=False)  # lenient for callers (numpy bools, ...)
    if isinstance(it, (tuple, list)) and len(it) in (2, 3):
        return VerifyItem(response=it[0], gold=it[1], question=it[2] if len(it) == 3 else None)
    raise TypeError(f"cannot make a verify item from {type(it).__name__}")


def _detail(resp: httpx.Response) -> Any:
    try:
        body = resp.json()
        return body.get("detail", body) if isinstance(body, dict) else body
    except ValueError:
        return resp.text[:500]


class VerifierClient:
    def __init__(
        self,
        base_url: str,
        timeout_s: float = 30.0,
        retries: int = 5,
        *,
        batch_size: int = 1024,
        backoff_s: float = 0.2,
        backoff_max_s: float = 5.0,
        token: SecretStr | str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.retries = max(0, retries)
        self.batch_size = max(1, batch_size)
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self._sync: httpx.Client | None = None
        self._async: httpx.AsyncClient | None = None
        self._async_loop: asyncio.AbstractEventLoop | None = None
        self._headers = auth_headers(token)

    @classmethod
    def from_config(cls, cfg: RethinkerConfig) -> "VerifierClient":
        return cls(
            cfg.verifier.base_url(),
            timeout_s=cfg.rollout.verifier_timeout_s,
            retries=cfg.rollout.verifier_retries,
            batch_size=cfg.verifier.max_items,
            token=cfg.verifier.api_token,
        )

    # ------------------------------------------------------------------ helpers

    def _batches(self, items: Iterable[Any]) -> list[list[VerifyItem]]:
        norm = [_as_item(it) for it in items]
        return [norm[i : i + self.batch_size] for i in range(0, len(norm), self.batch_size)]

    @staticmethod
    def _payload(batch: Sequence[VerifyItem]) -> dict[str, Any]:
        return {"items": [it.model_dump() for it in batch]}

    def _delay(self, attempt: int) -> float:
        return min(self.backoff_s * (2**attempt), self.backoff_max_s)

    def _handle(self, resp: httpx.Response, n: int) -> list[VerifyResult] | None:
        """Results, or None for a retryable answer (5xx); raises on 4xx."""
        if resp.status_code >= 500:
            return None
        if resp.status_code >= 400:
            raise VerifierRequestError(resp.status_code, _detail(resp))
        results = [VerifyResult.model_validate(r) for r in resp.json()["results"]]
        if len(results) != n:
            raise VerifierError(f"verifier returned {len(results)} results for {n} items")
        return results

    # ------------------------------------------------------------------ sync

    def _client(self) -> httpx.Client:
        if self._sync is None:
            self._sync = httpx.Client(timeout=self.timeout_s, headers=self._headers)
        return self._sync

    def _post(self, batch: list[VerifyItem]) -> list[VerifyResult]:
        last = "no attempt"
        for attempt in range(self.retries + 1):
            try:
                resp = self._client().post(f"{self.base_url}/v1/verify", json=self._payload(batch))
                out = self._handle(resp, len(batch))
                if out is not None:
                    return out
                last = f"HTTP {resp.status_code}: {_detail(resp)}"
            except httpx.TransportError as exc:  # connection refused/reset, timeouts
                last = f"{type(exc).__name__}: {exc}"
            if attempt < self.retries:
                time.sleep(self._delay(attempt))
        raise VerifierUnavailable(f"verifier at {self.base_url} failed after {self.retries + 1} attempts: {last}")

    def verify(self, items: Iterable[Any]) -> list[VerifyResult]:
        """Verdicts and rewards for ``items``, in order."""
        out: list[VerifyResult] = []
        for batch in self._batches(items):
            out.extend(self._post(batch))
        return out

    def health(self) -> dict[str, Any]:
        resp = self._client().get(f"{self.base_url}/healthz")
        return {"status_code": resp.status_code, **(resp.json() if resp.content else {})}

    def close(self) -> None:
        """Close the sync client; the async one is dropped (``aclose`` closes it from its loop)."""
        if self._sync is not None:
            self._sync.close()
            self._sync = None
        self._async, self._async_loop = None, None

    def __enter__(self) -> "VerifierClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ async

    async def _apost(self, client: httpx.AsyncClient, batch: list[VerifyItem]) -> list[VerifyResult]:
        last = "no attempt"
        for attempt in range(self.retries + 1):
            try:
                resp = await client.post(f"{self.base_url}/v1/verify", json=self._payload(batch))
                out = self._handle(resp, len(batch))
                if out is not None:
                    return out
                last = f"HTTP {resp.status_code}: {_detail(resp)}"
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if attempt < self.retries:
                await asyncio.sleep(self._delay(attempt))
        raise VerifierUnavailable(f"verifier at {self.base_url} failed after {self.retries + 1} attempts: {last}")

    async def averify(self, items: Iterable[Any]) -> list[VerifyResult]:
        """``verify`` for asyncio code; batches are sent concurrently."""
        batches = self._batches(items)
        if not batches:
            return []
        client = self._aclient()
        try:
            parts = await asyncio.gather(*(self._apost(client, b) for b in batches))
        except VerifierUnavailable:
            # after an outage the pool is not trusted: the next call starts from fresh connections
            # (the old client is only forgotten, not closed, so a call still using it is not cut)
            if self._async is client:
                self._async, self._async_loop = None, None
            raise
        return [r for part in parts for r in part]

    def _aclient(self) -> httpx.AsyncClient:
        """This event loop's client (a client is bound to the loop it first ran on)."""
        loop = asyncio.get_running_loop()
        if self._async is None or self._async_loop is not loop or self._async.is_closed:
            self._async = httpx.AsyncClient(timeout=self.timeout_s, headers=self._headers)
            self._async_loop = loop
        return self._async

    async def aclose(self) -> None:
        """Close the async client (when it belongs to the running loop) and the sync one."""
        client, loop = self._async, self._async_loop
        self._async, self._async_loop = None, None
        if client is not None and loop is asyncio.get_running_loop():
            await client.aclose()
        self.close()
