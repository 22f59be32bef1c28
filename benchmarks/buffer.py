"""Benchmark of the SSR buffer: insert throughput, sample latency vs store size, overhead vs raw Redis.

Prints ONE JSON line.  Figures (all measured in this run, on one private redis-server unless
``--redis-url`` is given):

- ``insert_groups_per_s``: ``add_group`` of groups of 8 responses with 1k-token payloads (1024
  response tokens + log-probs, 256 prompt tokens), one call per group, client encoding included.
- ``sample_ms_p50_1e4`` / ``sample_ms_p50_1e6``: median wall time of ``sample(256)`` (mode ssr,
  decoded ``Sample`` objects returned) from stores of 1e4 and 1e6 responses.  Both stores use the
  same small payload (16-token responses) so that only the store size differs; the store is kept
  at its size by inserting 32 groups (untimed) between timed calls, i.e. the steady state of a
  training run.  ``flatness`` = 1e6 figure / 1e4 figure.
- ``raw_redis_ratio``: (our insert time + our sample time) / (a raw redis-py run doing the same
  number of round trips with the same objects in and out, in the same run): per group, encode the
  8 samples and the group with ``common.codec`` and write them in one pipelined round trip; per
  batch, one HMGET of 256 random ids, then one pipelined MGET of their payloads and tasks, decoded
  with ``common.codec`` (ours: one round trip per insert — MULTI: MSETNX payloads + FCALL — and
  two per batch — FCALL draw, then MGET).  1k-token payloads, 1e4 store.  ``insert_ratio`` and
  ``sample_ratio`` split it.
- ``raw_bytes_ratio``: the same over a bytes-only lower bound (pre-encoded payloads, one HSET per
  group and one HMGET per batch, nothing decoded).
- Ours and the raw runs alternate in blocks, so that all see the same machine load.

``--quick`` shrinks every size (smoke test; the figures are then not comparable).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import redis  # noqa: E402

from common.codec import decode, encode  # noqa: E402
from common.config import RethinkerConfig  # noqa: E402
from common.schemas import Group, PromptTask, Sample  # noqa: E402
from services.buffer.client import BufferClient  # noqa: E402

GROUP = 8
BATCH = 256


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Payload:
    """Shared arrays (built once) so that building millions of samples costs no array work."""

    def __init__(self, response_tokens: int, prompt_tokens: int) -> None:
        self.prompt = np.arange(prompt_tokens, dtype=np.int32)
        self.response = (np.arange(response_tokens, dtype=np.int32) * 7) % 50000
        self.logprobs = -np.abs(np.sin(np.arange(response_tokens, dtype=np.float32)))
        self.text = "x" * (response_tokens * 3)


def make_group(tag: str, i: int, pl: Payload, rng: random.Random, version: int = 0) -> Group:
    task = PromptTask(task_id=f"{tag}{i}", prompt_id=f"p{i}", question="q <image>", answer="1",
                      images=[b"\x89PNG" + b"\0" * 2000], category="c", source="s")
    gid = f"g{tag}{i}"
    samples = [
        Sample(sample_id=f"{tag}{i}.{j}", group_id=gid, task_id=task.task_id, prompt_id=task.prompt_id,
               prompt_token_ids=pl.prompt, response_token_ids=pl.response, sampler_logprobs=pl.logprobs,
               response_text=pl.text, reward=float(rng.random() < 0.5), policy_version=version)
        for j in range(GROUP)
    ]
    return Group(group_id=gid, task=task, samples=samples)


def start_redis(workdir: str) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("benchmarks/buffer.py: redis-server not found (apt-get install redis-server) or pass --redis-url")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", workdir, "--logfile", os.path.join(workdir, "redis.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(200):
        try:
            if redis.Redis.from_url(url).ping():
                return proc, url
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("benchmarks/buffer.py: private redis-server did not start")


def make_cfg(url: str, capacity: int) -> RethinkerConfig:
    cfg = RethinkerConfig()
    cfg.redis.url = url
    cfg.redis.namespace = f"bench-{uuid.uuid4().hex[:8]}"
    cfg.redis.socket_timeout_s = 120
    cfg.algorithm.ssr.capacity = capacity
    cfg.algorithm.ssr.staleness_bound = 10**6
    return cfg


def fill(c: BufferClient, n_responses: int, pl: Payload, rng: random.Random, tag: str, batch: int = 250) -> None:
    i = 0
    target = n_responses // GROUP
    while i < target:
        k = min(batch, target - i)
        c.add_groups([make_group(tag, i + j, pl, rng) for j in range(k)])
        i += k


def timed_samples(c: BufferClient, calls: int, pl: Payload, rng: random.Random, tag: str) -> list[float]:
    times = []
    refill = 0
    for k in range(calls):
        t0 = time.perf_counter()
        b = c.sample(BATCH, policy_version=0, seed=k)
        times.append(time.perf_counter() - t0)
        assert len(b) == BATCH, len(b)
        c.add_groups([make_group(tag, refill + j, pl, rng) for j in range(BATCH // GROUP)])  # steady state
        refill += BATCH // GROUP
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--redis-url", help="use this Redis (fresh namespaces, deleted afterwards) instead of a private "
                    "redis-server (default; $REDIS_URL is used when no redis-server binary is installed)")
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--insert-groups", type=int, default=1250, help="groups of the insert run (1250 x 8 = 1e4)")
    ap.add_argument("--large", type=int, default=1_000_000, help="responses of the large store")
    ap.add_argument("--calls", type=int, default=40, help="timed sample calls per store size")
    args = ap.parse_args()
    small, large, n_ins, calls = 10_000, args.large, args.insert_groups, args.calls
    if args.quick:
        small, large, n_ins, calls = 2_000, 8_000, 100, 8

    workdir = tempfile.mkdtemp(prefix="bench-buffer-")
    proc = None
    url = args.redis_url
    if url is None and shutil.which("redis-server") is None and os.environ.get("REDIS_URL"):
        url = os.environ["REDIS_URL"]  # no local binary (e.g. `make bench` against a remote Redis)
    if url is None:
        proc, url = start_redis(workdir)
    r = redis.Redis.from_url(url)
    namespaces = []
    out: dict = {"bench": "buffer", "redis_version": r.info("server")["redis_version"], "quick": bool(args.quick)}
    try:
        rng = random.Random(0)
        # ------------------------------------------------ insert: 1k-token payloads, ours vs raw
        # Ours and the two raw runs alternate in blocks of 25 groups, so that all see the same
        # machine load (the sandbox is shared).
        big = Payload(1024, 256)
        cfg = make_cfg(url, capacity=n_ins * GROUP)
        namespaces.append(cfg.redis.namespace)
        c = BufferClient(cfg)
        c.ensure_library()
        raw_ns = f"bench-raw-{uuid.uuid4().hex[:8]}"
        namespaces.append(raw_ns)
        raw_hash, raw_groups, raw_ids = f"{raw_ns}:{{s}}:samples", f"{raw_ns}:{{s}}:groups", f"{raw_ns}:{{s}}:ids"
        raw_key = lambda sid: f"{raw_ns}:{{s}}:sd:{sid}"  # noqa: E731
        raw_gkey = lambda gid: f"{raw_ns}:{{s}}:gd:{gid}"  # noqa: E731
        groups = [make_group("i", i, big, rng) for i in range(n_ins)]
        pre = [({s.sample_id: encode(s) for s in g.samples}, encode(g.task)) for g in groups]
        t_ins = t_raw_ins = t_rawb_ins = 0.0
        for b0 in range(0, n_ins, 25):
            block = groups[b0 : b0 + 25]
            t0 = time.perf_counter()
            for g in block:
                c.add_group(g)
            t1 = time.perf_counter()
            for g in block:  # raw: the project's codec + one pipelined round trip
                payloads = {raw_key(s.sample_id): encode(s) for s in g.samples}
                with r.pipeline(transaction=False) as p:
                    p.mset(payloads)
                    p.set(raw_gkey(g.group_id), encode(dataclasses.replace(g, samples=[])))
                    p.hset(raw_ids, mapping={s.sample_id: g.group_id for s in g.samples})
                    p.execute()
            t2 = time.perf_counter()
            for g, (payloads, header) in zip(block, pre[b0 : b0 + 25]):  # raw bytes only, pre-encoded
                with r.pipeline(transaction=False) as p:
                    p.hset(raw_hash, mapping=payloads)
                    p.hset(raw_groups, g.group_id, header)
                    p.execute()
            t_ins += t1 - t0
            t_raw_ins += t2 - t1
            t_rawb_ins += time.perf_counter() - t2
        out["insert_groups_per_s"] = n_ins / t_ins
        out["raw_insert_groups_per_s"] = n_ins / t_raw_ins
        out["raw_bytes_insert_groups_per_s"] = n_ins / t_rawb_ins
        out["insert_payload_bytes_per_response"] = len(encode(groups[0].samples[0]))
        del pre

        # ------------------------------------------------ sample from the 1k-payload 1e4 store, ours vs raw
        ids = [s.sample_id for g in groups for s in g.samples]
        del groups
        ours, raw, rawb = [], [], []
        for k in range(calls):
            ours += timed_samples(c, 1, big, rng, f"j{k}-")
            pick = [rng.choice(ids) for _ in range(BATCH)]
            t0 = time.perf_counter()  # raw: same two round trips, same objects out
            gids = r.hmget(raw_ids, pick)
            uniq = list(dict.fromkeys(g.decode() for g in gids))
            with r.pipeline(transaction=False) as p:
                p.mget([raw_key(x) for x in pick])
                p.mget([raw_gkey(g) for g in uniq])
                vals, heads = p.execute()
            samples = [decode(v, Sample) for v in vals]
            tasks = {decode(h, Group).task.task_id for h in heads}
            raw.append(time.perf_counter() - t0)
            assert len(samples) == BATCH and tasks
            t0 = time.perf_counter()  # raw bytes only: one HMGET of the payloads
            vals = r.hmget(raw_hash, pick)
            rawb.append(time.perf_counter() - t0)
            assert all(v is not None for v in vals)
        out["sample_ms_p50_1e4_1k"] = statistics.median(ours) * 1e3
        out["raw_sample_ms_p50_1e4_1k"] = statistics.median(raw) * 1e3
        out["raw_bytes_sample_ms_p50_1e4_1k"] = statistics.median(rawb) * 1e3
        out["raw_redis_ratio"] = (t_ins + sum(ours)) / (t_raw_ins + sum(raw))
        out["insert_ratio"] = t_ins / t_raw_ins
        out["sample_ratio"] = sum(ours) / sum(raw)
        out["raw_bytes_ratio"] = (t_ins + sum(ours)) / (t_rawb_ins + sum(rawb))
        out["round_trips"] = {"per_insert": 1, "per_sample": 2, "raw_bytes_per_insert": 1, "raw_bytes_per_sample": 1}
        c.clear()
        for pat in (f"{raw_ns}:*",):
            keys = list(r.scan_iter(match=pat, count=1000))
            for i in range(0, len(keys), 500):
                r.unlink(*keys[i : i + 500])
        c.close()

        # ------------------------------------------------ flatness: same small payload, 1e4 vs 1e6
        # Both stores live side by side and the timed calls alternate between them, so that load
        # changes on the shared machine hit both sizes alike.
        tiny = Payload(16, 16)
        stores = {}
        for size, key in ((small, "1e4"), (large, "1e6")):
            cfg = make_cfg(url, capacity=size)
            namespaces.append(cfg.redis.namespace)
            c = BufferClient(cfg)
            t0 = time.perf_counter()
            fill(c, size, tiny, rng, f"f{key}-")
            out[f"fill_groups_per_s_{key}"] = size / GROUP / (time.perf_counter() - t0)
            out[f"stored_{key}"] = c.sizes().stored
            stores[key] = (c, [])
        out["redis_used_memory_mb_1e4_plus_1e6"] = r.info("memory")["used_memory"] / 2**20
        for k in range(calls):
            for key, (c, times) in stores.items():
                times += timed_samples(c, 1, tiny, rng, f"k{key}-{k}-")
        for key, (c, times) in stores.items():
            out[f"sample_ms_p50_{key}"] = statistics.median(times) * 1e3
            out[f"sample_ms_p90_{key}"] = sorted(times)[int(0.9 * (len(times) - 1))] * 1e3
            c.clear()
            c.close()
        out["flatness"] = out["sample_ms_p50_1e6"] / out["sample_ms_p50_1e4"]
        out["targets_met"] = out["flatness"] <= 1.5 and out["raw_redis_ratio"] <= 3
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        else:
            for ns in namespaces:
                keys = list(r.scan_iter(match=f"{ns}:*", count=1000))
                for i in range(0, len(keys), 500):
                    r.unlink(*keys[i : i + 500])
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
