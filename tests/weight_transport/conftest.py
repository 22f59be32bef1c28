"""Fixtures of the weight-transport tests: a config on a private Redis namespace, receiver processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis

from common.config import RethinkerConfig, config_to_json, load_config

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@pytest.fixture
def wt_cfg(redis_url: str) -> RethinkerConfig:
    url = redis_url
    ns = f"test-wt-{uuid.uuid4().hex[:8]}"
    cfg = load_config(
        None,
        [
            f"redis.url={url}",
            f"redis.namespace={ns}",
            "learner.weight_sync.master_port=0",
            "learner.weight_sync.bucket_mb=0.01",
            "learner.weight_sync.timeout_s=5",
            "learner.weight_sync.join_timeout_s=5",
            "learner.weight_sync.heartbeat_s=0.5",
            "learner.weight_sync.member_ttl_s=4",
            "learner.weight_sync.poll_s=0.05",
            "learner.weight_sync.token=s3cret",
        ],
    )
    yield cfg
    r = redis.Redis.from_url(url)
    for k in r.scan_iter(f"{ns}:*"):
        r.delete(k)


class ReceiverProc:
    def __init__(self, cfg: RethinkerConfig, server_id: str, out: Path, *extra: str) -> None:
        cfg_path = out.parent / f"{server_id}.json"
        cfg_path.write_text(config_to_json(cfg, reveal_secrets=True))
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        self.server_id = server_id
        self.out = out
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "receiver_main.py"), str(cfg_path), server_id, str(out), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.strip() == "ready":
                return
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"receiver {self.server_id} exited with {self.proc.returncode}")
        raise TimeoutError(f"receiver {self.server_id} not ready")

    def wait_file(self, version: int, timeout: float = 30.0) -> Path:
        path = self.out / f"v{version}.safetensors"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists():
                time.sleep(0.1)  # let save_file finish
                return path
            time.sleep(0.05)
        raise TimeoutError(f"{self.server_id} never wrote {path.name}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def receivers(tmp_path):
    made: list[ReceiverProc] = []

    def spawn(cfg: RethinkerConfig, server_id: str, *extra: str) -> ReceiverProc:
        rp = ReceiverProc(cfg, server_id, tmp_path / server_id, *extra)
        made.append(rp)
        return rp

    yield spawn
    for rp in made:
        rp.close()
