"""The backend-independent half of the weight-sync protocol: membership, rounds, rendezvous, buckets.

``RoundSender`` / ``RoundReceiver`` implement ``WeightSender`` / ``WeightReceiver`` (``common.interfaces``; the API is described in base.py) on top of a
``Backend``: the only backend-specific part is how one round's bytes move (``Channel``).  See
docs/weight-sync.md for the protocol.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Protocol, Sequence

import torch
import torch.distributed as dist

from common.config import RethinkerConfig, reveal
from common.logging import get_logger
from common.redis_conn import sync_client
from common.redis_keys import RedisKeys
from common.interfaces import OnWeights, WeightReceiver, WeightsArg, WeightSender
from common.schemas.weights import (
    JoinOutcome,
    JoinRecord,
    RoundDescriptor,
    SyncReport,
    TensorSpec,
    WeightSyncError,
    dtype_of,
    manifest_from_json,
    manifest_to_json,
)
from weight_transport.base import Bucket, VersionWaiter, plan_buckets, round_secret, token_proof

if TYPE_CHECKING:
    from redis import Redis

log = get_logger("weight_sync")

ROUND_FIELD = "round"
CHECKPOINT_FIELD = "checkpoint"
RESULT_FIELD = "last_result"
PIPELINE_DEPTH = 2  # bucket sends in flight while the next bucket fills


def redis_now(r: Redis) -> float:
    sec, usec = r.time()
    return float(sec) + float(usec) / 1e6


# --------------------------------------------------------------------------- backend hooks


class Pending(Protocol):
    """A transfer in flight: ``wait()`` blocks until it is done."""

    def wait(self) -> object: ...


class Channel(ABC):
    """The data path of one round among ``world`` processes; rank 0 is the sender."""

    @abstractmethod
    def send(self, flat: torch.Tensor, index: int) -> None: ...

    @abstractmethod
    def recv(self, flat: torch.Tensor, index: int) -> None: ...

    @abstractmethod
    def confirm(self, status: int) -> int:
        """Collective end-of-round check: returns the sum of every participant's status (0 = all ok)."""

    def isend(self, flat: torch.Tensor, index: int) -> Pending:
        """Start sending; returns a handle with ``wait()`` (default: synchronous)."""
        self.send(flat, index)
        return _Done()

    def irecv(self, flat: torch.Tensor, index: int) -> Pending:
        self.recv(flat, index)
        return _Done()

    def close(self) -> None:  # noqa: B027 - optional
        pass


class _Done:
    def wait(self) -> bool:
        return True


class Backend(ABC):
    name: str

    def device(self) -> torch.device:
        return torch.device("cpu")

    @abstractmethod
    def open(self, store: dist.Store, rank: int, world: int, timeout_s: float) -> Channel: ...

    def member_extra(self) -> dict[str, Any]:
        """Extra fields of this process's join record (cuda_ipc: its GPU's uuid)."""
        return {}

    def admits(self, record: JoinRecord) -> bool:
        """Whether the sender may invite this member (cuda_ipc: same GPU)."""
        return True

    def round_extra(self) -> dict[str, Any]:
        return {}


class ProcessGroupChannel(Channel):
    """A channel over a torch.distributed backend object built for this round only (gloo, nccl)."""

    def __init__(self, pg: dist.ProcessGroup, device: torch.device) -> None:
        self.pg = pg
        self.device = device

    def send(self, flat: torch.Tensor, index: int) -> None:
        self.pg.broadcast(flat, 0).wait()

    def recv(self, flat: torch.Tensor, index: int) -> None:
        self.pg.broadcast(flat, 0).wait()

    def isend(self, flat: torch.Tensor, index: int) -> Pending:
        return self.pg.broadcast(flat, 0)  # gloo runs it on its worker threads; in order by tag

    def irecv(self, flat: torch.Tensor, index: int) -> Pending:
        return self.pg.broadcast(flat, 0)

    def confirm(self, status: int) -> int:
        t = torch.tensor([int(status)], dtype=torch.int32, device=self.device)
        opts = dist.AllreduceOptions()
        opts.reduceOp = dist.ReduceOp.SUM
        self.pg.allreduce([t], opts).wait()
        return int(t.item())

    def close(self) -> None:
        pg, self.pg = self.pg, None
        if pg is None:
            return
        for meth in ("shutdown", "abort"):
            fn = getattr(pg, meth, None)
            if fn is not None:
                try:
                    fn()
                    break
                except Exception:  # noqa: BLE001 - best effort teardown of a broken group
                    continue


# --------------------------------------------------------------------------- helpers


def _open_master_store(addr: str, first_port: int, span: int, round_no: int, timeout_s: float) -> dist.TCPStore:
    td = datetime.timedelta(seconds=timeout_s)
    if first_port == 0:
        return dist.TCPStore(addr, 0, None, True, timeout=td, wait_for_workers=False)
    last: Exception | None = None
    for k in range(span):
        port = first_port + (round_no + k) % span
        try:
            return dist.TCPStore(addr, port, None, True, timeout=td, wait_for_workers=False)
        except Exception as exc:  # DistNetworkError / RuntimeError: port in use
            last = exc
    raise WeightSyncError(f"no free port in [{first_port}, {first_port + span}) on {addr}: {last}")


def _bucket_views(flat: torch.Tensor, specs: Sequence[TensorSpec], bucket: Bucket) -> Iterator[tuple[str, torch.Tensor]]:
    off = 0
    for i in bucket.indices:
        s = specs[i]
        yield s.name, flat[off : off + s.numel].view(s.shape)
        off += s.numel


def load_checkpoint_weights(path: str) -> dict[str, torch.Tensor]:
    """All tensors of the ``*.safetensors`` files of a Hugging Face model folder."""
    from safetensors.torch import load_file

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise WeightSyncError(f"checkpoint {path!r} holds no .safetensors file")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


# --------------------------------------------------------------------------- sender


class RoundSender(WeightSender):
    def __init__(self, cfg: RethinkerConfig, backend: Backend, *, redis: Redis | None = None) -> None:
        self.cfg = cfg
        self.wcfg = cfg.learner.weight_sync
        self.backend = backend.name
        self._backend = backend
        self.keys = RedisKeys(cfg.redis.namespace)
        self.r = redis if redis is not None else sync_client(cfg.redis)
        self._round_no = 0
        self._failures: dict[str, int] = {}
        self._sit_out: dict[str, int] = {}  # server_id -> round number until which it is skipped
        self._warned: set[str] = set()
        self._pool: dict[tuple[str, int], list[torch.Tensor]] = {}  # CPU bucket buffers kept between rounds
        self._closed = False

    # ---- membership
    def members(self) -> dict[str, JoinRecord]:
        now = redis_now(self.r)
        raw = self.r.hgetall(self.keys.sync_members)
        out: dict[str, JoinRecord] = {}
        for sid_b, rec_b in raw.items():
            sid = sid_b.decode() if isinstance(sid_b, bytes) else str(sid_b)
            try:
                rec = JoinRecord.from_json(rec_b)
            except (ValueError, TypeError):
                log.warning("sync_member_malformed", server_id=sid)
                continue
            if rec.server_id != sid or rec.backend != self.backend:
                continue
            if now - rec.heartbeat > self.wcfg.member_ttl_s:
                continue
            if rec.proof != token_proof(reveal(self.wcfg.token), sid):
                if sid not in self._warned:
                    self._warned.add(sid)
                    log.warning("sync_member_bad_token", server_id=sid)
                continue
            if not self._backend.admits(rec):
                continue
            if self._sit_out.get(sid, -1) >= self._round_no:
                continue
            out[sid] = rec
        return out

    def _record_failure(self, sid: str) -> None:
        k = self._failures.get(sid, 0) + 1
        self._failures[sid] = k
        self._sit_out[sid] = self._round_no + min(2**k - 1, self.wcfg.max_failure_backoff) if self.wcfg.max_failure_backoff else -1

    def _record_success(self, sid: str) -> None:
        self._failures.pop(sid, None)
        self._sit_out.pop(sid, None)

    # ---- one round
    def sync(
        self,
        specs: Sequence[TensorSpec],
        tensors: Iterable[torch.Tensor],
        *,
        version: int,
        step: int = 0,
    ) -> SyncReport:
        t0 = time.perf_counter()
        self._round_no += 1
        specs = list(specs)
        plan = plan_buckets(specs, int(self.wcfg.bucket_mb * 1024 * 1024))
        num_bytes = sum(s.nbytes for s in specs)
        it = iter(tensors)
        report = SyncReport(version=version, round_id=None, ok=True, num_bytes=num_bytes, num_buckets=len(plan))
        members = self.members()
        report.invited = sorted(members)
        if not members:
            for _ in it:  # keep collective gathers of other ranks in step
                pass
            self._finish(report, version, step, t0)
            return report
        round_id = f"{version}-{uuid.uuid4().hex[:12]}"
        report.round_id = round_id
        store = None
        channel: Channel | None = None
        ranks: dict[str, int] = {}
        try:
            store = _open_master_store(
                self.wcfg.master_addr, self.wcfg.master_port, self.wcfg.port_span, self._round_no, self.wcfg.join_timeout_s
            )
            desc = RoundDescriptor(
                round_id=round_id,
                version=version,
                step=step,
                backend=self.backend,
                master_addr=self.wcfg.master_addr,
                master_port=int(store.port),
                members={sid: i + 1 for i, sid in enumerate(sorted(members))},
                manifest=manifest_to_json(specs),
                bucket_bytes=int(self.wcfg.bucket_mb * 1024 * 1024),
                created_at=redis_now(self.r),
                join_timeout_s=self.wcfg.join_timeout_s,
                timeout_s=self.wcfg.timeout_s,
                extra=self._backend.round_extra(),
            )
            pstore = dist.PrefixStore(round_secret(reveal(self.wcfg.token), round_id), store)
            with self.r.pipeline(transaction=True) as p:
                p.hset(self.keys.sync_round, ROUND_FIELD, desc.to_json())
                p.publish(
                    self.keys.policy_channel,
                    json.dumps({"type": "sync_round", "round_id": round_id, "version": version, "step": step}),
                )
                p.execute()
            # rendezvous: wait for the invited members to show up, then fix the ranks
            deadline = time.monotonic() + self.wcfg.join_timeout_s
            waiting = set(members)
            while waiting and time.monotonic() < deadline:
                for sid in list(waiting):
                    if pstore.check([f"joined/{sid}"]):
                        waiting.discard(sid)
                if waiting:
                    time.sleep(0.005)
            joined = sorted(set(members) - waiting)
            for sid in waiting:
                self._record_failure(sid)
            report.joined = joined
            report.failed = sorted(waiting)
            ranks = {sid: i + 1 for i, sid in enumerate(joined)}
            pstore.set("final", json.dumps({"ranks": ranks, "world": len(joined) + 1}))
            report.join_s = time.perf_counter() - t0
            if not joined:
                report.ok = not waiting
                report.error = "no invited member joined" if waiting else ""
                for _ in it:
                    pass
                self._finish(report, version, step, t0)
                return report
            t1 = time.perf_counter()
            channel = self._backend.open(dist.PrefixStore("pg", pstore), 0, len(joined) + 1, self.wcfg.timeout_s)
            self._stream(channel, specs, plan, it)
            status = channel.confirm(0)
            if status != 0:
                raise WeightSyncError(f"{status} receiver(s) reported a bad round")
            report.transfer_s = time.perf_counter() - t1
            for sid in joined:
                self._record_success(sid)
        except Exception as exc:  # noqa: BLE001 - any failure ends the round, never the learner
            report.ok = False
            report.error = f"{type(exc).__name__}: {exc}"[:500]
            if channel is not None:
                channel.close()
                channel = None
            for _ in it:
                pass
            culprits = self._unaccounted(list(ranks) or list(members), round_id)
            report.failed = sorted(set(report.failed) | set(culprits))
            for sid in culprits:
                self._record_failure(sid)
            log.warning("sync_round_failed", round_id=round_id, version=version, error=report.error, culprits=culprits)
        finally:
            if channel is not None:
                channel.close()
            del store
        self._finish(report, version, step, t0)
        return report

    def _unaccounted(self, sids: list[str], round_id: str) -> list[str]:
        """After a failed round: the members that show no sign of life (no fresh heartbeat) within a
        grace period.  Only they sit out the next rounds; live ones are invited again at once."""
        try:
            since = redis_now(self.r)
        except Exception:  # noqa: BLE001
            return sids
        grace = min(max(2.5 * self.wcfg.heartbeat_s, 1.0), self.wcfg.timeout_s)
        deadline = time.monotonic() + grace
        left = set(sids)
        while left and time.monotonic() < deadline:
            try:
                raw = self.r.hmget(self.keys.sync_members, sorted(left))
            except Exception:  # noqa: BLE001
                break
            for sid, rec_b in zip(sorted(left), raw):
                if rec_b is None:
                    continue
                try:
                    if JoinRecord.from_json(rec_b).heartbeat > since:
                        left.discard(sid)
                except (ValueError, TypeError):
                    continue
            if left:
                time.sleep(0.05)
        return sorted(left)

    def _stream(self, channel: Channel, specs: list[TensorSpec], plan: list[Bucket], it: Iterator[torch.Tensor]) -> None:
        """Fill buckets from the manifest-ordered iterator; send each one as soon as it is complete,
        while the next ones fill (up to ``PIPELINE_DEPTH`` sends in flight).  On CPU the bucket
        buffers are kept for the next round (no page faults on the hot path)."""
        device = self._backend.device()
        cap: dict[str, int] = {}
        for bucket in plan:
            cap[bucket.dtype] = max(cap.get(bucket.dtype, 0), bucket.numel)
        free: dict[str, list[torch.Tensor]] = {}
        for dt, n in cap.items():
            free[dt] = [t for t in self._pool.get((dt, n), [])]
        where: dict[int, tuple[int, int]] = {}
        for b, bucket in enumerate(plan):
            off = 0
            for i in bucket.indices:
                where[i] = (b, off)
                off += specs[i].numel
        filled: dict[int, int] = {}
        buffers: dict[int, torch.Tensor] = {}
        owners: dict[int, torch.Tensor] = {}
        inflight: deque[tuple[Pending, str, torch.Tensor]] = deque()
        next_to_send = 0
        done: set[int] = set()

        def take(dt: str) -> torch.Tensor:
            if free[dt]:
                return free[dt].pop()
            while inflight and not free[dt]:
                work, wdt, buf = inflight.popleft()
                work.wait()
                free[wdt].append(buf)
            return free[dt].pop() if free[dt] else torch.empty(cap[dt], dtype=dtype_of(dt), device=device)

        for i, spec in enumerate(specs):
            try:
                t = next(it)
            except StopIteration:
                raise WeightSyncError(f"tensor iterator ended at {i} of {len(specs)} ({spec.name})") from None
            if tuple(t.shape) != spec.shape or t.dtype != dtype_of(spec.dtype):
                raise WeightSyncError(
                    f"tensor {spec.name}: got {tuple(t.shape)} {t.dtype}, manifest says {spec.shape} {spec.dtype}"
                )
            b, off = where[i]
            bucket = plan[b]
            if b not in buffers:
                owners[b] = take(bucket.dtype)
                buffers[b] = owners[b][: bucket.numel]
            buffers[b][off : off + spec.numel].copy_(t.reshape(-1))
            filled[b] = filled.get(b, 0) + 1
            if filled[b] == len(bucket.indices):
                done.add(b)
            while next_to_send in done:
                work = channel.isend(buffers.pop(next_to_send), next_to_send)
                inflight.append((work, plan[next_to_send].dtype, owners.pop(next_to_send)))
                next_to_send += 1
                while len(inflight) > PIPELINE_DEPTH:
                    w, wdt, buf = inflight.popleft()
                    w.wait()
                    free[wdt].append(buf)
        while inflight:
            w, wdt, buf = inflight.popleft()
            w.wait()
            free[wdt].append(buf)
        if next_to_send != len(plan):
            raise WeightSyncError(f"only {next_to_send} of {len(plan)} buckets were complete")
        if device.type == "cpu":
            self._pool = {(dt, cap[dt]): bufs for dt, bufs in free.items()}

    def _finish(self, report: SyncReport, version: int, step: int, t0: float) -> None:
        report.total_s = time.perf_counter() - t0
        try:
            with self.r.pipeline(transaction=True) as p:
                p.hset(
                    self.keys.sync_round,
                    RESULT_FIELD,
                    json.dumps({k: getattr(report, k) for k in ("version", "round_id", "ok", "joined", "failed", "error", "total_s")}),
                )
                p.publish(self.keys.policy_channel, json.dumps({"type": "version", "version": version, "step": step}))
                p.execute()
        except Exception as exc:  # noqa: BLE001 - Redis trouble must not kill the learner here
            log.warning("sync_publish_failed", error=str(exc))

    def publish_checkpoint(self, path: str, *, version: int, step: int) -> None:
        rec = json.dumps({"path": str(Path(path).resolve()), "version": version, "step": step, "at": time.time()})
        with self.r.pipeline(transaction=True) as p:
            p.hset(self.keys.sync_round, CHECKPOINT_FIELD, rec)
            p.publish(self.keys.policy_channel, json.dumps({"type": "checkpoint", "version": version, "path": path}))
            p.execute()

    def close(self) -> None:
        self._closed = True


# --------------------------------------------------------------------------- participant


class RoundParticipant:
    """The receiving half of one round, without Redis: dial the round's store, show the token (the
    store prefix), take the rank from ``final``, receive every bucket, confirm, hand the weights over.

    Used by ``RoundReceiver`` (the round received in the rollout server's own process) and by rollout
    engines whose workers receive themselves (the vLLM worker extension: one participant per
    tensor-parallel rank, each a member of its own).  ``deliver(weights)`` gets what ``on_weights``
    gets (see base.py): after the confirmation a ``dict`` of views into the receive buffers
    (``staging == "full"``), or an iterator that receives bucket by bucket (``"stream"``).
    """

    def __init__(self, backend: Backend, *, token: str | None, staging: str = "full") -> None:
        if staging not in ("full", "stream"):
            raise ValueError(f"staging must be 'full' or 'stream', got {staging!r}")
        self.backend = backend
        self.token = token
        self.staging = staging
        self._rx_buffers: list[torch.Tensor] = []
        self._rx_signature: tuple | None = None

    def release_buffers(self) -> None:
        """Drop the receive buffers kept for the next round (CPU only keeps them)."""
        self._rx_buffers, self._rx_signature = [], None

    def receive(self, desc: RoundDescriptor, member_id: str, deliver: Callable[[WeightsArg], None]) -> JoinOutcome:
        """Take part in ``desc`` as ``member_id``.  Returns ``joined=False`` when the sender did not rank
        us (too late); raises on a failed round (timeout, lost peer, bad round, ``deliver`` raising)."""
        t0 = time.perf_counter()
        out = JoinOutcome(member_id=member_id, round_id=desc.round_id, version=desc.version)
        if member_id not in desc.members:
            return out
        channel: Channel | None = None
        store = None
        try:
            store = dist.TCPStore(
                desc.master_addr,
                desc.master_port,
                None,
                False,
                timeout=datetime.timedelta(seconds=desc.join_timeout_s + 1.0),
                wait_for_workers=False,
            )
            pstore = dist.PrefixStore(round_secret(self.token, desc.round_id), store)
            pstore.set(f"joined/{member_id}", b"1")
            final = json.loads(pstore.get("final"))
            if member_id not in final["ranks"]:
                return out
            out.joined = True
            rank, world = int(final["ranks"][member_id]), int(final["world"])
            store.set_timeout(datetime.timedelta(seconds=desc.timeout_s))
            channel = self.backend.open(dist.PrefixStore("pg", pstore), rank, world, desc.timeout_s)
            specs = manifest_from_json(desc.manifest)
            plan = plan_buckets(specs, desc.bucket_bytes)
            device = self.backend.device()
            if self.staging == "stream":
                self._receive_stream(channel, specs, plan, device, deliver)
            else:
                signature = tuple((b.dtype, b.numel) for b in plan)
                flats = self._rx_buffers if self._rx_signature == signature else None
                if flats is None:
                    self.release_buffers()  # free the old set first
                    flats = [torch.empty(b.numel, dtype=dtype_of(b.dtype), device=device) for b in plan]
                works = [channel.irecv(flat, b) for b, flat in enumerate(flats)]  # all posted: gloo pipelines them
                for w in works:
                    w.wait()
                if channel.confirm(0) != 0:
                    raise WeightSyncError("round reported bad by a participant")
                weights: dict[str, torch.Tensor] = {}
                for flat, bucket in zip(flats, plan):
                    weights.update(_bucket_views(flat, specs, bucket))
                if device.type == "cpu":  # kept for the next round: tensors are valid during deliver only
                    self._rx_buffers, self._rx_signature = flats, signature
                deliver(weights)
            out.ok = True
            out.tensors = len(specs)
            out.num_bytes = sum(s.nbytes for s in specs)
            return out
        finally:
            out.seconds = time.perf_counter() - t0
            if channel is not None:
                channel.close()
            del store

    def _receive_stream(
        self, channel: Channel, specs: list[TensorSpec], plan: list[Bucket], device: torch.device, deliver: Callable[[WeightsArg], None]
    ) -> None:
        state = {"next": 0}

        def gen() -> Iterator[tuple[str, torch.Tensor]]:
            while state["next"] < len(plan):
                b = state["next"]
                flat = torch.empty(plan[b].numel, dtype=dtype_of(plan[b].dtype), device=device)
                channel.recv(flat, b)
                state["next"] += 1
                yield from _bucket_views(flat, specs, plan[b])

        err: Exception | None = None
        try:
            deliver(gen())
        except Exception as exc:  # noqa: BLE001
            err = exc
        while state["next"] < len(plan):  # the consumer stopped early: drain so the sender is not stuck
            b = state["next"]
            channel.recv(torch.empty(plan[b].numel, dtype=dtype_of(plan[b].dtype), device=device), b)
            state["next"] += 1
        if channel.confirm(1 if err else 0) != 0:
            raise WeightSyncError(f"round reported bad ({err!r})")


# --------------------------------------------------------------------------- receiver


class RoundReceiver(WeightReceiver):
    def __init__(
        self,
        cfg: RethinkerConfig,
        backend: Backend,
        *,
        server_id: str,
        on_weights: OnWeights,
        initial_version: int = -1,
        redis: Redis | None = None,
    ) -> None:
        if not server_id:
            raise ValueError("server_id must be a non-empty string")
        self.cfg = cfg
        self.wcfg = cfg.learner.weight_sync
        self.server_id = server_id
        self.on_weights = on_weights
        self._backend = backend
        self.keys = RedisKeys(cfg.redis.namespace)
        self._redis_given = redis
        self.r = redis if redis is not None else sync_client(cfg.redis)
        self._version = VersionWaiter(initial_version)
        self._last_error = ""
        self._last_round = ""
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started_at = 0.0
        self._lock = threading.Lock()
        self.rounds_ok = 0
        self.rounds_failed = 0
        self._participant = RoundParticipant(backend, token=reveal(self.wcfg.token), staging=self.wcfg.staging)

    # ---- public
    @property
    def loaded_version(self) -> int:
        return self._version.value

    @property
    def last_error(self) -> str:
        return self._last_error

    def wait_for_version(self, version: int, timeout: float) -> bool:
        return self._version.wait_for(version, timeout)

    def start(self, *, load_checkpoint: bool = True) -> "RoundReceiver":
        if self._threads:
            return self
        self._started_at = time.time()
        if load_checkpoint:
            self.load_latest_checkpoint()
        # Do not join a round announced before we started: its sender did not invite us anyway.
        desc = self._read_round()
        self._heartbeat()
        self._stop.clear()
        hb = threading.Thread(target=self._heartbeat_loop, name=f"wsync-hb-{self.server_id}", daemon=True)
        rx = threading.Thread(target=self._round_loop, name=f"wsync-rx-{self.server_id}", daemon=True)
        self._threads = [hb, rx]
        if desc is not None and not self._invited(desc):
            self._last_round = desc.round_id
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.wcfg.timeout_s + self.wcfg.join_timeout_s + 5)
        self._threads = []
        try:
            self.r.hdel(self.keys.sync_members, *self._member_ids())
        except Exception:  # noqa: BLE001
            pass

    def published_checkpoint(self) -> tuple[str, int] | None:
        """``(path, version)`` of the checkpoint the learner published last, or None."""
        raw = self.r.hget(self.keys.sync_round, CHECKPOINT_FIELD)
        if not raw:
            return None
        ck = json.loads(raw)
        return str(ck["path"]), int(ck["version"])

    def load_latest_checkpoint(self) -> int | None:
        """Load the published checkpoint if it is newer than ``loaded_version``; returns its version."""
        ck = self.published_checkpoint()
        if ck is None or ck[1] <= self.loaded_version:
            return None
        path, version = ck
        weights = load_checkpoint_weights(path)
        if self.wcfg.staging == "stream":
            self.on_weights(iter(list(weights.items())), version)
        else:
            self.on_weights(weights, version)
        self._version.set(version)
        log.info("checkpoint_loaded", server_id=self.server_id, version=version, path=path)
        self._heartbeat()
        return version

    # ---- threads
    def _record(self) -> JoinRecord:
        return JoinRecord(
            server_id=self.server_id,
            backend=self._backend.name,
            proof=token_proof(reveal(self.wcfg.token), self.server_id),
            host=socket.gethostname(),
            pid=os.getpid(),
            heartbeat=redis_now(self.r),
            loaded_version=self.loaded_version,
            last_round=self._last_round,
            last_error=self._last_error[:300],
            started_at=self._started_at,
            **{k: v for k, v in self._backend.member_extra().items() if k in JoinRecord.__dataclass_fields__},
        )

    def _records(self) -> list[JoinRecord]:
        """The join records this receiver keeps fresh (one: its own)."""
        return [self._record()]

    def _member_ids(self) -> list[str]:
        return [self.server_id]

    def _invited(self, desc: RoundDescriptor) -> bool:
        return self.server_id in desc.members

    def _heartbeat(self) -> None:
        with self._lock:
            recs = self._records()
            self.r.hset(self.keys.sync_members, mapping={rec.server_id: rec.to_json() for rec in recs})

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.wcfg.heartbeat_s):
            try:
                self._heartbeat()
            except Exception as exc:  # noqa: BLE001 - Redis blips: try again next beat
                log.warning("sync_heartbeat_failed", server_id=self.server_id, error=str(exc))

    def _read_round(self) -> RoundDescriptor | None:
        raw = self.r.hget(self.keys.sync_round, ROUND_FIELD)
        if not raw:
            return None
        try:
            return RoundDescriptor.from_json(raw)
        except WeightSyncError as exc:
            log.warning("sync_round_malformed", error=str(exc))
            return None

    def _round_loop(self) -> None:
        pubsub = None
        while not self._stop.is_set():
            try:
                if pubsub is None:
                    pubsub = self.r.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(self.keys.policy_channel)
                pubsub.get_message(timeout=self.wcfg.poll_s)
                desc = self._read_round()
                if desc is None or desc.round_id == self._last_round:
                    continue
                self._last_round = desc.round_id
                if not self._invited(desc):
                    continue
                if redis_now(self.r) > desc.created_at + desc.join_timeout_s:
                    continue  # too late to join; the next round will invite us again
                self._join(desc)
            except Exception as exc:  # noqa: BLE001 - keep listening whatever happens
                log.warning("sync_listener_error", server_id=self.server_id, error=f"{type(exc).__name__}: {exc}")
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001
                        pass
                    pubsub = None
                self._stop.wait(self.wcfg.poll_s)
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:  # noqa: BLE001
                pass

    def _join(self, desc: RoundDescriptor) -> None:
        """Take part in one round and keep its books: the loaded version, the counters and the
        log line on success; the error on failure (logged and forgotten); a heartbeat either way."""
        t0 = time.perf_counter()
        try:
            received = self._receive_round(desc)
            if received is None:
                return
            self._version.set(desc.version)
            self._last_error = ""
            self.rounds_ok += 1
            log.info(
                "weights_received",
                server_id=self.server_id,
                version=desc.version,
                round_id=desc.round_id,
                **received,
                seconds=round(time.perf_counter() - t0, 4),
            )
        except Exception as exc:  # noqa: BLE001 - a failed round is logged and forgotten
            self.rounds_failed += 1
            self._last_error = f"round {desc.round_id}: {type(exc).__name__}: {exc}"[:500]
            log.warning("sync_round_failed", server_id=self.server_id, round_id=desc.round_id, error=self._last_error)
        finally:
            try:
                self._heartbeat()
            except Exception:  # noqa: BLE001
                pass

    def _receive_round(self, desc: RoundDescriptor) -> dict[str, int] | None:
        """Receive the round's weights and hand them to ``on_weights``; None when this receiver did
        not join it, else extra fields for the log line.  Raises when the round failed."""
        outcome = self._participant.receive(desc, self.server_id, lambda w: self.on_weights(w, desc.version))
        return {} if outcome.joined else None
