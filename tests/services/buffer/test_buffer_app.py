"""The buffer's HTTP service on a real uvicorn server on 127.0.0.1: stats, reads, metrics, auth,
admin (clear, snapshot, config), bad ids -> 404, bad params -> 422, Redis down -> 503, never 500."""

from __future__ import annotations

import math
import threading
import time

import httpx
import numpy as np
import pytest
import uvicorn

from buffer_testlib import SHARED_REDIS_URL, delete_namespace, free_port, make_cfg, make_group, make_task
from common.schemas import PolicyVersion
from services.buffer.app import create_app
from services.buffer.client import BufferClient, read_snapshot

REWARDS = [1, 0, 0, 0, 1, 1, 0, 0]
ADMIN, READ = "admin-secret", "read-secret"


class Server:
    def __init__(self, cfg) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> httpx.Client:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        return self.http

    def __exit__(self, *exc) -> None:
        self.http.close()
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def populated(tmp_path_factory):
    cfg = make_cfg(admin_token=ADMIN)
    cfg.buffer.snapshot_dir = str(tmp_path_factory.mktemp("snapshots"))
    c = BufferClient(cfg)
    for i in range(6):
        c.add_group(make_group(i, REWARDS if i % 2 else [1] * 8, version=i // 2, category=["geo", "chart"][i % 2]))
    g = make_group("inf", REWARDS)
    g.samples[0].sampler_logprobs = np.array([-math.inf, math.nan, -0.5, -0.1], dtype=np.float32)
    c.add_group(g)
    c.sample(8, policy_version=2, seed=0)
    c.publish_tasks([make_task(i) for i in range(3)])
    c.claim_tasks("srv", 1)
    c.publish_policy_version(PolicyVersion(version=2, step=5))
    c.register_server("srv", {"url": "http://x"}, ttl_s=60)
    with Server(cfg) as http:
        yield cfg, c, http
    c.close()
    delete_namespace(SHARED_REDIS_URL, cfg.redis.namespace)


def test_stats(populated):
    cfg, c, http = populated
    r = http.get("/v1/stats")
    assert r.status_code == 200
    st = r.json()
    assert st["sizes"]["total"] == 7 * 8 and st["sizes"]["groups"] == 7
    assert st["sizes"]["fresh"] + st["sizes"]["replay"] <= 4 * 8 and st["sizes"]["zero_fresh"] == 3 * 8
    assert st["totals"]["draws"] == 8 and st["shares"]["all_correct_groups"] == pytest.approx(3 / 7)
    assert st["shares"]["effective_groups"] == pytest.approx(4 / 7)
    assert st["queue"] == {"depth": 2, "pending": 1, "inflight": 3, "max_inflight": 64, "can_publish": 61}
    assert st["policy_version"] == 2 and st["servers"]["live"] == 1
    assert sum(st["advantage_histogram"]["counts"]) == 32 and st["advantage_histogram"]["zero"] == 24
    assert [r["version"] for r in st["by_version"]] == [0, 1, 2]
    assert st["categories"]["geo"] == {"groups": 3, "effective_groups": 0}
    assert st["categories"]["chart"]["effective_groups"] == 3 and st["categories"]["geometry"]["groups"] == 1
    # the staleness histogram covers the fresh pools (replay entries age by their own limit)
    assert sum(st["staleness_histogram"]["counts"]) == st["sizes"]["fresh"] + st["sizes"]["zero_fresh"]
    assert st["reuse"]["draws"] and st["series"] and st["rates"]["insert_groups_per_s"] >= 0
    assert len(http.get("/v1/stats", params={"series": 2}).json()["series"]) == 2
    for bad in ("-1", "abc", "1e9"):
        assert http.get("/v1/stats", params={"series": bad}).status_code == 422


def test_group_and_sample_reads(populated):
    cfg, c, http = populated
    r = http.get("/v1/groups/g-e0-t1")
    assert r.status_code == 200
    g = r.json()
    assert g["task"]["n_images"] == 1 and "images" not in g["task"] and g["task"]["image_bytes"][0] > 0
    assert len(g["samples"]) == 8 and g["samples"][0]["advantage"] == pytest.approx(0.625)
    assert g["samples"][0]["response_token_ids"] == [0, 1, 2, 3] and g["samples"][0]["pool"] in ("fresh", "replay")
    s = http.get("/v1/samples/s-inf-0").json()
    assert s["sampler_logprobs"][:2] == [None, None] and s["n_sampler_logprobs"] == 4  # JSON-safe, not a 500
    slim = http.get("/v1/samples/s-inf-0", params={"tokens": "false"}).json()
    assert "response_token_ids" not in slim and slim["n_response_token_ids"] == 4
    assert http.get("/v1/samples/s-inf-0", params={"tokens": "maybe"}).status_code == 422
    for path in ("/v1/groups/nope", "/v1/samples/nope", "/v1/samples/" + "x" * 5000, "/v1/groups/%00",
                 "/v1/groups/..%2F..%2Fetc"):
        assert http.get(path).status_code == 404, path


def test_metrics_and_dashboard_assets(populated):
    cfg, c, http = populated
    m = http.get("/metrics")
    assert m.status_code == 200 and "rethinker_buffer_stored_responses 56.0" in m.text
    assert "rethinker_buffer_queue_depth 2.0" in m.text and "rethinker_buffer_http_requests_total" in m.text
    page = http.get("/")
    assert page.status_code == 200 and "/static/dashboard.js" in page.text and "http" not in page.text.split("<footer>")[0].replace("http-equiv", "")
    assert http.get("/static/dashboard.js").status_code == 200 and http.get("/static/dashboard.css").status_code == 200
    assert http.get("/healthz").json() == {"ok": True, "redis": True}


def test_admin_requires_the_token(populated, tmp_path):
    cfg, c, http = populated
    for method, path in (("POST", "/v1/admin/clear"), ("POST", "/v1/admin/snapshot"), ("GET", "/v1/admin/config")):
        assert http.request(method, path).status_code == 401
        assert http.request(method, path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    auth = {"Authorization": f"Bearer {ADMIN}"}
    conf = http.get("/v1/admin/config", headers=auth).json()
    assert conf["buffer"]["admin_token"] == "***" and conf["algorithm"]["ssr"]["mode"] == "ssr"
    for bad in ("../evil", "a/b", ".hidden", "x" * 101, ""):
        assert http.post("/v1/admin/snapshot", params={"name": bad}, headers=auth).status_code == 422, bad
    snap = http.post("/v1/admin/snapshot", params={"name": "snap1"}, headers=auth)
    assert snap.status_code == 200 and snap.json()["groups"] == 7 and snap.json()["samples"] == 56
    groups = read_snapshot(snap.json()["path"])
    assert sorted(g.group_id for g, _ in groups) == sorted(k.decode() for k in c.r.hkeys(c.keys.group_meta))
    g1 = next(g for g, _ in groups if g.group_id == "g-e0-t1")
    assert g1.task.images and g1.samples[0].advantage == pytest.approx(0.625)


def test_admin_clear(tmp_path):
    cfg = make_cfg(admin_token=ADMIN)
    c = BufferClient(cfg)
    c.add_group(make_group(0, REWARDS))
    c.publish_tasks([make_task(0)])
    with Server(cfg) as http:
        r = http.post("/v1/admin/clear", headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 200 and r.json()["deleted_keys"] > 5
        st = http.get("/v1/stats").json()
        assert st["sizes"]["total"] == 0 and st["queue"]["inflight"] == 0
    assert c.sizes().stored == 0
    c.close()
    delete_namespace(SHARED_REDIS_URL, cfg.redis.namespace)


def test_admin_disabled_and_read_token():
    cfg = make_cfg(read_token=READ)  # no admin token: admin endpoints are off
    with Server(cfg) as http:
        assert http.post("/v1/admin/clear").status_code == 403
        assert http.get("/v1/stats").status_code == 401
        assert http.get("/v1/groups/x").status_code == 401
        assert http.get("/metrics").status_code == 401
        assert http.get("/v1/stats", headers={"Authorization": f"Bearer {READ}"}).status_code == 200
        assert http.get("/v1/groups/x", headers={"Authorization": f"Bearer {READ}"}).status_code == 404
        assert http.get("/").status_code == 200  # the page itself is static; its data calls carry the token
    delete_namespace(SHARED_REDIS_URL, cfg.redis.namespace)


def test_redis_down_gives_503():
    cfg = make_cfg(f"redis://127.0.0.1:{free_port()}/0")
    cfg.redis.retry_attempts = 0
    cfg.redis.connect_timeout_s = 0.5
    with Server(cfg) as http:
        assert http.get("/v1/stats").status_code == 503
        assert http.get("/v1/groups/x").status_code == 503
        assert http.get("/healthz").status_code == 503
        assert http.get("/metrics").status_code == 200  # still scrapable (HTTP metrics only)


def test_body_limit_and_no_secret_in_any_view():
    cfg = make_cfg(admin_token=ADMIN, read_token=READ)
    cfg.buffer.max_body_bytes = 1000
    cfg.learner.weight_sync.token = "sync-Mike"
    with Server(cfg) as http:
        auth = {"Authorization": f"Bearer {ADMIN}"}
        r = http.post("/v1/admin/clear", headers=auth, content=b"x" * 5000)
        assert r.status_code == 413 and r.json()["limit"] == 1000 and "buffer.max_body_bytes=1000" in r.json()["detail"]
        assert http.post("/v1/admin/clear", headers=auth, params={"queue": "false"}).status_code == 200
        views = [http.get("/v1/admin/config", headers=auth).text, http.get("/v1/stats", headers=auth).text,
                 http.get("/metrics", headers=auth).text, http.get("/healthz").text]
        for text in views:
            for secret in (ADMIN, READ, "sync-Mike"):
                assert secret not in text
    delete_namespace(SHARED_REDIS_URL, cfg.redis.namespace)
