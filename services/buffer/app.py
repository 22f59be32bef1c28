"""HTTP service of the SSR buffer (FastAPI): inspection, administration, live dashboard, metrics.

Endpoints (``create_app(cfg)``; see docs/buffer.md):

- ``GET /``                    dashboard page (assets under ``/static``, served by this app, no CDN)
- ``GET /healthz``             liveness + Redis reachability (no auth)
- ``GET /v1/stats``            statistics of store, queue, versions (``services.buffer.stats``)
- ``GET /v1/groups/{id}``      a stored group, decoded, images left out
- ``GET /v1/samples/{id}``     a stored sample, decoded, with its pool
- ``GET /metrics``             Prometheus
- ``POST /v1/admin/clear``     delete store and queue (and optionally registry)       [admin]
- ``POST /v1/admin/snapshot``  write the store to ``buffer.snapshot_dir/<name>.rtksnap`` [admin]
- ``GET /v1/admin/config``     the effective config, secrets masked                   [admin]

Admin endpoints need ``Authorization: Bearer <buffer.admin_token>`` (401 without it) and are
disabled (403) while no admin token is configured; read endpoints need ``buffer.read_token`` (or the
admin token) when one is set.  A request body over ``buffer.max_body_bytes`` gets 413 (no endpoint
takes a body).  Unknown ids give 404, bad parameters 422, an unreachable Redis 503.
"""

from __future__ import annotations

import math
import re
import time
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import redis
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from common.codec import CodecError
from common.config import RethinkerConfig, config_dict
from common.http_guard import BodyLimitMiddleware, bearer_matches
from common.logging import get_logger
from common.metrics import ServiceMetrics, metrics_response
from common.redis_conn import describe
from common.schemas import PromptTask, Sample
from services.buffer.client import AsyncBufferClient

log = get_logger("buffer")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_MAX_ID = 256
STATIC_DIR = Path(str(resources.files("services.buffer").joinpath("static")))


# --------------------------------------------------------------------------- JSON views


def _clean(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, np.ndarray):
        if x.dtype.kind == "f":
            return [v if math.isfinite(v) else None for v in x.astype(float).tolist()]
        return x.tolist()
    if isinstance(x, np.generic):
        return _clean(x.item())
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, bytes):
        return {"bytes": len(x)}
    return x


def task_view(task: PromptTask) -> dict[str, Any]:
    return {
        "task_id": task.task_id, "prompt_id": task.prompt_id, "question": task.question, "answer": task.answer,
        "prompt_suffix": task.prompt_suffix, "category": task.category, "source": task.source, "epoch": task.epoch,
        "n": task.n, "policy_version": task.policy_version, "published_at": _clean(task.published_at),
        "n_images": len(task.images), "image_bytes": [len(b) for b in task.images], "meta": _clean(task.meta),
    }


def sample_view(s: Sample, *, pool: str | None = None, tokens: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in Sample.__slots__:  # type: ignore[attr-defined]
        v = getattr(s, name)
        if isinstance(v, np.ndarray):
            out[f"n_{name}"] = int(v.shape[0]) if v.ndim else 1
            if not tokens:
                continue
        out[name] = _clean(v)
    if pool is not None:
        out["pool"] = pool
    return out


# --------------------------------------------------------------------------- app


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return None


def _matches(token: str | None, expected: Any) -> bool:
    return bearer_matches(token, expected)


def masked_config(cfg: RethinkerConfig) -> dict[str, Any]:
    """The effective config with every secret shown as ``***`` (``common.config.config_dict``)."""
    return config_dict(cfg)


_ERROR_SCHEMA = {"type": "object", "properties": {"detail": {}}, "required": ["detail"]}


def _err(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}


# Status codes of the routes, for the OpenAPI document.
_READ = {401: _err("buffer.read_token is set and the request has no matching bearer token"),
         503: _err("Redis unreachable or failing")}
_FOUND = {**_READ, 404: _err("no such id in the store"), 502: _err("a stored payload cannot be decoded")}
_ADMIN = {401: _err("no matching 'Authorization: Bearer <buffer.admin_token>'"),
          403: _err("admin endpoints are disabled (no buffer.admin_token)"),
          413: _err("request body over buffer.max_body_bytes"),
          503: _err("Redis unreachable or failing")}
_TEXT = {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format"}


def create_app(cfg: RethinkerConfig, *, client: AsyncBufferClient | None = None) -> FastAPI:
    """The buffer's FastAPI app; it owns an ``AsyncBufferClient`` unless one is given."""
    bcfg = cfg.buffer
    metrics = ServiceMetrics("buffer")
    http_requests = metrics.counter("http_requests", "HTTP requests", ("route", "code"))
    http_latency = metrics.histogram("http_request_seconds", "HTTP request latency", ("route",))
    gauges = {
        name: metrics.gauge(name, doc)
        for name, doc in (
            ("fresh_responses", "Effective responses never trained on"),
            ("replay_responses", "Responses in the replay pool"),
            ("zero_fresh_responses", "Zero-advantage responses never trained on"),
            ("stored_responses", "All stored responses"),
            ("stored_groups", "Stored groups"),
            ("groups_added", "Groups added since the store was created"),
            ("samples_added", "Responses added since the store was created"),
            ("draws", "Responses handed out for training"),
            ("draws_replay", "Responses handed out from the replay pool"),
            ("effective_sample_share", "Share of stored responses with non-zero advantage"),
            ("queue_depth", "Prompt tasks waiting for a rollout server"),
            ("queue_pending", "Prompt tasks claimed and not yet acked"),
            ("policy_version", "Latest published policy version (-1: none)"),
            ("live_servers", "Rollout servers with a live heartbeat"),
        )
    }

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        bc = client if client is not None else AsyncBufferClient(cfg)
        app.state.buffer = bc
        try:
            await bc.ensure_library()
            log.info("buffer_ready", redis=describe(cfg.redis), namespace=cfg.redis.namespace)
        except redis.RedisError as exc:
            log.warning("buffer_redis_unavailable", redis=describe(cfg.redis), error=str(exc))
        yield
        if client is None:
            await bc.close()

    app = FastAPI(title="rethinker buffer", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.add_middleware(BodyLimitMiddleware, max_bytes=bcfg.max_body_bytes, field="buffer.max_body_bytes")
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")

    def buffer(request: Request) -> AsyncBufferClient:
        return request.app.state.buffer

    def require_read(request: Request) -> None:
        if bcfg.read_token is None:
            return
        tok = _bearer(request)
        if not (_matches(tok, bcfg.read_token) or _matches(tok, bcfg.admin_token)):
            raise HTTPException(401, "read endpoints require 'Authorization: Bearer <buffer.read_token>'",
                                headers={"WWW-Authenticate": "Bearer"})

    def require_admin(request: Request) -> None:
        if bcfg.admin_token is None:
            raise HTTPException(403, "admin endpoints are disabled: set buffer.admin_token")
        if not _matches(_bearer(request), bcfg.admin_token):
            raise HTTPException(401, "admin endpoints require 'Authorization: Bearer <buffer.admin_token>'",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.middleware("http")
    async def observe(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", None) or "other"
        http_requests.labels(path, str(response.status_code)).inc()
        http_latency.labels(path).observe(time.perf_counter() - t0)
        return response

    @app.exception_handler(redis.RedisError)
    async def redis_error(request: Request, exc: redis.RedisError) -> JSONResponse:
        log.warning("redis_error", path=request.url.path, error=str(exc))
        return JSONResponse({"detail": f"redis unavailable or failing: {type(exc).__name__}: {exc}"}, status_code=503)

    @app.exception_handler(CodecError)
    async def codec_error(request: Request, exc: CodecError) -> JSONResponse:
        log.error("stored_payload_undecodable", path=request.url.path, error=str(exc))
        return JSONResponse({"detail": f"stored payload cannot be decoded: {exc}"}, status_code=502)

    # ------------------------------------------------------------------ pages

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/healthz", responses={503: _err("Redis does not answer")})
    async def healthz(request: Request) -> JSONResponse:
        try:
            ok = await buffer(request).ping()
        except redis.RedisError as exc:
            return JSONResponse({"ok": False, "redis": False, "error": str(exc)}, status_code=503)
        return JSONResponse({"ok": ok, "redis": ok})

    @app.get("/v1/stats", dependencies=[Depends(require_read)], responses=_READ)
    async def stats(
        request: Request, series: int | None = Query(None, ge=0, le=100_000, description="keep the last N series points")
    ) -> JSONResponse:
        st = await buffer(request).stats()
        if series is not None:
            st["series"] = st["series"][-series:] if series else []
        return JSONResponse(_clean(st))

    @app.get("/v1/groups/{group_id}", dependencies=[Depends(require_read)], responses=_FOUND)
    async def get_group(request: Request, group_id: str, tokens: bool = True) -> JSONResponse:
        rec = await buffer(request).get_group_record(group_id) if len(group_id) <= _MAX_ID else None
        if rec is None:
            raise HTTPException(404, f"no group {group_id[:_MAX_ID]!r} in the store")
        g, pools = rec
        return JSONResponse({
            "group_id": g.group_id, "server_id": g.server_id, "policy_version": g.policy_version,
            "created_at": _clean(g.created_at), "rethink_triggered": g.rethink_triggered, "rethink_kept": g.rethink_kept,
            "first_pass_accuracy": _clean(g.first_pass_accuracy), "task": task_view(g.task),
            "samples": [sample_view(s, pool=pools.get(s.sample_id), tokens=tokens) for s in g.samples],
        })

    @app.get("/v1/samples/{sample_id}", dependencies=[Depends(require_read)], responses=_FOUND)
    async def get_sample(request: Request, sample_id: str, tokens: bool = True) -> JSONResponse:
        rec = await buffer(request).get_sample_record(sample_id) if len(sample_id) <= _MAX_ID else None
        if rec is None:
            raise HTTPException(404, f"no sample {sample_id[:_MAX_ID]!r} in the store")
        return JSONResponse(sample_view(rec.sample, pool=rec.pool, tokens=tokens))

    @app.get("/metrics", dependencies=[Depends(require_read)], responses={**_READ, 200: _TEXT})
    async def prometheus(request: Request):
        try:
            st = await buffer(request).stats()
        except redis.RedisError:
            st = None
        if st is not None:
            sz, tot = st["sizes"], st["totals"]
            vals = {
                "fresh_responses": sz["fresh"], "replay_responses": sz["replay"], "zero_fresh_responses": sz["zero_fresh"],
                "stored_responses": sz["total"], "stored_groups": sz["groups"], "groups_added": tot["groups"],
                "samples_added": tot["samples"], "draws": tot["draws"], "draws_replay": tot["draws_replay"],
                "effective_sample_share": st["shares"]["effective_samples"] or 0.0,
                "queue_depth": st["queue"]["depth"], "queue_pending": st["queue"]["pending"],
                "policy_version": -1 if st["policy_version"] is None else st["policy_version"],
                "live_servers": st["servers"]["live"],
            }
            for k, v in vals.items():
                gauges[k].set(v)
        return metrics_response(metrics)

    # ------------------------------------------------------------------ admin

    @app.post("/v1/admin/clear", dependencies=[Depends(require_admin)], responses=_ADMIN)
    async def clear(request: Request, queue: bool = True, registry: bool = False) -> JSONResponse:
        n = await buffer(request).clear(store=True, queue=queue, registry=registry)
        log.info("buffer_cleared", keys=n, queue=queue, registry=registry)
        return JSONResponse({"deleted_keys": n})

    @app.post("/v1/admin/snapshot", dependencies=[Depends(require_admin)],
              responses={**_ADMIN, 507: _err("the snapshot file cannot be written")})
    async def snapshot(
        request: Request,
        name: str | None = Query(None, min_length=1, max_length=100, pattern=_NAME_RE.pattern,
                                 description="file name (letters, digits, '.', '_', '-'; default: a UTC time stamp)"),
    ) -> JSONResponse:
        if name is None:
            name = datetime.now(timezone.utc).strftime("buffer-%Y%m%dT%H%M%S%fZ")
        if not _NAME_RE.match(name):
            raise HTTPException(422, "name must be 1-100 characters of letters, digits, '.', '_' or '-' and start with a letter or digit")
        path = Path(bcfg.snapshot_dir) / f"{name}.rtksnap"
        try:
            info = await buffer(request).snapshot(path)
        except OSError as exc:
            raise HTTPException(507, f"cannot write snapshot {path}: {exc}") from None
        log.info("buffer_snapshot", **info)
        return JSONResponse(info)

    @app.get("/v1/admin/config", dependencies=[Depends(require_admin)], responses=_ADMIN)
    async def config_view() -> JSONResponse:
        return JSONResponse(masked_config(cfg))

    return app
