"""The verifier as a Ray Serve deployment: the same FastAPI app, ``@serve.batch`` and autoscaling.

``build_app(cfg)`` returns a bound Serve application whose replicas each own a ``GradePool`` of
``max(1, int(verifier.ray_replica_cpus))`` workers.  HTTP requests reach the FastAPI app built by
``app.create_app`` (late-bound through ``__serve_build_asgi_app__``), whose backend is the replica
itself: every item of a request becomes one call of a ``@serve.batch`` method, so items from
concurrent requests are graded together in batches of up to ``ray_batch_size`` (waiting at most
``ray_batch_wait_s``).  Replicas scale between ``ray_min_replicas`` and ``ray_max_replicas`` on
``ray_target_ongoing_requests``.

``run(cfg)`` starts (or joins) Ray, binds Serve's HTTP proxy to ``verifier.host:verifier.port`` and
deploys; ``rethinker serve verifier --ray`` calls it.  ``app_builder(args)`` is the ``import_path``
target of Serve config files (deploy/ray/serve-config.yaml): it loads ``args["config"]``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from typing import Any

from common.config import RethinkerConfig, config_from_json, config_to_json

APP_NAME = "verifier"


def autoscaling_config(cfg: RethinkerConfig) -> dict[str, Any]:
    vc = cfg.verifier
    return {
        "min_replicas": vc.ray_min_replicas,
        "max_replicas": max(vc.ray_max_replicas, vc.ray_min_replicas),
        "target_ongoing_requests": vc.ray_target_ongoing_requests,
    }


def build_app(cfg: RethinkerConfig) -> Any:
    """A bound Ray Serve application for the verifier (call ``serve.run`` on it)."""
    from ray import serve

    vc = cfg.verifier

    @serve.deployment(
        name="Verifier",
        autoscaling_config=autoscaling_config(cfg),
        ray_actor_options={"num_cpus": vc.ray_replica_cpus},
        max_ongoing_requests=max(2 * vc.ray_target_ongoing_requests, 4),
    )
    @serve.ingress()
    class VerifierDeployment:
        def __init__(self, cfg_json: str) -> None:
            from .app import PoolBackend

            self.cfg = config_from_json(cfg_json)
            self.backend = PoolBackend(self.cfg, workers=max(1, int(self.cfg.verifier.ray_replica_cpus)))
            self.batches = 0

        def __serve_build_asgi_app__(self) -> Any:
            from .app import create_app

            return create_app(self.cfg, backend=self)

        @serve.batch(max_batch_size=vc.ray_batch_size, batch_wait_timeout_s=vc.ray_batch_wait_s)
        async def _grade_batch(self, items: list[Any]) -> list[Any]:
            self.batches += 1
            return await self.backend.grade(items)

        async def grade(self, items: Any) -> list[Any]:
            return list(await asyncio.gather(*(self._grade_batch(it) for it in items)))

        def health(self) -> dict[str, Any]:
            return {**self.backend.health(), "replica_pid": os.getpid(), "batches": self.batches}

        def __del__(self) -> None:
            backend = getattr(self, "backend", None)
            if backend is not None:
                backend.close()

    return VerifierDeployment.bind(config_to_json(cfg, reveal_secrets=True))


def app_builder(args: dict[str, Any] | None = None) -> Any:
    """Serve application builder for ``serve deploy``/``serve run`` configs (``import_path``).

    ``args.config``: a rethinker YAML path on every node (optional); ``args.set``: a list of
    ``section.field=value`` overrides (optional); the ``RETHINKER__*`` environment applies too.
    """
    from common.config import load_config

    args = dict(args or {})
    overrides = args.get("set") or []
    if isinstance(overrides, str):
        overrides = [overrides]
    return build_app(load_config(args.get("config"), list(overrides)))


def run(cfg: RethinkerConfig, *, blocking: bool = True, num_cpus: int | None = None) -> None:
    """Start Ray (if needed) and Serve on ``verifier.host:port`` and deploy the verifier."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    vc = cfg.verifier
    if not ray.is_initialized():
        ray.init(
            num_cpus=num_cpus or vc.ray_num_cpus,
            include_dashboard=False,
            ignore_reinit_error=True,
            log_to_driver=False,
        )
    serve.start(http_options={"host": vc.host, "port": vc.port})
    serve.run(build_app(cfg), name=APP_NAME, route_prefix="/", blocking=False)
    if blocking:
        def _stop(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _stop)  # stop Serve and the local Ray on SIGTERM too
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            serve.shutdown()
            ray.shutdown()
