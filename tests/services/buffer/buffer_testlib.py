"""Helpers of the buffer tests: group factories, namespaced configs, private redis-server processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import redis

from common.config import RethinkerConfig
from common.schemas import Group, PromptTask, Sample

SHARED_REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_cfg(url: str = SHARED_REDIS_URL, **buffer_overrides) -> RethinkerConfig:
    cfg = RethinkerConfig()
    cfg.redis.url = url
    cfg.redis.namespace = f"test-buf-{uuid.uuid4().hex[:10]}"
    cfg.buffer.series_interval_s = 0.0
    for k, v in buffer_overrides.items():
        setattr(cfg.buffer, k, v)
    return cfg


def delete_namespace(url: str, namespace: str) -> None:
    r = redis.Redis.from_url(url)
    keys = list(r.scan_iter(match=f"{namespace}:*", count=1000))
    for i in range(0, len(keys), 500):
        r.unlink(*keys[i : i + 500])
    r.close()


def make_task(i: int | str, *, epoch: int = 0, category: str = "geometry", source: str = "synth",
              images: list[bytes] | None = None, prefix: str = "") -> PromptTask:
    return PromptTask(
        task_id=f"{prefix}e{epoch}-t{i}", prompt_id=f"{prefix}p{i}", question=f"question {i} <image>", answer="\\boxed{1}",
        images=[b"\x89PNG fake image bytes " + str(i).encode()] if images is None else images,
        category=category, source=source, epoch=epoch,
    )


def make_group(i: int | str, rewards, *, version: int = 0, tokens: int = 4, prefix: str = "", epoch: int = 0,
               category: str = "geometry", source: str = "synth", correct=None) -> Group:
    task = make_task(i, epoch=epoch, category=category, source=source, prefix=prefix)
    gid = f"g-{task.task_id}"
    samples = []
    for j, r in enumerate(rewards):
        samples.append(Sample(
            sample_id=f"s-{prefix}{i}-{j}", group_id=gid, task_id=task.task_id, prompt_id=task.prompt_id,
            prompt_token_ids=np.arange(7, dtype=np.int32),
            response_token_ids=np.arange(tokens, dtype=np.int32) + j,
            sampler_logprobs=-np.linspace(0.1, 1.0, tokens, dtype=np.float32),
            response_text=f"answer {j}", reward=float(r),
            correct=bool(r >= 0.5) if correct is None else bool(correct[j]),
            policy_version=version, category=category, source=source,
        ))
    return Group(group_id=gid, task=task, samples=samples, policy_version=version)


class RedisServer:
    """A private redis-server on a free port with its own directory (AOF tests, restarts, kills)."""

    def __init__(self, workdir: Path, *, appendonly: bool = True, fsync: str = "always") -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.appendonly = appendonly
        self.fsync = fsync
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", self.fsync,
                "--logfile", str(self.dir / "redis.log")]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                r = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
                if r.ping() and r.info("persistence").get("loading", 0) == 0:
                    r.close()
                    return self
            except (redis.ConnectionError, redis.BusyLoadingError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start; see {self.dir / 'redis.log'}")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill9()
        self.proc = None


def read_records(client) -> dict[int, dict]:
    """Decode the store's record array (see the layout in services/buffer/lua/rethinker_buffer.lua)."""
    raw = client.r.get(client.keys.records) or b""
    raw += b"\0" * (-len(raw) % 16)  # BITFIELD only grows the string as far as the last bit set
    out = {}
    for idx in range(1, len(raw) // 16):
        chunk = raw[16 * idx : 16 * idx + 16]
        a = int.from_bytes(chunk[:8], "big") >> 18  # u46 at bit 0
        b = int.from_bytes(chunk[8:16], "big") >> 18  # u46 at bit 64
        out[idx] = {"st": a % 16, "e": (a // 16) % 4096 - 1024, "ts": a // 65536, "pos": b % 2**24, "m": b // 2**24}
    return out


def assert_store_consistent(client) -> dict[str, int]:
    """Check the store's internal invariants straight from Redis; returns pooled counts per pool.

    Every slot of every bucket array points at a sample whose record points back at that slot;
    bucket counts match; the version index holds exactly the pooled samples; the replay FIFO holds
    exactly the replay pool; sample ids, indices, payload keys and groups agree; free indices are
    really free.
    """
    import msgpack

    r, k = client.r, client.keys
    codes = {"f": 1, "r": 2, "z": 3}
    recs = read_records(client)
    meta = {int(key): msgpack.unpackb(v, raw=False) for key, v in r.hgetall(k.sample_meta).items()}
    sidx = {key.decode(): int(v) for key, v in r.hgetall(k.sample_index).items()}
    assert {m[0]: i for i, m in meta.items()} == sidx
    pooled: dict[str, int] = {}
    members: dict[str, set] = {}
    for code, st in codes.items():
        cnt = {int(e): int(c) for e, c in r.hgetall(k.pool_counts(code)).items()}
        members[code] = set()
        for e, c in cnt.items():
            assert c > 0
            raw = r.getrange(f"{k.slot_prefix}{code}:{e}", 4, 4 * c + 3)
            assert len(raw) == 4 * c
            for p in range(1, c + 1):
                idx = int.from_bytes(raw[4 * (p - 1) : 4 * p], "big")
                rec = recs[idx]
                assert (rec["st"], rec["e"], rec["pos"]) == (st, e, p), (code, e, p, idx, rec)
                assert 2**21 <= rec["m"] < 2**22  # acceptance w / 2^e in [1/2, 1)
                assert idx in meta and idx not in members[code]
                members[code].add(idx)
        pooled[code] = len(members[code])
    for idx, rec in recs.items():
        if rec["st"] in codes.values():
            assert any(idx in m for m in members.values()), (idx, rec)
    byver = {int(m) for m in r.zrange(k.by_version, 0, -1)}
    assert byver == members["f"] | members["z"]  # replay entries age by replay_fifo, not by version bound
    assert {int(m) for m in r.zrange(k.replay_fifo, 0, -1)} == members["r"]
    free = {int(x) for x in r.lrange(k.free_indices, 0, -1)}
    assert not free & set(meta) and all(recs.get(i, {"st": 0})["st"] == 0 for i in free)
    samples = {key.decode()[len(k.sample_data_prefix):] for key in r.scan_iter(match=k.sample_data_prefix + "*", count=1000)}
    assert samples == set(sidx)
    groups = {key.decode()[len(k.group_data_prefix):] for key in r.scan_iter(match=k.group_data_prefix + "*", count=1000)}
    assert groups == {g.decode() for g in r.hkeys(k.group_meta)}
    in_groups = set()
    for raw in r.hvals(k.group_meta):
        gm = msgpack.unpackb(raw, raw=False)
        in_groups |= set(gm[1])
    assert in_groups == set(meta)
    assert int(r.hget(k.counters, "stored") or 0) == len(meta)
    return pooled
