"""Secrets in `rethinker up`: a password-protected Redis (the user's, or the one the launcher starts),
the generated weight-sync token, the run's saved config (0600, redacted) and no secret in the logs.

Real redis-server processes on free ports (stopped by pid), real verifier and buffer processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from common.config import REDACTED, load_config, reveal
from rethinker.launcher import connect_redis, run_system
from rethinker.local_redis import RedisUnavailable, answering, free_port, start_local

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "redis-pw-Oscar"

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")


def _stop_pidfile(pidfile: Path) -> None:
    if not pidfile.exists():
        return
    pid = int(pidfile.read_text().strip())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server with a password, started here on a free port."""
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--requirepass", PASSWORD, "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        if answering(url, password=PASSWORD):
            break
        time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(10)


def test_connect_redis_uses_the_password(own_redis, tmp_path):
    base = ["launcher.start_redis=false", f"redis.url={own_redis}"]
    assert not answering(own_redis)  # the server really requires the password
    cfg = load_config(None, base, environ={"RETHINKER__REDIS__PASSWORD": PASSWORD})
    assert connect_redis(cfg, tmp_path) == (cfg, None)  # answers with the password: used as it is, nothing started
    url_pw = own_redis.replace("redis://", f"redis://:{PASSWORD}@")
    cfg = load_config(None, ["launcher.start_redis=false", f"redis.url={url_pw}"], environ={})
    assert connect_redis(cfg, tmp_path) == (cfg, None)  # a password inside the URL works too
    wrong = load_config(None, base, environ={"RETHINKER__REDIS__PASSWORD": "wrong"})
    with pytest.raises(RedisUnavailable) as err:
        connect_redis(wrong, tmp_path)
    assert "wrong" not in str(err.value) and PASSWORD not in str(err.value)
    tls = load_config(None, [f"redis.url=rediss://127.0.0.1:{free_port()}/0"], environ={})
    with pytest.raises(RedisUnavailable, match="TLS"):
        connect_redis(tls, tmp_path)  # never falls back to a plaintext local server


def test_start_local_requires_the_password_without_showing_it(tmp_path):
    state = tmp_path / "redis"
    url = start_local(state, password=PASSWORD)
    try:
        assert url is not None and PASSWORD not in url
        assert answering(url, password=PASSWORD) and not answering(url)
        pid = int((state / "redis.pid").read_text())
        assert PASSWORD.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert stat.S_IMODE((state / "redis.conf").stat().st_mode) == 0o600
    finally:
        _stop_pidfile(state / "redis.pid")


def test_up_starts_its_redis_with_the_password_and_keeps_secrets_out_of_files_and_logs(tmp_path):
    run_dir = tmp_path / "run"
    admin = "buffer-admin-Papa"
    reader = "buffer-read-Quebec"
    env = {"RETHINKER__REDIS__PASSWORD": PASSWORD, "RETHINKER__BUFFER__ADMIN_TOKEN": admin,
           "RETHINKER__BUFFER__READ_TOKEN": reader}
    cfg = load_config(ROOT / "configs" / "tiny-cpu.yaml", [
        f"run.run_dir={run_dir}", f"redis.url=redis://127.0.0.1:{free_port()}/0",  # nothing there: start one
        f"verifier.port={free_port()}", f"buffer.port={free_port()}", "verifier.workers=1",
        "launcher.rollout_servers=0", "launcher.health_timeout_s=90", "run.log_level=DEBUG",
    ], environ=env)
    assert cfg.learner.weight_sync.token is None
    try:
        result = run_system(cfg, learner=False, stop_after_s=0.0)
        assert result.returncode == 0
        # the buffer reached the launcher's Redis with the password (its stats come from Redis), and
        # the launcher read them with the read token
        assert "sizes" in result.buffer_stats, result.buffer_stats
        state = run_dir / "redis"
        url = cfg.redis.url  # the supervised redis-server listened on the configured local port
        conf = state / "redis.conf"  # its password came from a 0600 file, not the command line
        assert stat.S_IMODE(conf.stat().st_mode) == 0o600 and "requirepass" in conf.read_text()
        saved = run_dir / "config.yaml"
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
        text = saved.read_text()
        data = yaml.safe_load(text)
        assert data["redis"]["password"] == REDACTED and data["buffer"]["admin_token"] == REDACTED
        assert data["learner"]["weight_sync"]["token"] == REDACTED  # generated for the run
        assert data["redis"]["url"] == url
        logs = "".join(p.read_text(errors="replace") for p in (run_dir / "logs").glob("*.log"))
        assert logs
        for secret in (PASSWORD, admin, reader):
            assert secret not in text and secret not in logs
        # the saved file is usable again with the secrets from the environment
        again = load_config(saved, environ={**env, "RETHINKER__LEARNER__WEIGHT_SYNC__TOKEN": "x"})
        assert reveal(again.redis.password) == PASSWORD
    finally:
        _stop_pidfile(run_dir / "redis" / "redis.pid")
    assert not answering(url, password=PASSWORD)  # the run's own Redis stopped with the run


def test_supervised_redis_requires_the_password_without_showing_it(tmp_path):
    from rethinker.launcher import plan_redis

    cfg = load_config(None, [f"redis.url=redis://127.0.0.1:{free_port()}/0"], environ={})
    child, url = plan_redis(cfg, tmp_path, PASSWORD)
    child.start()
    try:
        deadline = time.monotonic() + 10
        while not child.health_check() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert answering(url, password=PASSWORD) and not answering(url)
        assert PASSWORD.encode() not in Path(f"/proc/{child.proc.pid}/cmdline").read_bytes()
        assert stat.S_IMODE((tmp_path / "redis" / "redis.conf").stat().st_mode) == 0o600
    finally:
        child.stop(10)


@pytest.fixture
def tls_redis(tmp_path):
    """A redis-server speaking only TLS (certificate of a throw-away CA) with a password."""
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make a test certificate")
    d = tmp_path / "tls"
    d.mkdir()

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=test-ca")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.crt",
        "-days", "1", "-extfile", "ext.cnf")
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                             "--tls-cert-file", str(d / "server.crt"), "--tls-key-file", str(d / "server.key"),
                             "--tls-ca-cert-file", str(d / "ca.crt"), "--tls-auth-clients", "no",
                             "--requirepass", PASSWORD, "--save", "", "--appendonly", "no", "--dir", str(d)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"rediss://127.0.0.1:{port}/0"
    for _ in range(100):
        if answering(url, password=PASSWORD, tls_ca_certs=str(d / "ca.crt")):
            break
        if proc.poll() is not None:
            pytest.skip(f"redis-server without TLS support: {proc.stdout.read().decode()[-300:]}")
        time.sleep(0.05)
    yield url, d / "ca.crt"
    proc.terminate()
    proc.wait(10)


def test_rediss_url_with_password_works_for_the_launcher_and_a_service(tls_redis, tmp_path):
    import httpx

    url, ca = tls_redis
    env = {"RETHINKER__REDIS__URL": url, "RETHINKER__REDIS__PASSWORD": PASSWORD, "RETHINKER__REDIS__TLS_CA_CERTS": str(ca)}
    cfg = load_config(None, ["launcher.start_redis=false"], environ=env)
    assert connect_redis(cfg, tmp_path) == (cfg, None)  # the TLS Redis is used, nothing is started
    assert not answering(url, password=PASSWORD)  # without the CA the certificate is refused
    port = free_port()
    log = tmp_path / "buffer.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rethinker.cli", "serve", "buffer", "--port", str(port),
             "--set", f"redis.namespace=test-tls-{port}"],
            cwd=ROOT, env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, stdout=fh, stderr=subprocess.STDOUT)
        try:
            body = None
            for _ in range(200):
                try:
                    r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                    if r.status_code == 200:
                        body = r.json()
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            assert body == {"ok": True, "redis": True}, log.read_text(errors="replace")[-2000:]
        finally:
            proc.terminate()
            proc.wait(20)
    assert PASSWORD not in log.read_text(errors="replace")
