"""rethinker.local_redis: finds a reachable Redis, else starts one on a free port."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest
import redis

from rethinker import local_redis


def test_prints_a_reachable_url(redis_url):
    r = subprocess.run([sys.executable, "-m", "rethinker.local_redis"], capture_output=True, text=True,
                       env={**os.environ, "REDIS_URL": redis_url}, timeout=60)
    assert r.returncode == 0
    assert redis.Redis.from_url(r.stdout.strip()).ping()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server binary not installed")
def test_starts_a_local_server_when_none_answers(tmp_path, monkeypatch):
    monkeypatch.setattr(local_redis, "DEFAULT_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:2/0")
    url = local_redis.ensure_redis(state=tmp_path / "redis")
    pid = int((tmp_path / "redis" / "redis.pid").read_text())
    try:
        assert url not in ("redis://127.0.0.1:1/0", "redis://127.0.0.1:2/0")
        assert redis.Redis.from_url(url).ping()
        # A second call finds the same server instead of starting another.
        assert local_redis.ensure_redis(state=tmp_path / "redis") == url
    finally:
        os.kill(pid, signal.SIGTERM)


def test_clear_message_when_impossible(tmp_path, monkeypatch):
    monkeypatch.setattr(local_redis, "DEFAULT_URL", "redis://127.0.0.1:1/0")
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setattr(local_redis, "start_local", lambda *a, **k: None)
    with pytest.raises(local_redis.RedisUnavailable, match="apt-get install redis-server"):
        local_redis.ensure_redis(state=tmp_path)
