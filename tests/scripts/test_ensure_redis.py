"""scripts/ensure_redis.py: finds a reachable Redis, else starts one on a free port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "ensure_redis.py"


def test_uses_reachable_redis_url(redis_url):
    r = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                       env={**os.environ, "REDIS_URL": redis_url}, timeout=60)
    assert r.returncode == 0
    assert redis.Redis.from_url(r.stdout.strip()).ping()


@pytest.mark.skipif(not any((Path(p) / "redis-server").exists() for p in os.environ["PATH"].split(":")),
                    reason="redis-server binary not installed")
def test_starts_a_local_server_when_none_answers(tmp_path, monkeypatch):
    # Run a copy of the script in a temp tree so its .cache/redis state is private, and point
    # both candidate URLs at a closed port.
    tree = tmp_path / "repo" / "scripts"
    tree.mkdir(parents=True)
    text = SCRIPT.read_text().replace('"redis://127.0.0.1:6379/0"', '"redis://127.0.0.1:1/0"')
    (tree / "ensure_redis.py").write_text(text)
    r = subprocess.run([sys.executable, str(tree / "ensure_redis.py")], capture_output=True, text=True,
                       env={**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0"}, timeout=60)
    assert r.returncode == 0, r.stderr
    url = r.stdout.strip()
    pidfile = tmp_path / "repo" / ".cache" / "redis" / "redis.pid"
    try:
        assert url != "redis://127.0.0.1:1/0"
        assert redis.Redis.from_url(url).ping()
        assert "started redis-server" in r.stderr
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
