"""The verifier's HTTP API as a FastAPI app: ``create_app(cfg)``.

Endpoints:
- ``POST /v1/verify``: ``{"items": [VerifyItem, ...]}`` -> ``{"results": [VerifyResult, ...]}``, one
  result per item in order, with the verdict, the reward (``algorithm.reward``) and the "wait" count.
- ``GET /healthz``: ``{"status": "ok", "workers": N, "alive": K}`` (503 when no worker is alive).
- ``GET /metrics``: Prometheus text (per-app ``CollectorRegistry``): requests by status, items,
  request latency histogram, timeouts, verdicts by outcome.

Limits (``verifier`` config): a body over ``max_body_bytes``, more than ``max_items`` items or a
field over ``max_item_chars`` characters gets 413 with the limit in the message; a malformed body
gets 422 with the validation errors.  The body is read and validated here (not by FastAPI's
parameter machinery) so that the size limit applies before any parsing.  Grading itself runs in the
worker pool, so no input can produce a 500; an unavailable pool answers 503.

The same app serves under uvicorn (``main.serve``) and under Ray Serve (``serve_ray``), which passes
its own batching backend.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Protocol, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import ValidationError

from common.config import RethinkerConfig

from .grader import Verdict
from .pool import GradePool, PoolClosed, WorkerStartError, grade_many
from .rewards import count_waits, reward
from .schemas import VerifyItem, VerifyRequest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Backend(Protocol):
    """Where verdicts come from: a local worker pool, or Ray Serve's batching deployment."""

    async def grade(self, items: Sequence[VerifyItem]) -> list[Verdict]: ...

    def health(self) -> dict[str, Any]: ...


class PoolBackend:
    """Grades through a ``GradePool`` owned by this backend (started/stopped with the app)."""

    def __init__(self, cfg: RethinkerConfig, *, workers: int | None = None) -> None:
        vc = cfg.verifier
        self.timeout_s = vc.timeout_s
        self.pool = GradePool(workers if workers is not None else vc.workers, memory_mb=vc.worker_memory_mb)

    async def grade(self, items: Sequence[VerifyItem]) -> list[Verdict]:
        tuples = [(it.response, it.gold, it.question) for it in items]
        return await asyncio.to_thread(grade_many, tuples, timeout_s=self.timeout_s, pool=self.pool)

    def health(self) -> dict[str, Any]:
        return {
            "workers": self.pool.size,
            "alive": self.pool.alive(),
            "timeouts": self.pool.timeouts,
            "replaced": self.pool.replaced,
        }

    def close(self) -> None:
        self.pool.close()


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
    app.state.metrics = metrics
    app.state.verifier = state

    async def _read_body(request: Request) -> bytes | JSONResponse:
        limit = vc.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            return _error(413, f"request body of {int(declared)} bytes exceeds max_body_bytes={limit}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return _error(413, f"request body exceeds max_body_bytes={limit}")
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

    @app.post("/v1/verify")
    async def verify(request: Request) -> Response:
        t0 = time.perf_counter()
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

    @app.get("/healthz")
    async def healthz() -> Response:
        be = state["backend"]
        if be is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        info = be.health()
        ok = info.get("alive", 1) > 0
        return JSONResponse({"status": "ok" if ok else "degraded", **info}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
