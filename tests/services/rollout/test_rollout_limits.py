"""Bounded work per request and the bearer token of a rollout server's HTTP API, on a real socket
with the tiny model: 413 for oversized bodies before parsing, 4xx naming the field for inputs
that used to give 500 (tiny temperature, huge seed, decompression bomb), ``/healthz`` answering
while a large prompt is prepared, 401 without the configured token."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
import zlib

import httpx
import pytest

from rollout_helpers import free_port, png, start_http, stop_http
from services.rollout.app import create_app
from services.rollout.client import AsyncRolloutClient, RolloutClientError
from services.rollout.scoring import HttpScorer
from services.rollout.server import RolloutServer

pytestmark = pytest.mark.timeout(180)

TOKEN = "rollout-t0ken-Lima"
MAX_BODY = 8 * 1024 * 1024
MAX_PROMPT_TOKENS = 100_000  # large, so that a prompt near the limit takes real tokenizing time (about 1 s)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _image_msg(raw: bytes) -> list[dict]:
    import base64

    return [{"role": "user", "content": [{"type": "image", "image": base64.b64encode(raw).decode()},
                                         {"type": "text", "text": "What colour?"}]}]


def _raw_413(port: int, size: int, *, chunked: bool = False) -> tuple[bytes, float]:
    """POST the head of a ``size``-byte body (declared, or sent chunked up to ``size``) and read the
    answer; a client that keeps sending after an early 413 would see the connection closed."""
    t0 = time.perf_counter()
    length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    head = (f"POST /v1/generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\n{length}\r\n\r\n").encode()
    body = b'{"messages": [{"role": "user", "content": "' + b"a" * (size if chunked else 65536)
    if chunked:
        body = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in (body[i:i + 1 << 20] for i in range(0, len(body), 1 << 20)))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(head + body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        while True:
            part = s.recv(65536)
            if not part:
                break
            data += part
            if b"\r\n\r\n" in data and data.rstrip().endswith(b"}"):
                break
    return data, time.perf_counter() - t0


def test_limits_bad_input_and_token(cfg_factory):
    port = free_port()
    cfg = cfg_factory(
        f"rollout.port={port}", f"rollout.max_body_bytes={MAX_BODY}", f"data.max_prompt_tokens={MAX_PROMPT_TOKENS}",
        f"rollout.api_token={TOKEN}",
    )

    async def run():
        server = RolloutServer(cfg, scorer=HttpScorer(cfg, base_url="http://127.0.0.1:9"), server_id="rs-limits",
                               receive_weights=False)
        http, task = await start_http(create_app(server), port)
        url = f"http://127.0.0.1:{port}"
        raw = httpx.AsyncClient(base_url=url, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"})
        anon = httpx.AsyncClient(base_url=url, timeout=60)
        client = AsyncRolloutClient(url, retries=0, token=TOKEN)
        out: dict = {}
        try:
            await server.start(run_actor=False)
            assert await client.wait_ready(30)
            msg = [{"role": "user", "content": "What colour?"}]
            # -- the token
            out["anon"] = await anon.post("/v1/generate", json={"messages": msg, "sampling": {"max_new_tokens": 2}})
            out["wrong"] = await anon.post("/v1/generate", json={"messages": msg}, headers={"Authorization": "Bearer nope"})
            out["ok"] = await client.generate(msg, max_new_tokens=2)
            with pytest.raises(RolloutClientError) as err:
                await AsyncRolloutClient(url, retries=0).generate(msg, max_new_tokens=2)
            out["client_no_token"] = err.value.status
            out["health_anon"] = (await anon.get("/healthz")).status_code
            out["status_text"] = (await anon.get("/v1/status")).text
            # -- inputs that were 500s
            out["tiny_temp"] = await raw.post("/v1/generate", json={"messages": msg, "sampling": {"temperature": 1e-300}})
            out["huge_seed"] = await raw.post("/v1/generate", json={"messages": msg, "sampling": {"seed": 2**70}})
            out["bomb"] = await raw.post("/v1/generate", json={"messages": _image_msg(png_header(20000, 20000))})
            out["big_image"] = await raw.post("/v1/generate", json={"messages": _image_msg(png_header(8000, 8000))})
            out["fine_image"] = await raw.post("/v1/generate", json={"messages": _image_msg(png((1, 2, 3))),
                                                                     "sampling": {"max_new_tokens": 2, "seed": 2**32 - 1}})
            # -- sizes: a 100 MB body (413 before it is read), a body just over the limit
            out["raw413"] = await asyncio.to_thread(_raw_413, port, 100 * 1024 * 1024)
            out["over"] = await asyncio.to_thread(_raw_413, port, MAX_BODY + 10, chunked=True)
            # text that cannot fit max_prompt_tokens is refused before tokenizing
            per_token = max(len(t) for t in server.engine.tokenizer.get_vocab())
            too_long = "a" * (MAX_PROMPT_TOKENS * per_token + 1)
            t0 = time.perf_counter()
            out["too_long"] = await raw.post("/v1/generate", json={"messages": [{"role": "user", "content": too_long}]})
            out["too_long_s"] = time.perf_counter() - t0
            # -- a large prompt under every cheap bound: tokenized in a worker thread while /healthz answers
            words = "the quick brown fox jumps over the lazy dog "
            big = words * (MAX_PROMPT_TOKENS * per_token // len(words) // 2)  # about 5 tokens per 10 characters: over the token limit
            req = asyncio.create_task(raw.post("/v1/generate", json={"messages": [{"role": "user", "content": big}]}))
            probes: list[tuple[float, bool]] = []
            await asyncio.sleep(0.05)
            while not req.done():
                p0 = time.perf_counter()
                r = await anon.get("/healthz")
                probes.append((time.perf_counter() - p0, not req.done()))
                assert r.status_code == 200
                await asyncio.sleep(0.02)
            out["big"] = await req
            out["probes"] = probes
            return out
        finally:
            await client.aclose()
            await raw.aclose()
            await anon.aclose()
            await server.stop()
            await stop_http(http, task)

    out = asyncio.run(run())
    # token
    assert out["anon"].status_code == 401 and out["wrong"].status_code == 401
    assert out["anon"].headers["www-authenticate"] == "Bearer" and "rollout.api_token" in out["anon"].json()["detail"]
    assert out["ok"]["choices"] and out["client_no_token"] == 401 and out["health_anon"] == 200
    assert TOKEN not in out["status_text"] and TOKEN not in out["anon"].text
    # the former 500s: 4xx naming the field
    assert out["tiny_temp"].status_code == 422
    assert out["tiny_temp"].json()["detail"][0]["loc"] == ["body", "sampling", "temperature"]
    assert out["huge_seed"].status_code == 422
    assert out["huge_seed"].json()["detail"][0]["loc"] == ["body", "sampling", "seed"]
    for key in ("bomb", "big_image"):
        assert out[key].status_code == 400, out[key].text
        assert out[key].json()["detail"].startswith("messages[-1].content[0]: image")
    assert "rollout.max_image_pixels=40000000" in out["big_image"].json()["detail"]
    assert out["fine_image"].status_code == 200, out["fine_image"].text
    # sizes
    data, seconds = out["raw413"]
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["limit"] == MAX_BODY and seconds < 2.0
    data, _ = out["over"]
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    assert f"rollout.max_body_bytes={MAX_BODY}" in json.loads(data.split(b"\r\n\r\n", 1)[1])["detail"]
    assert out["too_long"].status_code == 400 and "data.max_prompt_tokens" in out["too_long"].json()["detail"]
    assert out["too_long_s"] < 1.0
    # the large prompt was tokenized (then refused for its token count) while /healthz kept answering
    assert out["big"].status_code == 400 and "tokens > data.max_prompt_tokens" in out["big"].json()["detail"]
    during = [s for s, running in out["probes"] if running]
    assert len(during) >= 3, out["probes"]
    assert max(s for s, _ in out["probes"]) < 0.5, out["probes"]
