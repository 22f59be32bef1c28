"""The dashboard in headless Chromium against `rethinker serve buffer` (a real subprocess): the page
loads its assets from the app (no CDN), fetches /v1/stats and renders every chart with the data."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from buffer_testlib import SHARED_REDIS_URL, delete_namespace, free_port, make_cfg, make_group, make_task
from common.schemas import PolicyVersion
from services.buffer.client import BufferClient

ROOT = Path(__file__).resolve().parents[3]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]


def _serve(cfg, port: int, extra: list[str] = ()) -> subprocess.Popen:
    args = [sys.executable, "-m", "rethinker.cli", "serve", "buffer", "--port", str(port),
            "--set", f"redis.url={cfg.redis.url}", "--set", f"redis.namespace={cfg.redis.namespace}", *extra]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("rethinker serve buffer did not answer /healthz")


def _dump_dom(url: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(
            [CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=8000", "--dump-dom", url],
            capture_output=True, text=True, timeout=90,
        )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _attr(dom: str, elem_id: str, attr: str) -> str:
    m = re.search(rf'id="{elem_id}"[^>]*?{attr}="([^"]*)"', dom)
    assert m, f"{elem_id} has no {attr}"
    return m.group(1)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium; .ci/run does)")
def test_dashboard_renders_live_stats():
    cfg = make_cfg()
    c = BufferClient(cfg)
    for i in range(12):
        c.add_group(make_group(i, [1, 0, 0, 1, 0, 1, 1, 0] if i % 3 else [1] * 8, version=i // 4,
                               category=["geometry", "charts"][i % 2]))
        if i % 4 == 3:
            c.sample(12, policy_version=i // 4, seed=i)
    c.publish_tasks([make_task(i) for i in range(5)])
    c.publish_policy_version(PolicyVersion(version=2, step=2))
    port = free_port()
    proc = _serve(cfg, port, ["--set", "buffer.read_token=tok123"])
    try:
        st = httpx.get(f"http://127.0.0.1:{port}/v1/stats", headers={"Authorization": "Bearer tok123"}).json()
        dom = _dump_dom(f"http://127.0.0.1:{port}/?token=tok123&interval=500")
        assert 'data-status="ok"' in dom and int(re.search(r'data-renders="(\d+)"', dom).group(1)) >= 1
        assert re.search(r'id="v-groups">12<', dom) and re.search(rf'id="v-total">{st["sizes"]["total"]}<', dom)
        assert re.search(r'id="v-queue">5 / 0<', dom) and re.search(r'id="v-policy">2 / 0<', dom)
        for chart in ("effective", "versions", "sizes", "rates", "adv", "stale", "reuse"):
            assert int(_attr(dom, f"chart-{chart}", "data-points")) > 0, chart
        assert int(_attr(dom, "chart-adv", "data-total")) == sum(st["advantage_histogram"]["counts"])
        assert int(_attr(dom, "chart-stale", "data-total")) == sum(st["staleness_histogram"]["counts"])
        assert int(_attr(dom, "chart-reuse", "data-total")) == sum(st["reuse"]["draws"])
        assert int(_attr(dom, "chart-versions", "data-points")) == 3 * len(st["by_version"]) == 9
        assert _attr(dom, "table-categories", "data-rows") == "2"
        assert dom.count("<path") >= 4 and dom.count('class="bar"') >= 20
        assert "cdn" not in dom.lower() and "https://" not in dom
        # without the token the page shows the error instead of data
        denied = _dump_dom(f"http://127.0.0.1:{port}/")
        assert 'data-status="error"' in denied and "HTTP 401" in denied
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        c.close()
        delete_namespace(SHARED_REDIS_URL, cfg.redis.namespace)
    log = proc.stdout.read()
    assert proc.returncode in (0, -signal.SIGTERM) and "Finished server process" in log  # graceful stop
