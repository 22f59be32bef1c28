"""The actor loop against real Redis (buffer client) and a real verifier process: it fills the
buffer, never stores a group twice, pauses on stale weights, gives tasks back when stopped."""

from __future__ import annotations

import asyncio
import time

import pytest

from common.config import PROMPT_SUFFIX
from common.model_loading import load_model
from common.schemas import PolicyVersion, PromptTask, group_id_for
from rollout_helpers import png
from services.buffer.client import AsyncBufferClient, BufferClient
from services.rollout.actor import GroupBuilder
from services.rollout.engines import make_engine
from services.rollout.scoring import HttpScorer
from services.rollout.server import RolloutServer

pytestmark = pytest.mark.timeout(240)

BASE = ("algorithm.sampling.n=4", "algorithm.sampling.max_new_tokens=16", "rollout.batch_prompts=2")


def tasks(n: int, prefix: str = "t", answer: str = "3") -> list[PromptTask]:
    colors = [(255, 0, 0), (0, 0, 255), (0, 160, 0), (200, 200, 0)]
    return [
        PromptTask(
            task_id=f"{prefix}{i}",
            prompt_id=f"{prefix}{i}",
            question="<image>How many shapes are there?",
            answer=answer,
            images=[png(colors[i % 4])],
            prompt_suffix=PROMPT_SUFFIX,
        )
        for i in range(n)
    ]


async def wait_for(cond, timeout_s: float = 60.0, poll_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await cond():
            return
        await asyncio.sleep(poll_s)
    raise TimeoutError("condition not met")


def server_for(cfg, verifier_url: str, **kw) -> RolloutServer:
    return RolloutServer(cfg, scorer=HttpScorer(cfg, base_url=verifier_url), server_id=kw.pop("server_id", "rs-test"), **kw)


def test_actor_fills_the_buffer(cfg_factory, verifier_url):
    cfg = cfg_factory(*BASE)
    ts = tasks(6)

    async def run():
        buf = AsyncBufferClient(cfg)
        await buf.publish_tasks(ts)
        server = server_for(cfg, verifier_url, receive_weights=False)
        await server.start()
        try:
            assert (await buf.live_servers())["rs-test"]["engine"] == "hf"

            async def all_stored():
                return server.stats.tasks_acked == 6

            await wait_for(all_stored)
            groups = [await buf.get_group(group_id_for(t)) for t in ts]
            qs = await buf.queue_stats()
            return server.status(), groups, qs
        finally:
            await server.stop()
            live = await buf.live_servers()
            await buf.close()
            assert "rs-test" not in live  # unregistered on stop

    status, groups, qs = asyncio.run(run())
    assert qs.inflight == 0
    for t, g in zip(ts, groups):
        assert g is not None and g.group_id == group_id_for(t) and g.server_id == "rs-test"
        assert len(g.samples) == 4 and g.policy_version == 0
        assert {s.sample_id for s in g.samples} == {f"{g.group_id}:{i}" for i in range(4)}
        for s in g.samples:
            assert len(s.prompt_token_ids) > 0 and len(s.response_token_ids) == len(s.sampler_logprobs) > 0
            assert s.reward in (0.0, -0.1) and s.verdict_reason  # random model: wrong or invalid
    a = status["actor"]
    assert a["groups_stored"] == 6 and a["tasks_acked"] == 6 and a["groups_duplicate"] == 0 and a["batch_errors"] == 0
    assert status["loaded_version"] == 0 and status["tokens_generated"] > 0 and status["tokens_per_s"] > 0
    # where the server's time went: every activity reported, engine work and round trips measured
    sec = a["seconds"]
    assert list(sec) == ["claim", "encode", "generate", "score", "continue", "store", "paused", "swap_wait"]
    assert sec["generate"] > 0 and sec["encode"] > 0 and sec["score"] > 0 and sec["store"] > 0 and sec["claim"] > 0
    assert sec["continue"] == 0 and sec["paused"] == 0  # version 0: before the rethinking stage; never paused
    assert sum(sec.values()) <= status["uptime_s"] + 1.0


def test_a_group_stored_before_a_crash_is_not_stored_twice(cfg_factory, verifier_url):
    """A consumer stores a group then dies before acking: the reclaimed task is acked, not duplicated."""
    cfg = cfg_factory(*BASE, "buffer.reclaim_idle_s=0.5")
    [t] = tasks(1, prefix="dup")
    sync = BufferClient(cfg)
    sync.publish_tasks([t])
    [claimed] = sync.claim_tasks("dead-consumer", 1, 100)

    async def run():
        dead_engine = make_engine(cfg)
        await dead_engine.start()
        scorer = HttpScorer(cfg, base_url=verifier_url)
        [out] = await GroupBuilder(cfg, dead_engine, scorer, "dead-consumer").build([claimed.task])
        await scorer.close()
        buf = AsyncBufferClient(cfg)
        first = await buf.add_group(out.group)  # stored, never acked ("crash")
        await buf.close()
        assert first.stored
        await asyncio.sleep(0.6)
        server = server_for(cfg, verifier_url, receive_weights=False)
        await server.start()
        try:

            async def acked():
                return server.stats.tasks_acked == 1

            await wait_for(acked)
        finally:
            await server.stop()
        return server.stats

    stats = asyncio.run(run())
    assert stats.groups_duplicate == 1 and stats.groups_stored == 0
    g = sync.get_group(group_id_for(t))
    assert g.server_id == "dead-consumer"  # the first stored copy stays
    assert sync.queue_stats().inflight == 0
    sync.close()


def test_backpressure_on_stale_weights(cfg_factory, verifier_url, sft_model_dir):
    cfg = cfg_factory(*BASE, "algorithm.ssr.staleness_bound=2")
    ts = tasks(2, prefix="bp")

    async def run():
        buf = AsyncBufferClient(cfg)
        await buf.publish_policy_version(PolicyVersion(version=5, step=5))
        await buf.publish_tasks(ts)
        server = server_for(cfg, verifier_url, receive_weights=False)
        await server.start()
        try:
            await asyncio.sleep(1.5)
            paused = server.status()
            depth = await buf.queue_depth()
            # the learner's weights arrive: version 5, lag 0
            await server.swap_weights(dict(load_model(sft_model_dir).state_dict()), 5)

            async def done():
                return server.stats.tasks_acked == 2

            await wait_for(done)
            groups = [await buf.get_group(group_id_for(t)) for t in ts]
            return paused, depth, groups, server.status()
        finally:
            await server.stop()
            await buf.close()

    paused, depth, groups, status = asyncio.run(run())
    assert paused["actor"]["paused"].startswith("stale_weights") and paused["actor"]["tasks_claimed"] == 0
    assert depth == 2
    assert status["actor"]["paused"] is None and status["loaded_version"] == 5
    for g in groups:
        assert g.policy_version == 5 and all(s.policy_version == 5 for s in g.samples)
        assert all(s.correct for s in g.samples)  # the fine-tuned weights answer 3


def test_stop_returns_the_batch_in_flight(cfg_factory, verifier_url):
    cfg = cfg_factory("algorithm.sampling.n=8", "algorithm.sampling.max_new_tokens=400", "rollout.batch_prompts=2")
    ts = tasks(2, prefix="st")

    async def run():
        buf = AsyncBufferClient(cfg)
        await buf.publish_tasks(ts)
        server = server_for(cfg, verifier_url, receive_weights=False)
        await server.start()

        async def busy():
            return server.stats.in_flight_tasks == 2

        await wait_for(busy, poll_s=0.02)
        await server.stop(grace_s=0.0)  # SIGTERM with no grace: give the tasks back
        claimed = await buf.claim_tasks("other", 10, 100)
        await buf.close()
        return server.stats, claimed

    stats, claimed = asyncio.run(run())
    assert stats.tasks_released == 2 and stats.tasks_acked == 0 and stats.groups_stored == 0
    assert sorted(c.task.task_id for c in claimed) == ["st0", "st1"]
    assert all(c.deliveries >= 2 for c in claimed)


def test_verifier_outage_is_waited_out_without_dropping_or_duplicating(cfg_factory, tmp_path):
    """The verifier is down when the batch is scored: the server keeps its generated responses and
    its claims (another server cannot take the tasks), retries with backoff, and once a verifier
    answers on that address every group is stored exactly once; nothing is rejected or released."""
    from rollout_helpers import ServiceProc, free_port

    from common.config import load_config

    port = free_port()
    cfg = cfg_factory(*BASE, f"verifier.url=http://127.0.0.1:{port}", "rollout.verifier_retries=0",
                      "rollout.verifier_timeout_s=1", "rollout.max_task_deliveries=1", "buffer.reclaim_idle_s=1",
                      "rollout.verifier_outage_backoff_s=0.2", "rollout.verifier_outage_backoff_max_s=0.5")
    ts = tasks(2, prefix="down")

    async def run():
        buf = AsyncBufferClient(cfg)
        await buf.publish_tasks(ts)
        server = RolloutServer(cfg, server_id="rs-down", receive_weights=False)  # HttpScorer from the config
        await server.start()
        verifier = None
        try:
            async def waiting():
                return server.stats.verifier_waits >= 4

            await wait_for(waiting, timeout_s=60)
            assert server.stats.tasks_rejected == 0 and server.stats.tasks_released == 0
            assert (await buf.queue_stats()).pending == 2
            await asyncio.sleep(1.5)  # past buffer.reclaim_idle_s: the claims are kept alive
            assert await buf.claim_tasks("thief", 5, block_ms=0) == []
            verifier = ServiceProc("verifier", load_config(None, [f"verifier.port={port}", "verifier.workers=1"]), tmp_path)

            async def stored():
                return server.stats.tasks_acked == 2

            await wait_for(stored, timeout_s=120)
            return server.stats, await buf.queue_stats(), [await buf.get_group(group_id_for(t)) for t in ts]
        finally:
            await server.stop()
            await buf.close()
            if verifier is not None:
                verifier.terminate()

    stats, qs, groups = asyncio.run(run())
    assert stats.groups_stored == 2 and stats.groups_duplicate == 0 and stats.tasks_rejected == 0
    assert stats.tasks_released == 0 and stats.batch_errors == 0 and qs.inflight == 0
    assert all(g is not None and g.server_id == "rs-down" for g in groups)


def test_verifier_outage_over_its_limit_releases_then_rejects(cfg_factory):
    """With rollout.verifier_outage_max_s set, a batch the verifier cannot score in time fails: its
    tasks go back to the queue; after rollout.max_task_deliveries failed deliveries a task is acked
    without a group."""
    from rollout_helpers import free_port

    cfg = cfg_factory(*BASE, f"verifier.url=http://127.0.0.1:{free_port()}", "rollout.verifier_retries=0",
                      "rollout.verifier_timeout_s=1", "rollout.max_task_deliveries=2",
                      "rollout.verifier_outage_max_s=0.5", "rollout.verifier_outage_backoff_s=0.2")
    [t] = tasks(1, prefix="down")

    async def run():
        buf = AsyncBufferClient(cfg)
        await buf.publish_tasks([t])
        server = RolloutServer(cfg, server_id="rs-down", receive_weights=False)  # HttpScorer from the config
        await server.start()
        try:

            async def rejected():
                return server.stats.tasks_rejected == 1

            await wait_for(rejected, timeout_s=60)
            return server.stats, await buf.queue_stats(), await buf.get_group(group_id_for(t))
        finally:
            await server.stop()
            await buf.close()

    stats, qs, group = asyncio.run(run())
    assert stats.batch_errors == 2 and stats.tasks_released == 1 and stats.tasks_acked == 1
    assert "verifier" in stats.last_error and group is None and qs.inflight == 0


def test_a_restarted_server_reclaims_its_own_pending_tasks_at_once(cfg_factory, verifier_url):
    """Tasks a server held when it died are pending under its id; the same id restarted takes them
    back at once (other servers would wait buffer.reclaim_idle_s, here 10 minutes)."""
    cfg = cfg_factory(*BASE, "buffer.reclaim_idle_s=600")
    ts = tasks(3, prefix="own")

    async def run():
        buf = AsyncBufferClient(cfg)
        await buf.publish_tasks(ts)
        dead = await buf.claim_tasks("rs-own", 2, block_ms=0)  # the previous incarnation's claims
        assert len(dead) == 2 and await buf.claim_tasks("rs-other", 5, block_ms=0) != []
        other = await buf.reclaim_own("rs-other", 5)  # a different id gets nothing of rs-own's
        assert [c.task.task_id for c in other] == ["own2"]
        await buf.release_task(other[0].entry_id)
        server = server_for(cfg, verifier_url, receive_weights=False, server_id="rs-own")
        await server.start()
        try:
            async def all_stored():
                return server.stats.tasks_acked == 3

            await wait_for(all_stored, timeout_s=120)
            return await buf.queue_stats(), [await buf.get_group(group_id_for(t)) for t in ts]
        finally:
            await server.stop()
            await buf.close()

    qs, groups = asyncio.run(run())
    assert qs.inflight == 0 and all(g is not None and g.server_id == "rs-own" for g in groups)


def test_sync_mode_never_generates_with_weights_older_than_the_learner(cfg_factory, verifier_url, sft_model_dir):
    """learner.sync_mode=sync (staleness bound 0): a batch claimed while the learner moved to a newer
    version is given back untouched, and the tasks are generated only with the newest weights.  The
    catch-up a lagging server starts (a checkpoint load: a gated weight swap) is started outside the
    batch, so it never waits for the batch that is giving its tasks back."""
    cfg = cfg_factory(*BASE, "learner.sync_mode=sync", "algorithm.ssr.staleness_bound=4", "rollout.claim_block_ms=5000")
    ts = tasks(2, prefix="sy")

    async def run():
        buf = AsyncBufferClient(cfg)
        await buf.publish_policy_version(PolicyVersion(version=0, step=0))
        server = server_for(cfg, verifier_url, receive_weights=False)
        await server.start()
        swaps: list[str] = []

        async def gated_swap() -> None:
            async with server.actor.gate.swap():
                pass

        async def catch_up(version: int) -> None:  # what a checkpoint load does: one gated swap
            try:
                await asyncio.wait_for(gated_swap(), timeout=5.0)
                swaps.append("ok")
            except asyncio.TimeoutError:
                swaps.append("deadlock")

        server.actor.on_lag = catch_up
        try:
            await asyncio.sleep(1.5)  # the actor now waits in a claim with weights of version 0 (lag 0)
            assert server.status()["actor"]["paused"] is None
            await buf.publish_policy_version(PolicyVersion(version=1, step=1))
            await buf.publish_tasks(ts)

            async def given_back():
                return server.stats.tasks_released == 2

            await wait_for(given_back, timeout_s=30)

            async def caught_up():
                return bool(swaps)

            await wait_for(caught_up, timeout_s=30)
            paused = server.status()
            await server.swap_weights(dict(load_model(sft_model_dir).state_dict()), 1)

            async def done():
                return server.stats.tasks_acked == 2

            await wait_for(done)
            return paused, [await buf.get_group(group_id_for(t)) for t in ts], swaps
        finally:
            await server.stop()
            await buf.close()

    paused, groups, swaps = asyncio.run(run())
    assert swaps and "deadlock" not in swaps
    assert paused["actor"]["paused"].startswith("stale_weights")  # lag 1 > bound 0 (not the ssr bound 4)
    assert paused["actor"]["tasks_acked"] == 0 and paused["actor"]["samples"] == 0
    for g in groups:
        assert g.policy_version == 1 and all(s.policy_version == 1 for s in g.samples)
