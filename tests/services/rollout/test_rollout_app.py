"""HTTP API of a rollout server on a real socket: /healthz, /v1/generate, /v1/status, /metrics;
weights arriving through the learner's weight transport (gloo) and from a published checkpoint."""

from __future__ import annotations

import asyncio
import base64

import httpx
import pytest

from common.model_loading import load_model
from rollout_helpers import free_port, png, start_http, stop_http
from services.rollout.app import create_app
from services.rollout.client import AsyncRolloutClient, RolloutClientError, build_request_messages
from services.rollout.scoring import HttpScorer
from services.rollout.server import RolloutServer
from weight_transport import make_sender, specs_of

pytestmark = pytest.mark.timeout(240)

SUFFIX = "\n\nPlease reason step by step, and put your final answer within \\boxed{}."


def make_server(cfg, verifier_url, server_id="rs-app", **kw):
    return RolloutServer(cfg, scorer=HttpScorer(cfg, base_url=verifier_url), server_id=server_id, **kw)


def test_generate_status_health_metrics(cfg_factory, verifier_url, sft_model_dir):
    port = free_port()
    cfg = cfg_factory(f"rollout.port={port}", model_dir=sft_model_dir)

    async def run():
        server = make_server(cfg, verifier_url, receive_weights=False)
        http, task = await start_http(create_app(server), port)
        url = f"http://127.0.0.1:{port}"
        client = AsyncRolloutClient(url, retries=0)
        raw = httpx.AsyncClient(base_url=url)
        try:
            assert (await raw.get("/healthz")).status_code == 503  # nothing loaded yet
            assert not await client.healthz()
            await server.start(run_actor=False)
            assert await client.wait_ready(10)
            out = await client.generate_question(
                "<image>How many shapes are there?", [png((255, 0, 0))], prompt_suffix=SUFFIX,
                n=2, temperature=1.0, max_new_tokens=30, seed=1, return_token_ids=True, return_logprobs=True,
            )
            rethought = await client.generate_question(
                "<image>How many shapes are there?", [png((255, 0, 0))], prompt_suffix=SUFFIX,
                temperature=0.0, max_new_tokens=30, force_rethink=True,
            )
            # errors: 400 with a reason / 422 for schema violations, never 500
            body = {"messages": build_request_messages("<image>?", [b"not an image"])}
            bad_image = await raw.post("/v1/generate", json=body)
            remote = await raw.post("/v1/generate", json={"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "http://example.com/x.png"}}, {"type": "text", "text": "?"}]}]})
            literal = await raw.post("/v1/generate", json={"messages": [{"role": "user", "content": "look <image>"}]})
            two_users = await raw.post("/v1/generate", json={"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})
            bad_n = await raw.post("/v1/generate", json={"messages": [{"role": "user", "content": "a"}], "sampling": {"n": 0}})
            unknown = await raw.post("/v1/generate", json={"messages": [{"role": "user", "content": "a"}], "temperature": 1})
            not_b64 = await raw.post("/v1/generate", json={"messages": [{"role": "user", "content": [{"type": "image", "image": "%%%"}]}]})
            data_url = "data:image/png;base64," + base64.b64encode(png((0, 0, 255))).decode()
            ok_url = await raw.post("/v1/generate", json={"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": data_url}}, {"type": "text", "text": "How many shapes are there?"}]}],
                "prompt_suffix": SUFFIX, "sampling": {"max_new_tokens": 30}})
            with pytest.raises(RolloutClientError) as err:
                await client.generate([{"role": "assistant", "content": "x"}])
            status = await client.status()
            metrics = (await raw.get("/metrics")).text
            codes = [r.status_code for r in (bad_image, remote, literal, two_users, bad_n, unknown, not_b64)]
            return out, rethought, codes, bad_image.json(), ok_url.json(), err.value.status, status, metrics
        finally:
            await client.aclose()
            await raw.aclose()
            await server.stop()
            await stop_http(http, task)

    out, rethought, codes, bad_image, ok_url, err_status, status, metrics = asyncio.run(run())
    assert out["policy_version"] == 0 and out["engine"] == "hf" and len(out["choices"]) == 2
    for ch in out["choices"]:
        assert ch["text"].endswith("\\boxed{3}.") and ch["finish_reason"] == "stop"
        assert len(ch["token_ids"]) == len(ch["logprobs"]) == ch["n_tokens"] and not ch["rethought"]
    assert out["usage"]["prompt_tokens"] > 0 and out["usage"]["completion_tokens"] == sum(c["n_tokens"] for c in out["choices"])
    [rc] = rethought["choices"]
    assert rc["rethought"] and "\n\nWait" in rc["text"] and rc["text"].startswith(rc["first_text"])
    assert rc["text"].endswith("\\boxed{3}.")
    assert codes == [400, 400, 400, 400, 422, 422, 400]
    assert "image" in bad_image["detail"]
    assert ok_url["choices"][0]["text"].endswith("\\boxed{3}.")
    assert err_status == 422
    assert status["ready"] and status["engine"] == "hf" and status["loaded_version"] == 0
    assert {"tokens_per_s", "in_flight_tasks", "rethinking", "actor", "weights"} <= status.keys()
    assert {"triggered", "kept", "accuracy_before", "accuracy_after"} <= status["rethinking"].keys()
    assert "rethinker_rollout_loaded_version 0.0" in metrics and "rethinker_rollout_tokens_generated_total" in metrics


def test_weights_from_the_learner_transport_and_checkpoint(cfg_factory, verifier_url, sft_model_dir, tiny_model_dir):
    port = free_port()
    cfg = cfg_factory(f"rollout.port={port}")  # starts from the random tiny model
    sft_state = load_model(sft_model_dir).state_dict()

    async def generate(client):
        out = await client.generate_question("<image>How many shapes are there?", [png((255, 0, 0))],
                                             prompt_suffix=SUFFIX, temperature=0.0, max_new_tokens=20)
        return out["policy_version"], out["choices"][0]["text"]

    async def run():
        server = make_server(cfg, verifier_url)
        http, task = await start_http(create_app(server), port)
        client = AsyncRolloutClient(f"http://127.0.0.1:{port}", retries=0)
        sender = make_sender(cfg)
        try:
            await server.start(run_actor=False)
            v0 = await generate(client)
            for _ in range(100):  # the receiver registers within a heartbeat
                if server.server_id in sender.members():
                    break
                await asyncio.sleep(0.05)
            report = await asyncio.to_thread(
                sender.sync, specs_of(sft_state), (t for t in sft_state.values()), version=3, step=3
            )
            v3 = await generate(client)
            st = await client.status()
            # a learner checkpoint published now is what a (re)starting server loads first
            await asyncio.to_thread(sender.publish_checkpoint, str(tiny_model_dir), version=4, step=4)
        finally:
            await client.aclose()
            await server.stop()
            await stop_http(http, task)
            sender.close()
        server2 = make_server(cfg, verifier_url, server_id="rs-app-2")
        await server2.start(run_actor=False)
        try:
            v_restart = server2.engine.loaded_version, server2.status()["weights"]
        finally:
            await server2.stop()
        return v0, report, v3, st, v_restart

    v0, report, v3, st, (v_restart, w2) = asyncio.run(run())
    assert report.ok and report.joined == ["rs-app"], report
    assert v0[0] == 0 and "boxed" not in v0[1]
    assert v3[0] == 3 and v3[1].endswith("\\boxed{3}.")  # the learner's weights changed the outputs
    assert st["loaded_version"] == 3 and st["weights"]["loads"] == 1 and st["weights"]["receiver_version"] == 3
    assert v_restart == 4 and w2["loads"] == 1
