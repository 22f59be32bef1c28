"""``--server URL``: decoding against rollout servers over real HTTP, round-robin, with resume.

The servers here are scripted stand-ins for the rollout server's ``/v1/generate`` contract (chat
messages with base64 images, sampling, ``force_rethink`` -> ``first_text`` + ``text``); they answer
from the same scripts as the scripted engine.  The decoder, the client, the runner, the verifier and
the CLI are real.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI, HTTPException

from eval_scripted import is_correct_by_plan, make_script, planned, wrong_answer
from evaluation.benchmarks import load_benchmark
from evaluation.judging import Judge
from evaluation.runner import EvalRunner, RunSettings
from evaluation.server_decoder import ServerDecoder

ROOT = Path(__file__).resolve().parents[2]


def scripted_server_app(script, log: list) -> FastAPI:
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    @app.post("/v1/generate")
    def generate(body: dict) -> dict:
        parts = body["messages"][-1]["content"]
        text, images = "", []
        for p in parts:
            if p["type"] == "text":
                text += p["text"]
            else:
                images.append(base64.b64decode(p["image"]))
                text += "<image>"
        s = body["sampling"]
        if s.get("temperature") != 0.0:
            raise HTTPException(422, "expected greedy decoding")
        prompt = text + body.get("prompt_suffix", "")
        log.append({"prompt": prompt, "n_images": len(images), "force_rethink": body.get("force_rethink", False)})
        try:
            y1 = script(prompt, images, None)
        except ValueError as exc:
            raise HTTPException(400, f"cannot build the prompt: {exc}") from None
        limit = s["max_new_tokens"]
        stop = len(y1) + 1 <= limit
        ch = {"index": 0, "text": y1 if stop else y1[:limit], "finish_reason": "stop" if stop else "length",
              "n_tokens": min(len(y1) + 1, limit), "policy_version": 0, "rethought": False}
        if body.get("force_rethink") and stop:
            y2 = script(prompt, images, y1 + "\n\nWait")
            ch.update(first_text=y1, text=y1 + "\n\nWait" + y2, finish_reason="stop", rethought=True,
                      n_tokens=len(y1) + 6 + len(y2) + 1)
        return {"id": "x", "server_id": "s", "engine": "scripted", "policy_version": 0, "choices": [ch],
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": ch["n_tokens"]}, "seconds": 0.0}

    return app


class ServerThread:
    def __init__(self, app: FastAPI) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "scripted server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def test_round_robin_over_two_servers_with_rethinking(bench_root, tmp_path):
    root, truth = bench_root
    ts = truth["mathvision"]

    def respond(bench, i, t):
        good, bad = f"\\boxed{{{t['gold']}}}", f"\\boxed{{{wrong_answer(t)}}}"
        return (f"First {bad}.", f" no: {good}.") if i == 0 else (f"First {good}.", f" yes {good}.")

    script = make_script({"mathvision": ts}, respond)
    log1, log2 = [], []
    with ServerThread(scripted_server_app(script, log1)) as s1, ServerThread(scripted_server_app(script, log2)) as s2:
        dec = ServerDecoder([s1.url, s2.url])
        assert dec.max_inflight == 2
        settings = RunSettings(model="served", max_new_tokens=300, batch_size=2, force_rethink=True)
        runner = EvalRunner(dec, settings, judge=Judge(workers=0), out_dir=tmp_path / "o", progress=False)

        async def go():
            try:
                return await runner.run({"mathvision": load_benchmark("mathvision", root)})
            finally:
                await dec.aclose()

        summary = asyncio.run(go())
    n = len(ts)
    assert len(log1) + len(log2) == n and abs(len(log1) - len(log2)) <= 1  # round-robin
    assert all(e["force_rethink"] and e["n_images"] == 1 for e in log1 + log2)
    s = summary["benchmarks"]["mathvision"]
    assert (s["correct"], s["correct_rethink"], s["wrong_to_right"]) == (n - 1, n, 1)
    recs = [json.loads(x) for x in (tmp_path / "o/results/mathvision.jsonl").read_text().splitlines()]
    r0 = next(r for r in recs if r["id"] == ts[0]["id"])
    assert r0["rethink"]["continuation"] == respond("mathvision", 0, ts[0])[1]
    assert r0["response"] == respond("mathvision", 0, ts[0])[0]


def test_cli_eval_against_a_server_and_resume(bench_root, tmp_path):
    root, truth = bench_root
    log: list = []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    with ServerThread(scripted_server_app(make_script(truth, planned), log)) as srv:
        args = [sys.executable, "-m", "rethinker.cli", "eval", "--server", srv.url, "--data-dir", str(root),
                "--bench", "emma", "--bench", "mmmu_pro:vision", "--out", str(out), "--judge-workers", "0", "--no-progress"]
        r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        n = len(truth["emma"]) + len(truth["mmmu_pro:vision"])
        assert len(log) == n
        for b in ("emma", "mmmu_pro:vision"):
            k = sum(is_correct_by_plan(i) for i in range(len(truth[b])))
            assert f"{b}: {100 * k / len(truth[b]):.1f}% ({k}/{len(truth[b])})" in r.stdout
        summary = json.loads((out / "summary.json").read_text())
        assert summary["model"] == f"server:{srv.url}"
        # drop two finished items and run again: only those two go to the server
        f = out / "results" / "emma.jsonl"
        f.write_text("".join(f.read_text().splitlines(keepends=True)[:-2]))
        r2 = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
        assert r2.returncode == 0, r2.stderr[-3000:]
        assert len(log) == n + 2
        assert json.loads((out / "summary.json").read_text())["benchmarks"] == summary["benchmarks"]


def test_unreachable_server_stops_the_run_with_a_clear_error(bench_root, tmp_path):
    root, _ = bench_root
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dec = ServerDecoder([f"http://127.0.0.1:{port}"], retries=0)
    runner = EvalRunner(dec, RunSettings(model="m", batch_size=2), judge=Judge(workers=0), out_dir=tmp_path / "o", progress=False)
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
        asyncio.run(runner.run({"emma": load_benchmark("emma", root)}))
    assert not (tmp_path / "o/results/emma.jsonl").exists() or (tmp_path / "o/results/emma.jsonl").read_text() == ""
