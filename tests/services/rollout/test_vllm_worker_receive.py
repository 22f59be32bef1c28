"""Worker-side weight receive (the vLLM path) on CPU with gloo, against the learner's real sender.

Under test: the vLLM worker extension (``WeightLoaderExtension``: membership, round, buckets,
confirmation, load), the coordinating receiver (``WorkerRoundReceiver``), the vLLM engine's
coordination (``VLLMEngine.receive_round`` / ``load_weights``) and the rollout server's
``worker_round``.  vLLM itself is not under test and not installed here: each "worker" is the
extension class mixed into a small worker object whose model records what ``load_weights`` gets,
and ``collective_rpc`` runs the named method on every worker at once in threads, as vLLM's
executor does in its worker processes.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import pytest
import redis
import torch
from safetensors.torch import save_file

from common.config import load_config
from common.redis_keys import RedisKeys
from common.schemas.weights import JoinRecord
from services.rollout.engines.base import EngineError
from services.rollout.engines.vllm import VLLMEngine
from services.rollout.engines.vllm_worker import WeightLoaderExtension
from services.rollout.server import RolloutServer
from weight_transport import TensorSpec, make_sender
from weight_transport.base import token_proof


class RecordingModel:
    """vLLM's model stand-in: ``load_weights`` copies what it is given (as vLLM's loaders copy)."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] = {}
        self.calls = 0
        self.fail_next = False

    def load_weights(self, weights: Any) -> set[str]:
        self.calls += 1
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("load_weights: shape mismatch (injected)")
        names = set()
        for name, t in weights:
            self.state[name] = t.detach().clone()
            names.add(name)
        return names


class _Runner:
    def __init__(self, model: RecordingModel) -> None:
        self.model = model

    def get_model(self) -> RecordingModel:
        return self.model


class FakeWorker(WeightLoaderExtension):
    """What vLLM's worker offers the extension: ``rank``, ``device``, ``model_runner``."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.device = torch.device("cpu")
        self.model = RecordingModel()
        self.model_runner = _Runner(self.model)


class FakeAsyncLLM:
    """``collective_rpc``: the method on every worker concurrently, results in rank order."""

    def __init__(self, workers: list[FakeWorker]) -> None:
        self.workers = workers
        self.calls: list[tuple[str, tuple]] = []
        self.prefix_resets = 0

    async def collective_rpc(self, method: str, timeout: float | None = None, args: tuple = (), kwargs: dict | None = None):
        self.calls.append((method, args))
        results: list[Any] = [None] * len(self.workers)
        errors: list[BaseException] = []

        def run(i: int, w: FakeWorker) -> None:
            try:
                results[i] = getattr(w, method)(*args, **(kwargs or {}))
            except BaseException as exc:  # noqa: BLE001 - re-raised below, as vLLM does
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i, w)) for i, w in enumerate(self.workers)]
        for t in threads:
            t.start()
        await asyncio.to_thread(lambda: [t.join() for t in threads])
        if errors:
            raise errors[0]
        return results

    async def reset_prefix_cache(self) -> bool:
        self.prefix_resets += 1
        return True


def _cfg(redis_url: str, tmp_path, staging: str = "full"):
    return load_config(
        None,
        [
            f"redis.url={redis_url}",
            f"redis.namespace=test-vw-{uuid.uuid4().hex[:8]}",
            f"model.path={tmp_path}",
            "rollout.engine=vllm",
            "rollout.server_id=srv",
            "learner.weight_sync.master_port=0",
            "learner.weight_sync.bucket_mb=0.01",
            "learner.weight_sync.timeout_s=10",
            "learner.weight_sync.join_timeout_s=10",
            "learner.weight_sync.heartbeat_s=0.5",
            "learner.weight_sync.member_ttl_s=4",
            "learner.weight_sync.poll_s=0.05",
            "learner.weight_sync.token=s3cret",
            f"learner.weight_sync.staging={staging}",
        ],
    )


def _weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(8):
        dt = torch.bfloat16 if i % 3 == 0 else torch.float32
        out[f"model.language_model.layers.{i}.mlp.weight"] = torch.randn(31 + 7 * i, 11, generator=g).to(dt)
    out["lm_head.weight"] = torch.randn(120, 40, generator=g)  # 19 kB > one 10 kB bucket
    return out


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


class Rig:
    """A rollout server on a vLLM engine with ``n`` workers, its coordinating receiver, the learner's sender."""

    def __init__(self, cfg, n_workers: int = 2) -> None:
        self.cfg = cfg
        self.workers = [FakeWorker(r) for r in range(n_workers)]
        self.llm = FakeAsyncLLM(self.workers)
        self.engine = VLLMEngine(cfg)
        self.engine._llm = self.llm
        self.engine._version = 0
        self.server = RolloutServer(cfg, engine=self.engine, buffer=None, scorer=None)
        self.tx = make_sender(cfg)
        self.rx: Any = None

    async def start(self) -> None:
        self.rx = await self.server.make_receiver()
        await asyncio.to_thread(self.rx.start)
        deadline = time.monotonic() + 10
        while len(self.tx.members()) < len(self.workers) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def send(self, w: dict[str, torch.Tensor], version: int, *, wait: bool = True):
        specs = [TensorSpec.of(n, t) for n, t in w.items()]
        rep = await asyncio.to_thread(self.tx.sync, specs, iter(w.values()), version=version, step=version)
        if wait:
            await asyncio.to_thread(self.rx.wait_for_version, version, 10.0)
        return rep

    async def stop(self) -> None:
        if self.rx is not None:
            await asyncio.to_thread(self.rx.stop)
        self.tx.close()
        r = redis.Redis.from_url(self.cfg.redis.url)
        for k in r.scan_iter(f"{self.cfg.redis.namespace}:*"):
            r.delete(k)


def _rpc_args_hold_no_tensor(llm: FakeAsyncLLM) -> bool:
    def small(x: Any) -> bool:
        if isinstance(x, torch.Tensor):
            return False
        if isinstance(x, dict):
            return all(small(v) for v in x.values())
        if isinstance(x, (list, tuple)):
            return all(small(v) for v in x)
        return isinstance(x, (str, int, float, bool, type(None))) and (not isinstance(x, str) or len(x) < 20000)

    return all(small(args) for _, args in llm.calls)


def test_workers_receive_rounds_straight_into_the_model(redis_url, tmp_path):
    cfg = _cfg(redis_url, tmp_path)

    async def main() -> None:
        rig = Rig(cfg, n_workers=2)
        try:
            await rig.start()
            members = rig.tx.members()
            assert sorted(members) == ["srv/w0", "srv/w1"]  # one member per tensor-parallel rank
            assert all(rec.proof == token_proof("s3cret", sid) for sid, rec in members.items())
            for version in (1, 2):
                w = _weights(version)
                rep = await rig.send(w, version)
                assert rep.ok, rep.error
                assert rep.joined == ["srv/w0", "srv/w1"] and rep.num_buckets > 3
                assert rig.rx.loaded_version == version and rig.engine.loaded_version == version
                for worker in rig.workers:  # every rank got every tensor, bit for bit
                    assert set(worker.model.state) == set(w)
                    assert all(_bitwise_equal(worker.model.state[n], t) for n, t in w.items())
                assert [o.ok and o.joined for o in rig.rx.last_outcomes] == [True, True]
            assert rig.llm.prefix_resets == 2
            methods = [m for m, _ in rig.llm.calls]
            assert methods == ["weight_sync_init"] + ["weight_sync_receive", "weight_sync_apply"] * 2
            assert _rpc_args_hold_no_tensor(rig.llm)  # no tensor crosses the RPC channel
            assert rig.server.weight_loads == 2
            # the join records report the version the workers hold
            r = redis.Redis.from_url(cfg.redis.url)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                recs = {k.decode(): JoinRecord.from_json(v) for k, v in r.hgetall(RedisKeys(cfg.redis.namespace).sync_members).items()}
                if all(rec.loaded_version == 2 for rec in recs.values()):
                    break
                await asyncio.sleep(0.1)
            assert sorted(recs) == ["srv/w0", "srv/w1"] and all(rec.loaded_version == 2 for rec in recs.values())
        finally:
            await rig.stop()
        assert not redis.Redis.from_url(cfg.redis.url).hgetall(RedisKeys(cfg.redis.namespace).sync_members)

    asyncio.run(main())


def test_a_failed_load_in_one_worker_keeps_the_version(redis_url, tmp_path):
    cfg = _cfg(redis_url, tmp_path)

    async def main() -> None:
        rig = Rig(cfg, n_workers=2)
        try:
            await rig.start()
            assert (await rig.send(_weights(1), 1)).ok
            rig.workers[1].model.fail_next = True
            rep = await rig.send(_weights(2), 2, wait=False)
            assert rep.ok  # the transfer itself was fine; the load in a worker was not
            deadline = time.monotonic() + 5
            while "load" not in rig.rx.last_error and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert rig.rx.loaded_version == 1 and rig.engine.loaded_version == 1
            assert "shape mismatch" in rig.rx.last_error and rig.server.weight_load_errors == 1
            w3 = _weights(3)
            assert (await rig.send(w3, 3)).ok
            assert rig.rx.loaded_version == 3 and rig.engine.loaded_version == 3 and rig.rx.last_error == ""
            assert all(_bitwise_equal(wk.model.state[n], t) for wk in rig.workers for n, t in w3.items())
        finally:
            await rig.stop()

    asyncio.run(main())


def test_a_round_inviting_only_some_ranks_is_received_and_dropped(redis_url, tmp_path):
    """Tensor-parallel ranks hold one weight set: when the sender leaves one worker out (as after its
    failures, ``max_failure_backoff``), the others take part but load nothing."""
    cfg = _cfg(redis_url, tmp_path)

    async def main() -> None:
        rig = Rig(cfg, n_workers=2)
        try:
            await rig.start()
            w1 = _weights(1)
            assert (await rig.send(w1, 1)).ok
            rig.tx._sit_out["srv/w1"] = 10**6  # the sender's backoff state after failures of w1
            rep = await rig.send(_weights(2), 2, wait=False)
            assert rep.ok and rep.joined == ["srv/w0"] and rep.failed == []
            deadline = time.monotonic() + 5
            while "dropped" not in rig.rx.last_error and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert "dropped" in rig.rx.last_error
            assert rig.rx.loaded_version == 1 and rig.engine.loaded_version == 1
            assert ("weight_sync_receive" , "discard") in [(m, a[1]) for m, a in rig.llm.calls if m == "weight_sync_receive"]
            for worker in rig.workers:  # both ranks still hold version 1
                assert all(_bitwise_equal(worker.model.state[n], t) for n, t in w1.items())
        finally:
            await rig.stop()

    asyncio.run(main())


def test_stream_staging_loads_while_receiving(redis_url, tmp_path):
    cfg = _cfg(redis_url, tmp_path, staging="stream")

    async def main() -> None:
        rig = Rig(cfg, n_workers=1)
        try:
            await rig.start()
            w = _weights(4)
            rep = await rig.send(w, 4)
            assert rep.ok, rep.error
            assert rig.engine.loaded_version == 4 and rig.rx.loaded_version == 4
            assert all(_bitwise_equal(rig.workers[0].model.state[n], t) for n, t in w.items())
            assert [m for m, _ in rig.llm.calls] == ["weight_sync_init", "weight_sync_receive"]
            assert rig.llm.calls[1][1][1] == "load" and rig.llm.prefix_resets == 1
        finally:
            await rig.stop()

    asyncio.run(main())


def test_cold_start_loads_the_published_checkpoint_in_the_workers(redis_url, tmp_path):
    cfg = _cfg(redis_url, tmp_path)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    w = _weights(5)
    save_file({k: v.contiguous() for k, v in w.items()}, str(ckpt / "model.safetensors"))

    async def main() -> None:
        rig = Rig(cfg, n_workers=2)
        try:
            rig.tx.publish_checkpoint(str(ckpt), version=5, step=50)
            await rig.start()  # start() loads the newer checkpoint before listening
            assert rig.rx.loaded_version == 5 and rig.engine.loaded_version == 5
            assert ("load_checkpoint", (str(ckpt.resolve()),)) in rig.llm.calls
            for worker in rig.workers:
                assert all(_bitwise_equal(worker.model.state[n], t) for n, t in w.items())
        finally:
            await rig.stop()

    asyncio.run(main())


def test_worker_errors_come_back_in_the_outcome(tmp_path):
    worker = FakeWorker(0)
    out = worker.weight_sync_receive("{}", "stage")
    assert not out["ok"] and "weight_sync_init" in out["error"]
    info = worker.weight_sync_init({"server_id": "srv", "backend": "gloo", "token": "t"})
    assert info["member_id"] == "srv/w0" and info["gpu_uuid"] == ""
    out = worker.weight_sync_receive("{}", "upload")
    assert not out["ok"] and "mode" in out["error"]
    out = worker.weight_sync_receive("not json", "stage")
    assert not out["ok"] and "descriptor" in out["error"]
    with pytest.raises(RuntimeError, match="no staged weights"):
        worker.weight_sync_apply("r1")
    with pytest.raises(ValueError, match="server_id"):
        worker.weight_sync_init({"backend": "gloo"})
    with pytest.raises(ValueError, match="unknown backend"):
        worker.weight_sync_init({"server_id": "srv", "backend": "carrier-pigeon"})


def test_vllm_engine_refuses_named_tensors(tmp_path):
    cfg = load_config(None, [f"model.path={tmp_path}", "rollout.engine=vllm"])
    engine = VLLMEngine(cfg)
    engine._llm = FakeAsyncLLM([FakeWorker(0)])
    with pytest.raises(EngineError, match="serialized"):
        asyncio.run(engine.load_weights({"w": torch.zeros(2)}, version=1))
    assert engine.loaded_version == -1 and engine._llm.calls == []
