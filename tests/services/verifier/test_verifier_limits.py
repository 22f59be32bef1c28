"""Bounded work per request and the bearer token of the verifier service, on a real server.

One ``rethinker serve verifier`` process for the module with ONE grading worker (so that sharing
is visible), the production 1 s item limit, a 3 s request budget, a small body limit and an API
token given through the environment (as a Secret would be).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from services.verifier.client import VerifierClient, VerifierRequestError

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "verifier-t0ken-Kilo"
BUDGET_S = 3.0
MAX_BODY = 2_000_000
SLOW = ("\\boxed{x^2 + y = (x+1)^{300}}", "x^2 + y = (x+2)^{300}")  # sympy needs seconds: times out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("verifier") / "verifier.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "RETHINKER__VERIFIER__API_TOKEN": TOKEN}
    cmd = [
        sys.executable, "-m", "rethinker.cli", "serve", "verifier",
        "--set", f"verifier.port={port}", "--set", "verifier.workers=1", "--set", "verifier.timeout_s=1.0",
        "--set", f"verifier.request_budget_s={BUDGET_S}", "--set", f"verifier.max_body_bytes={MAX_BODY}",
        "--set", "run.log_level=DEBUG",
    ]
    fh = open(log, "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.time() > deadline:
            proc.kill()
            raise RuntimeError("server did not become healthy")
        time.sleep(0.2)
    yield url, port, log
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    fh.close()


def _auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _verify(url: str, items: list[dict], *, token: str | None = TOKEN, timeout: float = 60) -> httpx.Response:
    headers = _auth(token) if token is not None else {}
    return httpx.post(f"{url}/v1/verify", json={"items": items}, headers=headers, timeout=timeout)


def test_verify_needs_the_bearer_token_and_the_clients_send_it(server) -> None:
    url, _, log = server
    item = [{"response": "\\boxed{2}", "gold": "2"}]
    assert _verify(url, item, token=None).status_code == 401
    wrong = _verify(url, item, token="not-the-token")
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert "verifier.api_token" in wrong.json()["detail"] and TOKEN not in wrong.text
    ok = _verify(url, item)
    assert ok.status_code == 200 and ok.json()["results"][0]["correct"]
    assert httpx.get(f"{url}/healthz").status_code == 200  # probes need no token
    with pytest.raises(VerifierRequestError) as err:
        VerifierClient(url, retries=0).verify([("\\boxed{2}", "2")])
    assert err.value.status == 401
    with VerifierClient(url, retries=0, token=TOKEN) as client:
        assert client.verify([("\\boxed{2}", "2")])[0].correct
    for path in ("/healthz", "/metrics", "/openapi.json"):
        assert TOKEN not in httpx.get(f"{url}{path}").text
    assert TOKEN not in log.read_text(errors="replace")


def _raw_post(port: int, head: bytes, first_chunk: bytes, *, timeout: float = 10.0) -> tuple[bytes, float]:
    """Send a request head and the first part of its body, then read what the server answers."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head + first_chunk)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.find(b"\r\n\r\n") + 4 + 10:
            part = s.recv(65536)
            if not part:
                break
            data += part
    return data, time.perf_counter() - t0


def test_a_100mb_body_gets_413_before_it_is_read(server) -> None:
    _, port, _ = server
    size = 100 * 1024 * 1024
    head = (f"POST /v1/verify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n").encode()
    data, seconds = _raw_post(port, head, b'{"items": [' + b" " * 65536)
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
    assert body["limit"] == MAX_BODY and f"verifier.max_body_bytes={MAX_BODY}" in body["detail"]
    assert seconds < 2.0
    # the same without a declared length (chunked): counted while streaming
    head = (f"POST /v1/verify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    chunk = b" " * (1024 * 1024)
    chunks = b"".join(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(3))
    data, seconds = _raw_post(port, head, chunks)
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    assert seconds < 2.0


def test_many_slow_items_neither_starve_a_small_request_nor_run_past_the_budget(server) -> None:
    """One worker, a request of 8 items that each run into the 1 s item limit, and a one-item
    request sent 0.5 s later: the small request is served between the big one's items (before the
    big one would have finished: about 8 s in a first-come queue), and the big one ends within its
    3 s budget plus one item limit, its remaining items answered as over budget."""
    url, _, _ = server
    big: dict = {}

    def send_big() -> None:
        t0 = time.perf_counter()
        r = _verify(url, [{"id": f"slow{i}", "response": SLOW[0], "gold": SLOW[1]} for i in range(8)])
        big.update(status=r.status_code, body=r.json(), seconds=time.perf_counter() - t0)

    th = threading.Thread(target=send_big)
    th.start()
    time.sleep(0.5)
    t0 = time.perf_counter()
    small = _verify(url, [{"id": "fast", "response": "\\boxed{7}", "gold": "7"}])
    small_s = time.perf_counter() - t0
    th.join(60)
    assert small.status_code == 200 and small.json()["results"][0]["correct"]
    # behind one in-flight slow item (1 s limit) plus a worker replacement; never behind all eight
    assert small_s < 2.5, small_s
    assert big["status"] == 200
    results = big["body"]["results"]
    assert [r["id"] for r in results] == [f"slow{i}" for i in range(8)] and all(r["timed_out"] for r in results)
    over = [r for r in results if r["reason"].startswith("request budget exceeded")]
    assert over and len(over) < 8, [r["reason"] for r in results]
    assert big["seconds"] < BUDGET_S + 1.0 + 1.5, big["seconds"]
    health = httpx.get(f"{url}/healthz").json()
    assert health["budget_exceeded"] >= len(over) and health["alive"] == 1


def test_openapi_publishes_the_verify_body_and_status_codes(server) -> None:
    url, _, _ = server
    doc = httpx.get(f"{url}/openapi.json").json()
    op = doc["paths"]["/v1/verify"]["post"]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["items"] and schema["properties"]["items"]["items"]["$ref"] == "#/components/schemas/VerifyItem"
    assert {"response", "gold"} <= set(doc["components"]["schemas"]["VerifyItem"]["required"])
    assert {"200", "401", "413", "422", "503"} <= set(op["responses"])
