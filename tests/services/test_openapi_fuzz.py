"""Schemathesis against each service's OpenAPI document, on real servers (``rethinker serve ...``).

Every check schemathesis has (``--checks all``: no 5xx, status codes, content types and response
bodies as documented, schema-violating requests rejected, ...) with a fixed seed and a bounded
example count per operation, so a run is short and repeatable; a request that hangs fails the run
(``--request-timeout``).  One exception, on the rollout server only: ``positive_data_acceptance``
is skipped for ``POST /v1/generate``, whose schema cannot express its content rules (valid base64
images, one user message after an optional system message, a text part with text), which it
answers with 400 naming the field.  docs/deployment.md ("Fuzzing") records the result.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "fuzz-t0ken-November"
EXAMPLES = 40
SEED = 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    def __init__(self, argv: list[str], url: str, log: Path, env: dict[str, str]) -> None:
        self.url = url
        self.log = log
        self._fh = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "rethinker.cli", *argv], cwd=ROOT, env=env,
                                     stdout=self._fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{argv[:2]} exited: {log.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{argv[:2]} did not become healthy: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.25)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._fh.close()


def _env(redis_url: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "RETHINKER__REDIS__URL": redis_url}


def _fuzz(url: str, out: Path, *extra: str) -> tuple[int, str]:
    cmd = [
        sys.executable, "-c", "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
        "run", f"{url}/openapi.json", "--checks", "all", "-n", str(EXAMPLES), "--seed", str(SEED),
        "--generation-database", "none", "--no-color", "--request-timeout", "20", "--workers", "1",
        "-H", f"Authorization: Bearer {TOKEN}", "--report-dir", str(out), *extra,
    ]
    proc = subprocess.run(cmd, cwd=out, capture_output=True, text=True, timeout=240)
    return proc.returncode, proc.stdout + proc.stderr


def _assert_clean(rc: int, text: str) -> None:
    """Exit 0, every generated case passed every check (warnings, such as "operations repeatedly
    returned 404" for random ids, are not failures)."""
    assert rc == 0, text[-6000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", text)
    assert counts and counts.group(1) == counts.group(2) and int(counts.group(1)) >= EXAMPLES, text[-6000:]
    assert "FAILURES" not in text and "ST101" not in text  # ST101: a 5xx response


def test_verifier_openapi_fuzz(tmp_path, redis_url):
    port = _free_port()
    svc = Service(["serve", "verifier", "--set", f"verifier.port={port}", "--set", "verifier.workers=1",
                   "--set", f"verifier.api_token={TOKEN}", "--set", "run.log_level=WARNING"],
                  f"http://127.0.0.1:{port}", tmp_path / "verifier.log", _env(redis_url))
    try:
        rc, text = _fuzz(svc.url, tmp_path)
    finally:
        svc.stop()
    _assert_clean(rc, text)


def test_buffer_openapi_fuzz(tmp_path, redis_url):
    port = _free_port()
    ns = f"test-fuzz-{os.getpid()}-{port}"
    svc = Service(["serve", "buffer", "--set", f"buffer.port={port}", "--set", f"redis.namespace={ns}",
                   "--set", f"buffer.admin_token={TOKEN}", "--set", f"buffer.snapshot_dir={tmp_path / 'snapshots'}",
                   "--set", "run.log_level=WARNING"],
                  f"http://127.0.0.1:{port}", tmp_path / "buffer.log", _env(redis_url))
    try:
        rc, text = _fuzz(svc.url, tmp_path)
    finally:
        svc.stop()
        import redis

        r = redis.Redis.from_url(redis_url)
        for k in r.scan_iter(f"{ns}:*"):
            r.delete(k)
    _assert_clean(rc, text)


def test_rollout_openapi_fuzz(tmp_path, redis_url, tiny_model_dir):
    port = _free_port()
    ns = f"test-fuzz-{os.getpid()}-{port}"
    svc = Service(["serve", "rollout", "--config", str(ROOT / "configs" / "tiny-cpu.yaml"),
                   "--set", f"rollout.port={port}", "--set", f"redis.namespace={ns}", "--set", "rollout.server_id=fuzz",
                   "--set", f"model.path={tiny_model_dir}", "--set", "model.build_tiny_if_missing=false",
                   "--set", "rollout.max_model_len=48", "--set", "learner.weight_sync.master_port=0",
                   "--set", f"rollout.api_token={TOKEN}", "--set", "run.log_level=WARNING"],
                  f"http://127.0.0.1:{port}", tmp_path / "rollout.log", _env(redis_url))
    try:
        rc, text = _fuzz(svc.url, tmp_path, "--exclude-checks", "positive_data_acceptance")
    finally:
        svc.stop()
        import redis

        r = redis.Redis.from_url(redis_url)
        for k in r.scan_iter(f"{ns}:*"):
            r.delete(k)
    _assert_clean(rc, text)
    assert TOKEN not in svc.log.read_text(errors="replace")
