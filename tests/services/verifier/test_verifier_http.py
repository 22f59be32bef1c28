"""The verifier's HTTP service, run as a real server (``rethinker serve verifier``) on 127.0.0.1.

One server process for the module (uvicorn, 2 grading workers, the production 1 s item limit and
small request limits); the tests talk to it over HTTP with httpx and with the public client, and
the last test stops it with SIGTERM and checks that no process it started survives.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from services.verifier.client import VerifierClient, VerifierRequestError, VerifierUnavailable

ROOT = Path(__file__).resolve().parents[3]
MAX_ITEMS = 300
MAX_ITEM_CHARS = 450_000
MAX_BODY = 3_000_000
SLOW = ("\\boxed{x^2 + y = (x+1)^{300}}", "x^2 + y = (x+2)^{300}")  # sympy needs seconds: times out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable, "-m", "rethinker.cli", "serve", "verifier",
        "--set", f"verifier.port={port}", "--set", "verifier.workers=2", "--set", "verifier.timeout_s=1.0",
        "--set", f"verifier.max_items={MAX_ITEMS}", "--set", f"verifier.max_item_chars={MAX_ITEM_CHARS}",
        "--set", f"verifier.max_body_bytes={MAX_BODY}", "--set", "algorithm.reward.shaping=true",
        "--set", "run.log_level=WARNING",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stdout.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.time() > deadline:
            proc.kill()
            raise RuntimeError("server did not become healthy")
        time.sleep(0.2)
    yield url, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def _post(url: str, payload, **kw) -> httpx.Response:
    body = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
    return httpx.post(f"{url}/v1/verify", content=body, headers={"content-type": "application/json"}, timeout=60, **kw)


def test_healthz(server) -> None:
    url, _ = server
    r = httpx.get(f"{url}/healthz")
    assert r.status_code == 200
    assert r.json()["status"] == "ok" and r.json()["workers"] == 2 and r.json()["alive"] == 2


def test_verify_verdicts_and_rewards(server) -> None:
    url, _ = server
    items = [
        {"id": "a", "response": "So \\boxed{1,200}.", "gold": "1200"},
        {"id": "b", "response": "The answer is (C).", "gold": "C"},
        {"id": "c", "response": "\\boxed{C or D}", "gold": "C"},
        {"id": "d", "response": "\\boxed{5}", "gold": "5", "eos": False},
        {"id": "e", "response": "\\boxed{5}\n\nWait, does it seem right? Yes, it is correct.", "gold": "5"},
        {"id": "f", "response": "\\boxed{5}\n\nWait, does it seem right? Yes.", "gold": "5", "rethought": True},
        {"id": "g", "response": "\\boxed{5} " + "wait " * 6, "gold": "5"},
        {"id": "h", "response": "\\boxed{55}", "gold": "C", "question": "Angle?\nA. 35\nB. 45\nC. 55"},
    ]
    r = _post(url, {"items": items})
    assert r.status_code == 200
    res = r.json()["results"]
    assert [x["id"] for x in res] == list("abcdefgh")
    assert [x["correct"] for x in res] == [True, True, False, True, True, True, True, True]
    # shaping is on in this server: 1 wait on a first-pass correct answer earns the bonus
    assert [x["reward"] for x in res] == pytest.approx([1.0, 1.0, 0.0, -0.1, 1.1, 1.0, -0.1, 1.0])
    assert [x["n_wait"] for x in res] == [0, 0, 0, 0, 1, 1, 6, 0]
    assert res[0]["extracted"] == "1,200" and res[2]["reason"].startswith("hedged")
    assert not any(x["timed_out"] for x in res)


def test_large_batch_keeps_order(server) -> None:
    url, _ = server
    items = [{"id": str(i), "response": f"\\boxed{{{i}}}", "gold": str(i if i % 3 else i + 1)} for i in range(MAX_ITEMS)]
    res = _post(url, {"items": items}).json()["results"]
    assert [x["id"] for x in res] == [str(i) for i in range(MAX_ITEMS)]
    assert [x["correct"] for x in res] == [bool(i % 3) for i in range(MAX_ITEMS)]


def test_size_limits_answer_413_naming_the_limit(server) -> None:
    url, _ = server
    r = _post(url, {"items": [{"response": "x", "gold": "1"}] * (MAX_ITEMS + 1)})
    assert r.status_code == 413 and f"max_items={MAX_ITEMS}" in r.json()["detail"]
    r = _post(url, {"items": [{"response": "1" * (MAX_ITEM_CHARS + 1), "gold": "1"}]})
    assert r.status_code == 413 and f"max_item_chars={MAX_ITEM_CHARS}" in r.json()["detail"]
    assert "items[0].response" in r.json()["detail"]
    r = _post(url, {"items": [{"response": "1" * (MAX_BODY + 10), "gold": "1"}]})
    assert r.status_code == 413 and f"max_body_bytes={MAX_BODY}" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit applies while streaming
        for _ in range(40):
            yield b"x" * 100_000

    r = httpx.post(f"{url}/v1/verify", content=chunks(), timeout=60)
    assert r.status_code == 413 and f"max_body_bytes={MAX_BODY}" in r.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        "",
        "not json",
        "[]",
        "{}",
        '{"items": 5}',
        '{"items": [{"response": 1, "gold": "1"}]}',
        '{"items": [{"response": "1"}]}',
        '{"items": [{"response": "1", "gold": "1", "bogus": true}]}',
        '{"items": [{"response": "1", "gold": "1", "eos": "maybe"}]}',
        '{"items": [{"response": "\\ud800", "gold": "1"}]}',
        "[" * 100_000,
        b"\xff\xfe\x00garbage",
    ],
)
def test_malformed_bodies_answer_422(server, body) -> None:
    url, _ = server
    r = _post(url, body)
    assert r.status_code == 422, r.text[:300]
    assert r.json()["detail"] == "invalid request body" and isinstance(r.json()["errors"], list)


def test_hostile_items_answer_quickly_and_never_500(server) -> None:
    url, _ = server
    items = [
        {"response": "Let me think. " * 30_000 + "\\boxed{5}", "gold": "5"},
        {"response": "\\boxed{" + "9" * 400_000 + "}", "gold": "5"},
        {"response": "\\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}", "gold": "1"},
        {"response": "\\boxed{9^{9^{9^{9}}}}", "gold": "1"},
        {"response": "\\boxed{1000000!}", "gold": "1"},
        {"response": "the answer is " * 30_000, "gold": "5"},
        {"response": "\\boxed{\u0000\uffff}", "gold": "\u0000"},
    ]
    t0 = time.perf_counter()
    r = _post(url, {"items": items})
    elapsed = time.perf_counter() - t0
    assert r.status_code == 200
    # 1 inside 10,000 braces equals the gold 1 (the grading rules: value, not spelling)
    assert [x["correct"] for x in r.json()["results"]] == [True, False, True, False, False, False, False]
    assert not any(x["timed_out"] for x in r.json()["results"])
    assert elapsed < 6.0


def test_timeout_is_reported_and_counted(server) -> None:
    url, _ = server
    t0 = time.perf_counter()
    r = _post(url, {"items": [{"id": "slow", "response": SLOW[0], "gold": SLOW[1]}, {"response": "\\boxed{2}", "gold": "2"}]})
    elapsed = time.perf_counter() - t0
    res = r.json()["results"]
    assert res[0]["timed_out"] and not res[0]["correct"] and res[0]["reward"] == 0.0 and res[0]["reason"].startswith("timeout")
    assert res[1]["correct"]
    assert elapsed < 3.0
    assert httpx.get(f"{url}/healthz").json()["alive"] == 2  # the killed worker was replaced
    metrics = httpx.get(f"{url}/metrics").text
    assert "verifier_timeouts_total 1.0" in metrics or "verifier_timeouts_total 2.0" in metrics


def test_metrics_count_requests_items_and_verdicts(server) -> None:
    url, _ = server

    def value(text: str, name: str) -> float:
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                if line.split(" ")[0] == name or line.startswith(name + "{"):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = httpx.get(f"{url}/metrics").text
    _post(url, {"items": [{"response": "\\boxed{1}", "gold": "1"}, {"response": "\\boxed{2}", "gold": "1"}]})
    _post(url, "not json")
    after = httpx.get(f"{url}/metrics").text
    assert value(after, "verifier_items_total") - value(before, "verifier_items_total") == 2
    assert value(after, 'verifier_verdicts_total{verdict="correct"}') - value(before, 'verifier_verdicts_total{verdict="correct"}') == 1
    assert value(after, 'verifier_verdicts_total{verdict="wrong"}') - value(before, 'verifier_verdicts_total{verdict="wrong"}') == 1
    assert value(after, 'verifier_requests_total{status="422"}') - value(before, 'verifier_requests_total{status="422"}') == 1
    assert value(after, "verifier_request_seconds_count") - value(before, "verifier_request_seconds_count") == 2
    assert "verifier_request_seconds_bucket" in after


def test_client_sync_async_batching_and_errors(server) -> None:
    url, _ = server
    items = [(f"\\boxed{{{i}}}", str(i)) for i in range(20)] + [{"id": "x", "response": "\\boxed{B}", "gold": "A"}]
    with VerifierClient(url, timeout_s=30, retries=1, batch_size=7) as client:
        res = client.verify(items)
        assert [r.correct for r in res] == [True] * 20 + [False] and res[-1].id == "x"
        assert client.health()["status"] == "ok"
        with pytest.raises(VerifierRequestError) as err:
            client.verify([("1" * (MAX_ITEM_CHARS + 1), "1")])
        assert err.value.status == 413 and "max_item_chars" in str(err.value)
    ares = asyncio.run(VerifierClient(url, batch_size=7).averify(items))
    assert [r.correct for r in ares] == [r.correct for r in res]

    dead = VerifierClient(f"http://127.0.0.1:{_free_port()}", timeout_s=1, retries=2, backoff_s=0.01)
    t0 = time.perf_counter()
    with pytest.raises(VerifierUnavailable) as err:
        dead.verify([("\\boxed{1}", "1")])
    assert "after 3 attempts" in str(err.value) and time.perf_counter() - t0 < 5


def test_async_client_keeps_its_connection_across_calls(server) -> None:
    """Consecutive ``averify`` calls on one loop reuse one kept-alive connection (a client per call
    would open a new connection, and build a new TLS context, every time); a new loop gets its own."""
    url, _ = server
    port = int(url.rsplit(":", 1)[1])
    accepted = 0

    async def main() -> list[bool]:
        nonlocal accepted

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            finally:
                writer.close()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal accepted
            accepted += 1
            up_r, up_w = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer), return_exceptions=True)

        proxy = await asyncio.start_server(handle, "127.0.0.1", 0)
        proxy_port = proxy.sockets[0].getsockname()[1]
        client = VerifierClient(f"http://127.0.0.1:{proxy_port}", timeout_s=30, retries=0)
        out = []
        for i in range(5):
            (res,) = await client.averify([(f"\\boxed{{{i}}}", str(i))])
            out.append(res.correct)
        await client.aclose()
        proxy.close()
        return out

    assert asyncio.run(main()) == [True] * 5
    assert accepted == 1


def test_sigterm_stops_the_server_and_all_its_workers(server) -> None:
    url, proc = server
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 2  # at least the two grading workers
    proc.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal it caught: -15 is the normal status
    assert proc.wait(20) in (0, -signal.SIGTERM)
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"processes left behind: {alive}"
