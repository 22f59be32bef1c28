"""The HTTP paths the deployment files probe or document are real GET routes of the services.

Compose health checks, Kubernetes probes and the docs use ``deploy_checks.SERVICE_PATHS``; here
each service's FastAPI app is built (no server started: building the app opens no connection and
starts no process) and its route table is compared with those paths.  The probe paths used in
docker-compose.yml and deploy/k8s are checked against SERVICE_PATHS in test_compose.py/test_k8s.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.routing import APIRoute

from common.config import RethinkerConfig
from deploy_checks import SERVICE_PATHS


def build_app(service: str) -> Any:
    cfg = RethinkerConfig()
    if service == "verifier":
        from services.verifier.app import create_app

        return create_app(cfg)
    if service == "buffer":
        from services.buffer.app import create_app

        return create_app(cfg)
    from services.rollout.app import create_app

    return create_app(server=None)  # routes only; the server is looked up when a request comes


@pytest.mark.parametrize("service", sorted(SERVICE_PATHS))
def test_probe_paths_are_get_routes(service: str) -> None:
    app = build_app(service)
    get_routes = {r.path for r in app.routes if isinstance(r, APIRoute) and "GET" in r.methods}
    missing = sorted(SERVICE_PATHS[service] - get_routes)
    assert missing == [], f"{service} has no GET route for {missing} (has {sorted(get_routes)})"
