"""The verifier as a Ray Serve deployment on a local 2-CPU Ray: same API, batching, autoscaling config."""

from __future__ import annotations

import os
import socket
import time

import httpx
import pytest

from common.config import RethinkerConfig, load_config

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_autoscaling_config_comes_from_verifier_config() -> None:
    from services.verifier.serve_ray import autoscaling_config

    cfg = load_config(None, ["verifier.ray_min_replicas=2", "verifier.ray_max_replicas=6", "verifier.ray_target_ongoing_requests=3"])
    assert autoscaling_config(cfg) == {"min_replicas": 2, "max_replicas": 6, "target_ongoing_requests": 3}
    assert autoscaling_config(RethinkerConfig())["max_replicas"] == 4


def test_ray_serve_deployment_answers_like_the_uvicorn_app() -> None:
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import ray
    from ray import serve

    from services.verifier.client import VerifierClient
    from services.verifier.serve_ray import APP_NAME, build_app

    port = _free_port()
    cfg = load_config(
        None,
        [
            f"verifier.port={port}",
            "verifier.ray_min_replicas=1",
            "verifier.ray_max_replicas=1",
            "verifier.ray_replica_cpus=1",
            "verifier.ray_batch_size=16",
            "verifier.ray_batch_wait_s=0.05",
        ],
    )
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(cfg), name=APP_NAME, route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "Serve deployment did not become healthy"
            time.sleep(0.5)

        items = [(f"\\boxed{{{i}}}", str(i if i % 2 else i + 1)) for i in range(40)]
        items.append(("The answer is (C).", "C"))
        res = VerifierClient(url, timeout_s=60, retries=2).verify(items)
        assert [r.correct for r in res] == [bool(i % 2) for i in range(40)] + [True]
        assert all(r.reward in (0.0, 1.0) for r in res)

        bad = httpx.post(f"{url}/v1/verify", content=b"not json", headers={"content-type": "application/json"}, timeout=30)
        assert bad.status_code == 422
        health = httpx.get(f"{url}/healthz", timeout=30).json()
        assert health["status"] == "ok" and health["workers"] == 1 and health["batches"] >= 1
        # 41 items went through @serve.batch in batches of at most 16
        assert health["batches"] >= 3
        metrics = httpx.get(f"{url}/metrics", timeout=30).text
        assert "verifier_items_total 41.0" in metrics
    finally:
        serve.shutdown()
        if started_here:
            ray.shutdown()
