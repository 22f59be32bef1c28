"""The verifier's HTTP API as a FastAPI app: ``create_app(cfg)``.

Endpoints:
- ``POST /v1/verify``: ``{"items": [VerifyItem, ...]}`` -> ``{"results": [VerifyResult, ...]}``, one
  result per item in order, with the verdict, the reward (``algorithm.reward``) and the "wait" count.
- ``GET /healthz``: ``{"status": "ok", "workers": N, "alive": K}`` (503 when no worker is alive).
- ``GET /metrics``: Prometheus text (per-app ``CollectorRegistry``): requests by status, items,
  request latency histogram, timeouts, verdicts by outcome.

Limits (``verifier`` config): a body over ``max_body_bytes`` (checked by
``common.http_guard.BodyLimitMiddleware`` before anything is parsed), more than ``max_items`` items
or a field over ``max_item_chars`` characters gets 413 with the limit in the message; a malformed
body gets 422 with the validation errors.  With ``api_token`` set, ``/v1/verify`` answers 401
unless the request carries ``Authorization: Bearer <verifier.api_token>``.  Grading itself runs in
the worker pool, so no input can produce a 500; an unavailable pool answers 503.  The OpenAPI
document publishes the request body (``VerifyRequest``) and every status code.

Fairness (``PoolBackend``): the items of concurrent requests are dealt to the grading workers one
at a time, round-robin over the requests, so a request of many slow items does not hold a small
request behind it for longer than about one item's time limit (``timeout_s``) per worker.  Each
request has a total grading budget (``request_budget_s``): items not started within it are answered
``timed_out`` with the reason "request budget", so one request ends within about
``request_budget_s + timeout_s``.

The same app serves under uvicorn (``main.serve``) and under Ray Serve (``serve_ray``), which passes
its own batching backend.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Protocol, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import ValidationError

from common.config import RethinkerConfig
from common.http_guard import BodyLimitMiddleware, bearer_matches, bearer_token
from common.schemas.verifier import VerifyItem, VerifyRequest, VerifyResponse

from .grader import Verdict
from .pool import GradePool, PoolClosed, WorkerStartError, result_to_verdict
from .rewards import count_waits, reward

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Backend(Protocol):
    """Where verdicts come from: a local worker pool, or Ray Serve's batching deployment."""

    async def grade(self, items: Sequence[VerifyItem]) -> list[Verdict]: ...

    def health(self) -> dict[str, Any]: ...


@dataclass(eq=False)
class _Job:
    """One request's items in the fair queue."""

    items: list[tuple[str, str, str | None]]
    deadline: float
    future: asyncio.Future
    results: list[Verdict | None] = field(default_factory=list)
    next: int = 0
    left: int = 0
    cancelled: bool = False


class PoolBackend:
    """Grades through a ``GradePool`` owned by this backend (started/stopped with the app).

    One dispatcher task per grading worker takes the next item of the next request in round-robin
    order (``_Job`` queue), so concurrent requests share the workers item by item; a request's items
    not started within ``request_budget_s`` are answered as timed out."""

    def __init__(self, cfg: RethinkerConfig, *, workers: int | None = None) -> None:
        vc = cfg.verifier
        self.timeout_s = vc.timeout_s
        self.budget_s = vc.request_budget_s
        self.pool = GradePool(workers if workers is not None else vc.workers, memory_mb=vc.worker_memory_mb)
        self.budget_exceeded = 0  # items answered without grading because their request ran out of budget
        self._queue: deque[_Job] = deque()
        self._wake: asyncio.Event | None = None
        self._dispatchers: list[asyncio.Task] = []
        self._executor = ThreadPoolExecutor(max_workers=self.pool.size, thread_name_prefix="verifier-dispatch")
        self._loop: asyncio.AbstractEventLoop | None = None

    def _start(self) -> None:
        if self._wake is None:
            self._wake = asyncio.Event()
            self._loop = asyncio.get_running_loop()
        self._dispatchers = [t for t in self._dispatchers if not t.done()]
        while len(self._dispatchers) < self.pool.size:
            self._dispatchers.append(asyncio.create_task(self._dispatch(), name="verifier-dispatch"))

    def _take(self) -> tuple[_Job, int] | None:
        """The next (request, item index), round-robin over the queued requests."""
        while self._queue:
            job = self._queue.popleft()
            if job.cancelled or job.next >= len(job.items):
                continue
            idx = job.next
            job.next += 1
            if job.next < len(job.items):
                self._queue.append(job)  # back of the line: the other requests go first
            return job, idx
        return None

    def _finish(self, job: _Job, idx: int, verdict: Verdict) -> None:
        job.results[idx] = verdict
        job.left -= 1
        if job.left == 0 and not job.future.done():
            job.future.set_result(job.results)

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            got = self._take()
            if got is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            job, idx = got
            if time.monotonic() >= job.deadline:
                self.budget_exceeded += 1
                self._finish(job, idx, Verdict(False, None, f"request budget exceeded (request_budget_s={self.budget_s:g})",
                                               "", True))
                continue
            try:
                [out] = await loop.run_in_executor(self._executor, self.pool.map, [job.items[idx]], self.timeout_s)
            except (PoolClosed, WorkerStartError) as exc:
                job.cancelled = True
                if not job.future.done():
                    job.future.set_exception(exc)
                continue
            self._finish(job, idx, result_to_verdict(out))

    async def grade(self, items: Sequence[VerifyItem]) -> list[Verdict]:
        if not items:
            return []
        self._start()
        assert self._wake is not None
        job = _Job(
            items=[(it.response, it.gold, it.question) for it in items],
            deadline=time.monotonic() + self.budget_s,
            future=asyncio.get_running_loop().create_future(),
            results=[None] * len(items),
            left=len(items),
        )
        self._queue.append(job)
        self._wake.set()
        try:
            return await job.future
        finally:
            job.cancelled = True  # a cancelled request (client gone) stops taking workers

    def health(self) -> dict[str, Any]:
        return {
            "workers": self.pool.size,
            "alive": self.pool.alive(),
            "timeouts": self.pool.timeouts,
            "replaced": self.pool.replaced,
            "budget_exceeded": self.budget_exceeded,
            "queued_requests": len(self._queue),
        }

    def close(self) -> None:
        """Stop the dispatchers (on their loop; callable from any thread) and the pool."""
        if self._loop is not None and not self._loop.is_closed():
            for t in self._dispatchers:
                try:
                    self._loop.call_soon_threadsafe(t.cancel)
                except RuntimeError:  # the loop already stopped
                    pass
        self.pool.close()
        self._executor.shutdown(wait=False, cancel_futures=True)


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("verifier_requests", "HTTP requests to /v1/verify by status code", ["status"], registry=r)
        self.items = Counter("verifier_items", "items graded", registry=r)
        self.latency = Histogram("verifier_request_seconds", "latency of /v1/verify", buckets=LATENCY_BUCKETS, registry=r)
        self.timeouts = Counter("verifier_timeouts", "items that ran past the per-item time limit", registry=r)
        self.verdicts = Counter("verifier_verdicts", "verdicts by outcome", ["verdict"], registry=r)


def _safe_text(s: str | None) -> str | None:
    """Strings that JSON-encode: lone surrogates (valid in a Python str, not in UTF-8) are replaced."""
    if s is None:
        return None
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "replace").decode("utf-8")


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": message, **extra}, status_code=status)


_ERROR_SCHEMA = {"type": "object", "properties": {"detail": {}}, "required": ["detail"]}


def _err(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}


_VERIFY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": VerifyResponse, "description": "one result per item, in order"},
    400: _err("malformed Content-Length header"),
    401: _err("verifier.api_token is set and the request has no matching bearer token"),
    413: _err("body over verifier.max_body_bytes, more than max_items items or a field over max_item_chars"),
    422: _err("the body is not a valid VerifyRequest (the errors name the fields)"),
    503: _err("the grading pool is starting, stopping or cannot start workers"),
}


def _verify_openapi() -> dict[str, Any]:
    """The request body of ``/v1/verify`` for the OpenAPI document (the route reads it itself so
    that the size limits apply before parsing)."""
    schema = VerifyRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
        "x-components": defs,
    }


def _publish_components(app: FastAPI) -> None:
    """Move the ``x-components`` of routes into ``components.schemas`` of the OpenAPI document."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = base()
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        for item in doc.get("paths", {}).values():
            for op in item.values():
                if isinstance(op, dict):
                    schemas.update(op.pop("x-components", {}) or {})
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(cfg: RethinkerConfig | None = None, *, backend: Backend | None = None) -> FastAPI:
    """The verifier app.  Without ``backend`` it owns a ``PoolBackend`` for the app's lifetime."""
    cfg = cfg or RethinkerConfig()
    vc = cfg.verifier
    rcfg = cfg.algorithm.reward
    metrics = _Metrics()
    state: dict[str, Any] = {"backend": backend}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = None
        if state["backend"] is None:
            owned = await asyncio.to_thread(PoolBackend, cfg)
            state["backend"] = owned
        try:
            yield
        finally:
            if owned is not None:
                await asyncio.to_thread(owned.close)
                state["backend"] = None

    app = FastAPI(title="VL-Rethinker verifier", version="1", lifespan=lifespan)
    app.add_middleware(BodyLimitMiddleware, max_bytes=vc.max_body_bytes, field="verifier.max_body_bytes")
    app.state.metrics = metrics
    app.state.verifier = state

    async def _read_body(request: Request) -> bytes | JSONResponse:
        # BodyLimitMiddleware has already refused bodies over max_body_bytes; this is a second guard.
        limit = vc.max_body_bytes
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return _error(413, f"request body exceeds verifier.max_body_bytes={limit}")
        return bytes(body)

    def _check_limits(req: VerifyRequest) -> JSONResponse | None:
        if len(req.items) > vc.max_items:
            return _error(413, f"{len(req.items)} items exceed max_items={vc.max_items} per request")
        for i, it in enumerate(req.items):
            for name in ("response", "gold", "question", "id"):
                val = getattr(it, name)
                if val is not None and len(val) > vc.max_item_chars:
                    return _error(
                        413, f"items[{i}].{name} has {len(val)} characters, exceeding max_item_chars={vc.max_item_chars}"
                    )
        return None

    @app.post("/v1/verify", openapi_extra=_verify_openapi(), responses=_VERIFY_RESPONSES, response_model=None)
    async def verify(request: Request) -> Response:
        t0 = time.perf_counter()
        if vc.api_token is not None and not bearer_matches(bearer_token(request.headers.get("authorization")), vc.api_token):
            resp: Response = JSONResponse({"detail": "POST /v1/verify requires 'Authorization: Bearer <verifier.api_token>'"},
                                          status_code=401, headers={"WWW-Authenticate": "Bearer"})
        else:
            resp = await _verify(request)
        metrics.requests.labels(status=str(resp.status_code)).inc()
        metrics.latency.observe(time.perf_counter() - t0)
        return resp

    async def _verify(request: Request) -> Response:
        t0 = time.perf_counter()
        body = await _read_body(request)
        if isinstance(body, JSONResponse):
            return body
        try:
            req = VerifyRequest.model_validate_json(body)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False, include_context=False)
            return _error(422, "invalid request body", errors=errors[:50])
        limited = _check_limits(req)
        if limited is not None:
            return limited
        be = state["backend"]
        if be is None:
            return _error(503, "verifier is starting or stopping")
        try:
            verdicts = await be.grade(req.items) if req.items else []
        except (PoolClosed, WorkerStartError) as exc:
            return _error(503, f"verifier unavailable: {exc}")
        results = []
        for it, v in zip(req.items, verdicts):
            n_wait = count_waits(it.response)
            r = reward(v, eos=it.eos, n_wait=n_wait, rethought=it.rethought, cfg=rcfg)
            results.append(
                {
                    "id": _safe_text(it.id),
                    "correct": v.correct,
                    "extracted": _safe_text(v.extracted),
                    "reason": _safe_text(v.reason),
                    "reward": r,
                    "n_wait": n_wait,
                    "timed_out": v.timed_out,
                }
            )
            metrics.verdicts.labels(verdict="timeout" if v.timed_out else ("correct" if v.correct else "wrong")).inc()
            if v.timed_out:
                metrics.timeouts.inc()
        metrics.items.inc(len(results))
        return JSONResponse({"results": results, "elapsed_s": round(time.perf_counter() - t0, 6)})

    @app.get("/healthz", responses={200: {"description": "at least one grading worker is alive"},
                                    503: {"description": "starting, stopping, or no worker alive"}})
    async def healthz() -> Response:
        be = state["backend"]
        if be is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        info = be.health()
        ok = info.get("alive", 1) > 0
        return JSONResponse({"status": "ok" if ok else "degraded", **info}, status_code=200 if ok else 503)

    @app.get("/metrics", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
                              "description": "Prometheus text format"}})
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    _publish_components(app)
    return app
