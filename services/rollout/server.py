"""One rollout server: engine + actor loop + weight receiver + registry heartbeat, in one event loop.

``RolloutServer(cfg)`` owns:

- the engine (``make_engine(cfg)``), started from ``model.path`` as policy version 0;
- the weight receiver (``weight_transport.make_receiver``): on start it loads the latest
  published checkpoint if it is newer, then receives every sync round; its ``on_weights`` callback
  (receiver thread) hands the weights to this loop and blocks until the swap is done
  (``swap_weights``: waits for the running actor batch unless ``rollout.partial_rollouts``);
- the registry entry (``AsyncBufferClient.register_server`` / ``heartbeat`` every
  ``rollout.heartbeat_s`` with TTL ``rollout.heartbeat_ttl_s``): address, engine, loaded version,
  readiness, in-flight tasks, tokens/s;
- the actor loop (``services.rollout.actor.Actor``).

``stop()`` (SIGTERM) lets the current batch finish within ``rollout.shutdown_grace_s``, else
cancels it (its tasks go back to the queue), then unregisters and releases everything.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import TYPE_CHECKING, Any

from common.config import RethinkerConfig
from common.interfaces import RolloutBuffer, Scorer, WeightReceiver
from common.logging import get_logger
from common.metrics import ServiceMetrics
from services.rollout.actor import Actor, ActorStats, SwapGate
from services.rollout.engines import Engine, make_engine
from services.rollout.engines.base import WeightsLike

if TYPE_CHECKING:
    from common.schemas.weights import JoinOutcome, RoundDescriptor

log = get_logger("rollout.server")


def default_server_id(cfg: RethinkerConfig) -> str:
    return cfg.rollout.server_id or f"{socket.gethostname()}-{cfg.rollout.port}"


class RolloutServer:
    def __init__(
        self,
        cfg: RethinkerConfig,
        *,
        engine: Engine | None = None,
        buffer: RolloutBuffer | None = None,
        scorer: Scorer | None = None,
        server_id: str | None = None,
        receive_weights: bool = True,
    ) -> None:
        self.cfg = cfg
        self.server_id = server_id or default_server_id(cfg)
        self.address = cfg.rollout.advertise_url or f"http://{cfg.rollout.host}:{cfg.rollout.port}"
        self.engine = engine or make_engine(cfg)
        self.buffer = buffer
        self.scorer = scorer
        self.receive_weights = receive_weights
        self.receiver: WeightReceiver | None = None
        self.gate = SwapGate(cfg.rollout.partial_rollouts)
        self.stats = ActorStats()
        self.actor: Actor | None = None
        self.metrics = ServiceMetrics("rollout")
        self.started_at = time.time()
        self.weight_loads = 0
        self.weight_load_errors = 0
        self.last_weight_load_s = 0.0
        self.error = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task] = []
        self._actor_task: asyncio.Task | None = None
        self._started = False
        self._stopped = False
        self._last_catch_up = 0.0
        _register_collector(self)

    # ---------------------------------------------------------------- lifecycle

    @property
    def ready(self) -> bool:
        return self._started and self.engine.ready and not self._stopped

    async def start(self, *, run_actor: bool = True) -> None:
        self._loop = asyncio.get_running_loop()
        await self.engine.start(initial_version=0)
        if self.buffer is None:
            from services.buffer.client import AsyncBufferClient

            self.buffer = AsyncBufferClient(self.cfg)
        if self.scorer is None:
            from services.rollout.scoring import HttpScorer

            self.scorer = HttpScorer(self.cfg)
        if self.receive_weights:
            self.receiver = await self.make_receiver()
            # Loads the latest published checkpoint (if newer), then listens.
            await asyncio.to_thread(self.receiver.start)
        await self.buffer.register_server(self.server_id, self.info(), self.cfg.rollout.heartbeat_ttl_s)
        self.actor = Actor(
            self.cfg, self.engine, self.buffer, self.scorer, server_id=self.server_id, gate=self.gate, stats=self.stats
        )
        self.actor.on_lag = self._catch_up
        self._tasks.append(asyncio.create_task(self._heartbeat_loop(), name="rollout-heartbeat"))
        if run_actor:
            self._actor_task = asyncio.create_task(self.actor.run(), name="rollout-actor")
        self._started = True
        log.info("server_started", server_id=self.server_id, address=self.address, engine=self.engine.name,
                 version=self.engine.loaded_version)

    async def stop(self, grace_s: float | None = None) -> None:
        """Finish (or return) the current batch, unregister, release resources; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.cfg.rollout.shutdown_grace_s if grace_s is None else grace_s
        if self.actor is not None:
            self.actor.request_stop()
        if self._actor_task is not None and not self._actor_task.done():
            done, _ = await asyncio.wait({self._actor_task}, timeout=grace)
            if not done:
                log.warning("shutdown_grace_exceeded", server_id=self.server_id, grace_s=grace)
                self._actor_task.cancel()
                await asyncio.wait({self._actor_task})
        if self.actor is not None:
            await self.actor.release_held()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.receiver is not None:
            await asyncio.to_thread(self.receiver.stop)
        if self.buffer is not None:
            try:
                await self.buffer.unregister_server(self.server_id)
            except Exception as exc:  # noqa: BLE001
                log.warning("unregister_failed", error=f"{type(exc).__name__}: {exc}")
            close = getattr(self.buffer, "aclose", None) or getattr(self.buffer, "close", None)
            if close is not None:
                res = close()
                if asyncio.iscoroutine(res):
                    await res
        if self.scorer is not None and hasattr(self.scorer, "close"):
            await self.scorer.close()
        await self.engine.close()
        log.info("server_stopped", server_id=self.server_id, **{k: v for k, v in self.stats.as_dict().items() if k != "rethink"})

    async def wait(self) -> None:
        """Until the actor loop ends (stop requested or crashed; a crash is logged)."""
        if self._actor_task is not None:
            await asyncio.wait({self._actor_task})  # cancelling this wait leaves the actor alone
            t = self._actor_task
            if not t.cancelled() and t.exception() is not None:
                self.error = f"actor loop crashed: {type(t.exception()).__name__}: {t.exception()}"
                log.error("actor_crashed", server_id=self.server_id, error=self.error)

    # ---------------------------------------------------------------- weights

    async def make_receiver(self) -> WeightReceiver:
        """The weight receiver (not started): rounds received in this process and handed to the
        engine, or -- engines with ``worker_receive`` (vLLM) -- received by the engine's workers
        while this server coordinates (``WorkerRoundReceiver``)."""
        self._loop = asyncio.get_running_loop()
        if getattr(self.engine, "worker_receive", False):
            from weight_transport.workers import WorkerRoundReceiver

            members = await self.engine.init_worker_receive(self.server_id)
            return WorkerRoundReceiver(
                self.cfg,
                server_id=self.server_id,
                members=members,
                join_workers=self._join_workers,
                on_checkpoint=self._on_checkpoint,
                initial_version=self.engine.loaded_version,
            )
        from weight_transport import make_receiver

        return make_receiver(
            self.cfg, server_id=self.server_id, on_weights=self._on_weights, initial_version=self.engine.loaded_version
        )

    def _on_checkpoint(self, path: str, version: int) -> None:
        """Receiver-thread callback (worker-side receive): the workers load the checkpoint folder."""
        self._on_weights(path, version)

    def _join_workers(self, desc: RoundDescriptor, invited: list[str], apply: bool) -> list[JoinOutcome]:
        """Receiver-thread callback (worker-side receive): one round in the engine's workers."""
        assert self._loop is not None
        fut = asyncio.run_coroutine_threadsafe(self.worker_round(desc, apply), self._loop)
        return fut.result()

    async def worker_round(self, desc: RoundDescriptor, apply: bool) -> list[JoinOutcome]:
        """Run round ``desc`` in the engine's workers.  ``staging: full``: every worker receives and
        keeps the weights while generation goes on, then they are loaded between actor batches
        (``swap_weights``) if every worker has them.  ``staging: stream``: the workers load bucket by
        bucket, between actor batches.  ``apply=False``: take part, load nothing."""
        from dataclasses import replace

        from services.rollout.engines.base import StagedRound

        round_json = desc.to_json()
        if not apply:
            return await self.engine.receive_round(round_json, mode="discard")
        if self.cfg.learner.weight_sync.staging == "stream":
            t0 = time.perf_counter()
            async with self.gate.swap():
                outcomes = await self.engine.receive_round(round_json, mode="load")
            if outcomes and all(o.joined and o.ok for o in outcomes):
                self._loaded(desc.version, time.perf_counter() - t0)
                await self._announce()
            elif any(o.joined for o in outcomes):
                self.weight_load_errors += 1
            return outcomes
        outcomes = await self.engine.receive_round(round_json, mode="stage")
        if not (outcomes and all(o.joined and o.ok for o in outcomes)):
            await self.engine.drop_round()
            return outcomes
        try:
            await self.swap_weights(StagedRound(desc.round_id), desc.version)
        except Exception as exc:  # noqa: BLE001 - reported through the outcomes
            return [replace(o, ok=False, error=f"load: {type(exc).__name__}: {exc}"[:500]) for o in outcomes]
        return outcomes

    def _on_weights(self, weights: WeightsLike, version: int) -> None:
        """Receiver-thread callback: swap on this server's loop, return when done (raise on failure)."""
        assert self._loop is not None
        fut = asyncio.run_coroutine_threadsafe(self.swap_weights(weights, version), self._loop)
        fut.result()

    async def swap_weights(self, weights: WeightsLike, version: int) -> None:
        """Load weights between actor batches (see ``SwapGate``); tagged ``version``."""
        t0 = time.perf_counter()
        try:
            async with self.gate.swap():
                await self.engine.load_weights(weights, version)
        except Exception as exc:
            self.weight_load_errors += 1
            self.error = f"weight load v{version}: {type(exc).__name__}: {exc}"
            log.error("weights_failed", server_id=self.server_id, version=version, error=self.error)
            raise
        self._loaded(version, time.perf_counter() - t0)
        await self._announce()

    def _loaded(self, version: int, seconds: float) -> None:
        self.weight_loads += 1
        self.last_weight_load_s = seconds
        log.info("weights_loaded", server_id=self.server_id, version=version, seconds=round(seconds, 3))

    async def _announce(self) -> None:
        if self.buffer is not None and self._started:
            try:
                await self.buffer.heartbeat(self.server_id, self.info(), self.cfg.rollout.heartbeat_ttl_s)
            except Exception:  # noqa: BLE001 - next heartbeat will do
                pass

    async def _catch_up(self, learner_version: int) -> None:
        """Paused for stale weights: every few heartbeats try the latest published checkpoint."""
        if self.receiver is None or time.monotonic() - self._last_catch_up < 5 * self.cfg.rollout.heartbeat_s:
            return
        self._last_catch_up = time.monotonic()
        try:
            await asyncio.to_thread(self.receiver.load_latest_checkpoint)
        except Exception as exc:  # noqa: BLE001
            log.warning("catch_up_failed", learner_version=learner_version, error=f"{type(exc).__name__}: {exc}")

    # ---------------------------------------------------------------- registry

    def info(self) -> dict[str, Any]:
        return {
            "server_id": self.server_id,
            "address": self.address,
            "engine": self.engine.name,
            "loaded_version": self.engine.loaded_version,
            "ready": self.ready,
            "in_flight_tasks": self.stats.in_flight_tasks,
            "tokens_per_s": round(self.engine.stats.tokens_per_s, 1),
            "paused": self.stats.paused,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": self.started_at,
        }

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.rollout.heartbeat_s)
            try:
                await self.buffer.heartbeat(self.server_id, self.info(), self.cfg.rollout.heartbeat_ttl_s)
            except Exception as exc:  # noqa: BLE001 - Redis blip: keep trying
                log.warning("heartbeat_failed", server_id=self.server_id, error=f"{type(exc).__name__}: {exc}")

    # ---------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        s = self.stats.as_dict()
        rethink = s.pop("rethink")
        return {
            "server_id": self.server_id,
            "address": self.address,
            "engine": self.engine.name,
            "ready": self.ready,
            "loaded_version": self.engine.loaded_version,
            "tokens_per_s": round(self.engine.stats.tokens_per_s, 2),
            "tokens_generated": self.engine.stats.tokens,
            "engine_calls": self.engine.stats.calls,
            "in_flight_tasks": self.stats.in_flight_tasks,
            "actor": s,
            "rethinking": rethink,
            "weights": {
                "loads": self.weight_loads,
                "errors": self.weight_load_errors,
                "last_load_s": round(self.last_weight_load_s, 4),
                "receiver_version": getattr(self.receiver, "loaded_version", None),
                "receiver_error": getattr(self.receiver, "last_error", "") if self.receiver is not None else "",
                "partial_rollouts": self.cfg.rollout.partial_rollouts,
            },
            "uptime_s": round(time.time() - self.started_at, 1),
            "error": self.error,
        }


def _register_collector(server: RolloutServer) -> None:
    """Prometheus metrics read from the server's counters at scrape time."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class _Collector:
        def collect(self):  # noqa: ANN202
            st = server.stats
            p = "rethinker_rollout_"
            for name, value, doc in (
                ("tokens_generated", server.engine.stats.tokens, "Tokens generated by the engine"),
                ("tasks_claimed", st.tasks_claimed, "Prompt tasks claimed"),
                ("tasks_acked", st.tasks_acked, "Prompt tasks acked"),
                ("tasks_released", st.tasks_released, "Prompt tasks given back to the queue"),
                ("tasks_rejected", st.tasks_rejected, "Prompt tasks dropped as unprocessable"),
                ("groups_stored", st.groups_stored, "Groups stored in the buffer"),
                ("groups_duplicate", st.groups_duplicate, "Groups the buffer already had"),
                ("batch_errors", st.batch_errors, "Failed actor batches"),
                ("rethink_triggered", st.rethink.triggered, "Forced-rethinking continuations generated"),
                ("rethink_kept", st.rethink.kept, "Rethought responses kept"),
                ("weight_loads", server.weight_loads, "Weight swaps"),
            ):
                c = CounterMetricFamily(p + name, doc)
                c.add_metric([], float(value))
                yield c
            for name, value, doc in (
                ("loaded_version", server.engine.loaded_version, "Policy version of the loaded weights"),
                ("ready", float(server.ready), "1 when serving"),
                ("in_flight_tasks", st.in_flight_tasks, "Tasks claimed and not yet acked"),
                ("tokens_per_s", server.engine.stats.tokens_per_s, "Recent generation throughput"),
                ("paused", float(st.paused is not None), "1 while claiming is paused (backpressure)"),
            ):
                g = GaugeMetricFamily(p + name, doc)
                g.add_metric([], float(value))
                yield g

    server.metrics.registry.register(_Collector())
