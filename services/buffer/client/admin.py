"""Commands spanning every key group: ``stats``, ``clear``, ``snapshot`` (plus ``read_snapshot``).

Used by the HTTP app (inspection, administration, dashboard), the learner's metrics (``stats``)
and tests.  Each command is written once and runs on both clients (``transport``).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import msgpack

from common.codec import decode, encode
from common.schemas import Group
from services.buffer import protocol as P
from services.buffer.client import queue, store, versions
from services.buffer.client.registry import live_servers, registry_keys
from services.buffer.client.state import ClientState
from services.buffer.client.transport import Command, call
from services.buffer.stats import build_stats

SNAPSHOT_MAGIC = b"RTKSNAP1"
_ID_CHUNK = 500  # group ids read per LRANGE while snapshotting


def stats(c: ClientState) -> Command[dict[str, Any]]:
    """Everything the stats endpoint and the dashboard show (see services/buffer/stats.py)."""
    pv = yield from versions.policy_version(c)
    raw = yield from store.store_stats_raw(c, pv.version if pv else -1)
    qs = yield from queue.queue_stats(c)
    live = yield from live_servers(c)
    return build_stats(raw, qs, pv, live, c.cfg)


def clear(c: ClientState, *, store: bool = True, queue: bool = True, registry: bool = False) -> Command[int]:
    """Delete the namespace's store and queue (and, on request, the registry and policy
    version); returns the number of keys deleted."""
    patterns = []
    if store:
        patterns.append(c.keys.store_pattern())
    if queue:
        patterns.append(c.keys.queue_pattern())
    if registry:
        patterns += registry_keys(c.keys) + versions.cleared_keys(c.keys)
    n = 0
    for pat in patterns:
        batch = []
        cursor: Any = "0"
        while cursor != 0:  # what redis-py's scan_iter does, with the deletes in between
            cursor, keys = yield call("scan", cursor=cursor, match=pat, count=1000)
            for key in keys:
                batch.append(key)
                if len(batch) >= 500:
                    n += yield call("unlink", *batch)
                    batch = []
        if batch:
            n += yield call("unlink", *batch)
    c._group_ready = False
    c._tasks.clear()
    return n


def _snapshot_record(group: Group, pools: dict[str, str]) -> bytes:
    return msgpack.packb({"group": encode(group), "pools": pools}, use_bin_type=True)


def snapshot(c: ClientState, path: str | os.PathLike[str]) -> Command[dict[str, Any]]:
    """Write every stored group (with its samples and their pool state) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n_groups = n_samples = 0
    with open(tmp, "wb") as f:
        f.write(SNAPSHOT_MAGIC)
        start = 0
        while True:  # stored group ids, oldest first (capacity eviction may remove some meanwhile)
            ids = yield call("lrange", c.keys.group_order, start, start + _ID_CHUNK - 1)
            for gid in ids:
                rec = yield from store.get_group_record(c, P._s(gid))
                if rec is None:
                    continue
                blob = _snapshot_record(*rec)
                f.write(struct.pack("<Q", len(blob)))
                f.write(blob)
                n_groups += 1
                n_samples += len(rec[0].samples)
            if len(ids) < _ID_CHUNK:
                break
            start += _ID_CHUNK
    os.replace(tmp, path)
    return {"path": str(path), "groups": n_groups, "samples": n_samples, "bytes": path.stat().st_size}


def read_snapshot(path: str | os.PathLike[str]) -> list[tuple[Group, dict[str, str]]]:
    """Read a file written by ``snapshot``: [(group with samples, sample_id -> pool)]."""
    out = []
    with open(path, "rb") as f:
        if f.read(len(SNAPSHOT_MAGIC)) != SNAPSHOT_MAGIC:
            raise ValueError(f"{path} is not a buffer snapshot")
        while True:
            head = f.read(8)
            if not head:
                break
            (size,) = struct.unpack("<Q", head)
            rec = msgpack.unpackb(f.read(size), raw=False)
            out.append((decode(rec["group"], Group), rec["pools"]))
    return out
