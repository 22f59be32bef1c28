"""Arguments and replies of the buffer's Redis Functions, shared by the sync and asyncio clients.

Everything here is pure (no I/O): validation of groups and tasks, building the ``FCALL`` key and
argument lists, and turning replies into the result types below.  The commands of the
``services.buffer.client`` package only add the round trips.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import msgpack
import numpy as np

from common.codec import CodecError, decode, encode
from common.config import RethinkerConfig
from common.errors import BufferServiceError
from common.redis_keys import RedisKeys
from common.schemas import Group, PolicyVersion, PromptTask, Sample
from common.schemas.buffer import (
    AddGroupResult,
    ClaimedTask,
    PublishResult,
    SampledBatch,
    SampleRecord,
    StoreSizes,
)
from common.staleness import staleness_bound
from services.buffer.fastcodec import check_sample_fields, check_task_fields, encode_sample, sample_kwargs

MODES = ("ssr", "filter", "grpo")
MAX_GROUP_SIZE = 4096
MAX_SAMPLE_N = 1 << 20
MAX_ID_LEN = 256
MAX_CAPACITY = 16_000_000  # slot positions are 24-bit in the store's records
MAX_REUSE_CAP = (1 << 30) - 1  # times_sampled is 30-bit in the store's records
_ID_RE = re.compile(r"^[^\s]{1,256}$")


# --------------------------------------------------------------------------- errors


class BufferCommandError(BufferServiceError):
    """Base of the buffer client's own errors."""


class MalformedGroupError(BufferCommandError, ValueError):
    """``add_group`` got a group it cannot store; nothing was written."""


class BadArgumentError(BufferCommandError, ValueError):
    """A call got an argument out of its domain (mode, n, id ...); nothing was written."""


def translate_error(exc: Exception, *, group: bool = False) -> Exception:
    """Map a Redis error reply of the library (``RTK_BADARG ...``) to a client error."""
    msg = str(exc)
    if "RTK_BADARG" in msg:
        text = msg.split("RTK_BADARG", 1)[1].strip()
        return MalformedGroupError(text) if group else BadArgumentError(text)
    return exc


POOL_NAMES = {"f": "fresh", "r": "replay", "z": "zero", "t": "retired", "x": "stale", "-": "none", "d": "none"}


# --------------------------------------------------------------------------- keys


def store_keys(keys: RedisKeys) -> list[str]:
    """KEYS 1..19 of every store function (order fixed by the Lua library)."""
    return [
        keys.sample_data_prefix,
        keys.sample_meta,
        keys.group_data_prefix,
        keys.group_meta,
        keys.group_order,
        keys.counters,
        keys.sample_index,
        keys.records,
        keys.free_indices,
        keys.slot_prefix,
        keys.pool_counts("f"),
        keys.pool_counts("r"),
        keys.pool_counts("z"),
        keys.replay_fifo,
        keys.by_version,
        keys.stats_series,
        keys.version_series,
        keys.version_index,
        keys.store_meta,
    ]


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


# --------------------------------------------------------------------------- add_group


def _check_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise MalformedGroupError(f"{what} must be a non-empty string without whitespace of at most {MAX_ID_LEN} characters, got {value!r}")
    return value


def validate_group(group: Any) -> None:
    """Raise MalformedGroupError naming the first problem of ``group``."""
    if not isinstance(group, Group):
        raise MalformedGroupError(f"expected a Group, got {type(group).__name__}")
    gid = _check_id(group.group_id, "group_id")
    if not isinstance(group.task, PromptTask):
        raise MalformedGroupError(f"group {gid}: task must be a PromptTask, got {type(group.task).__name__}")
    _check_id(group.task.task_id, f"group {gid}: task.task_id")
    bad_task = check_task_fields(group.task)
    if bad_task is not None:
        raise MalformedGroupError(f"group {gid}: task field {bad_task} has the wrong type ({type(getattr(group.task, bad_task)).__name__})")
    if not isinstance(group.samples, list) or not group.samples:
        raise MalformedGroupError(f"group {gid}: samples must be a non-empty list")
    if len(group.samples) > MAX_GROUP_SIZE:
        raise MalformedGroupError(f"group {gid}: {len(group.samples)} samples, at most {MAX_GROUP_SIZE} allowed")
    seen: set[str] = set()
    for i, s in enumerate(group.samples):
        where = f"group {gid}: samples[{i}]"
        if not isinstance(s, Sample):
            raise MalformedGroupError(f"{where} is a {type(s).__name__}, not a Sample")
        sid = _check_id(s.sample_id, f"{where}.sample_id")
        if sid in seen:
            raise MalformedGroupError(f"group {gid}: sample id {sid} appears twice")
        seen.add(sid)
        if s.group_id != gid:
            raise MalformedGroupError(f"{where}: group_id {s.group_id!r} differs from the group's {gid!r}")
        if s.task_id != group.task.task_id:
            raise MalformedGroupError(f"{where}: task_id {s.task_id!r} differs from the task's {group.task.task_id!r}")
        if isinstance(s.reward, bool) or not isinstance(s.reward, (int, float)) or not math.isfinite(s.reward):
            raise MalformedGroupError(f"{where}: reward must be a finite number, got {s.reward!r}")
        if isinstance(s.policy_version, bool) or not isinstance(s.policy_version, int) or s.policy_version < 0:
            raise MalformedGroupError(f"{where}: policy_version must be an integer >= 0, got {s.policy_version!r}")
        for name in ("prompt_token_ids", "response_token_ids", "sampler_logprobs"):
            arr = getattr(s, name)
            if not isinstance(arr, np.ndarray) or arr.ndim != 1:
                raise MalformedGroupError(f"{where}: {name} must be a 1-D numpy array, got {type(arr).__name__}")
        if s.sampler_logprobs.shape[0] != s.response_token_ids.shape[0]:
            raise MalformedGroupError(
                f"{where}: {s.sampler_logprobs.shape[0]} sampler_logprobs for {s.response_token_ids.shape[0]} response tokens"
            )
        bad_field = check_sample_fields(s)
        if bad_field is not None:
            raise MalformedGroupError(f"{where}: field {bad_field} has the wrong type ({type(getattr(s, bad_field)).__name__})")


@dataclass(slots=True)
class AddGroupCall:
    """One ``add_group``: MSETNX of the payload keys, then FCALL, in one MULTI/EXEC."""

    group_id: str
    payloads: dict[str, bytes]
    keys: list[str]
    args: list[Any]


def add_group_call(group: Group, cfg: RethinkerConfig, keys: RedisKeys, fixed_keys: list[str]) -> AddGroupCall:
    """Validate and encode a group (raises MalformedGroupError before anything is sent)."""
    validate_group(group)
    try:
        header = encode(dataclasses.replace(group, samples=[]))
        datas = [encode_sample(s) for s in group.samples]
    except CodecError as exc:
        raise MalformedGroupError(f"group {group.group_id}: {exc}") from None
    grpo, ssr, buf = cfg.algorithm.grpo, cfg.algorithm.ssr, cfg.buffer
    category = group.task.category or group.samples[0].category
    source = group.task.source or group.samples[0].source
    if not isinstance(category, str) or not isinstance(source, str):
        raise MalformedGroupError(f"group {group.group_id}: category and source must be strings")
    gver = min(s.policy_version for s in group.samples)
    gkey = keys.group_data(group.group_id)
    payloads = {gkey: header}
    klist = fixed_keys + [gkey]
    args: list[Any] = [
        group.group_id, len(group.samples), int(grpo.std_normalize), repr(float(grpo.adv_eps)),
        repr(float(ssr.alpha)), ssr.capacity, repr(float(buf.series_interval_s)), buf.stats_window,
        category, source, gver,
    ]
    for s, data in zip(group.samples, datas):
        skey = keys.sample_data(s.sample_id)
        payloads[skey] = data
        klist.append(skey)
        args += [s.sample_id, repr(float(s.reward)), s.policy_version, int(bool(s.correct))]
    return AddGroupCall(group.group_id, payloads, klist, args)


def parse_add_group(group_id: str, reply: Sequence[Any]) -> AddGroupResult:
    return AddGroupResult(
        group_id=group_id, stored=int(reply[0]) == 1, n_effective=int(reply[1]),
        advantages=[float(_s(a)) for a in reply[2:]],
    )


# --------------------------------------------------------------------------- sample


def mix_seed(seed: int) -> int:
    """A 31-bit seed for Redis' Lua PRNG (a 48-bit LCG) whose streams for nearby seeds are unrelated."""
    return int.from_bytes(hashlib.blake2b(str(int(seed)).encode(), digest_size=4).digest(), "little") & 0x7FFFFFFF


def sample_args(
    n: int, mode: str, policy_version: int, seed: int, cfg: RethinkerConfig
) -> list[Any]:
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_SAMPLE_N:
        raise BadArgumentError(f"n must be an integer in [0, {MAX_SAMPLE_N}], got {n!r}")
    if mode not in MODES:
        raise BadArgumentError(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(policy_version, bool) or not isinstance(policy_version, int) or policy_version < 0:
        raise BadArgumentError(f"policy_version must be an integer >= 0, got {policy_version!r}")
    ssr, buf = cfg.algorithm.ssr, cfg.buffer
    return [
        n, mode, policy_version, staleness_bound(cfg), ssr.reuse_cap, ssr.replay_capacity,
        repr(float(ssr.replay_eps)), mix_seed(seed), buf.request_ttl_s, repr(float(buf.series_interval_s)), buf.stats_window,
        ssr.replay_max_age,
    ]


def unpack_batch(reply: Sequence[Any]) -> tuple[list[Any], list[Any], list[Any]]:
    """(header, draws, items) of a ``rtk_sample`` reply."""
    packed = msgpack.unpackb(reply[1], raw=False) if reply[1] else [[], []]
    draws, items = (packed + [[], []])[:2] if isinstance(packed, list) else ([], [])
    return list(reply[0]), draws or [], items or []


def batch_ids(items: Sequence[Any]) -> tuple[list[str], list[str]]:
    """(distinct sample ids, distinct group ids) of a batch's items (idx, sid, adv, ver, gid)."""
    return [str(x) for x in items[1::5]], list(dict.fromkeys(str(x) for x in items[4::5]))


class TaskCache:
    """LRU of the tasks of stored groups, by group id (a group's task never changes while it is
    stored, so cached tasks spare fetching and decoding their images again)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._d: "OrderedDict[str, PromptTask]" = OrderedDict()

    def get(self, gid: str) -> PromptTask | None:
        t = self._d.get(gid)
        if t is not None:
            self._d.move_to_end(gid)
        return t

    def put(self, gid: str, task: PromptTask) -> None:
        if self.size <= 0:
            return
        self._d[gid] = task
        self._d.move_to_end(gid)
        while len(self._d) > self.size:
            self._d.popitem(last=False)

    def clear(self) -> None:
        self._d.clear()


def parse_batch(
    unpacked: tuple[list[Any], list[Any], list[Any]], datas: Sequence[bytes | None], tasks_by_gid: dict[str, PromptTask], *,
    mode: str, policy_version: int, request_id: str,
) -> SampledBatch:
    header, draws, items = unpacked
    base: dict[str, tuple[dict[str, Any], float, int]] = {}
    for k, data in enumerate(datas):
        if data is None:  # evicted between the draw and the fetch
            continue
        i = 5 * k
        base[items[i]] = (sample_kwargs(data), float(items[i + 2]), int(items[i + 3]))
    samples: list[Sample] = []
    replayed: list[bool] = []
    tasks: dict[str, PromptTask] = {}
    for i in range(0, len(draws), 3):
        got = base.get(draws[i])
        if got is None:
            continue
        kw, adv, ver = got
        s = Sample(**{**kw, "advantage": adv, "policy_version": ver, "times_sampled": int(draws[i + 2])})
        samples.append(s)
        replayed.append(draws[i + 1] == "r")
        task = tasks_by_gid.get(s.group_id)
        if task is not None:
            tasks[s.task_id] = task
    return SampledBatch(
        samples=samples, replayed=replayed, tasks=tasks, n_fresh=int(header[0]), n_replay=int(header[1]),
        n_effective_available=int(header[2]), n_replay_available=int(header[3]), n_zero_available=int(header[4]),
        mode=mode, policy_version=policy_version, request_id=request_id,
    )


# --------------------------------------------------------------------------- reads


def _sample_from(data: bytes, meta: Sequence[Any]) -> tuple[Sample, str, str]:
    adv, ver, ts, pool, gid = meta
    kw = sample_kwargs(data)
    kw.update(advantage=float(_s(adv)), policy_version=int(ver), times_sampled=int(ts))
    return Sample(**kw), _s(pool), _s(gid)


def parse_sample_record(meta: Sequence[Any], data: bytes | None) -> SampleRecord | None:
    if not meta or data is None:
        return None
    s, pool, gid = _sample_from(data, meta)
    return SampleRecord(sample=s, pool=POOL_NAMES.get(pool, pool), group_id=gid)


def group_sample_ids(meta: Sequence[Any]) -> list[str]:
    return [_s(meta[i]) for i in range(2, len(meta), 6)]


def parse_group(meta: Sequence[Any], head: bytes | None, datas: Sequence[bytes | None]) -> tuple[Group, dict[str, str]] | None:
    """(group with its samples, sample_id -> pool name) or None."""
    if not meta or head is None:
        return None
    group = decode(head, Group)
    samples, pools = [], {}
    for k, data in enumerate(datas):
        if data is None:
            continue
        i = 2 + 6 * k
        s, pool, _ = _sample_from(data, meta[i + 1 : i + 6])
        samples.append(s)
        pools[s.sample_id] = POOL_NAMES.get(pool, pool)
    return dataclasses.replace(group, samples=samples), pools


def parse_sizes(reply: Sequence[Any]) -> StoreSizes:
    f, r, z, stored, groups = (int(x) for x in reply)
    return StoreSizes(fresh=f, replay=r, zero=z, stored=stored, groups=groups)


# --------------------------------------------------------------------------- queue


def publish_call(keys: RedisKeys, tasks: Sequence[PromptTask], max_inflight: int, force: bool) -> tuple[list[str], list[Any]]:
    if not isinstance(tasks, (list, tuple)):
        raise BadArgumentError(f"tasks must be a list of PromptTask, got {type(tasks).__name__}")
    epochs: dict[int, int] = {}
    body: list[Any] = []
    for i, t in enumerate(tasks):
        if not isinstance(t, PromptTask):
            raise BadArgumentError(f"tasks[{i}] is a {type(t).__name__}, not a PromptTask")
        for name in ("task_id", "prompt_id"):
            v = getattr(t, name)
            if not isinstance(v, str) or not _ID_RE.match(v):
                raise BadArgumentError(f"tasks[{i}].{name} must be a non-empty string without whitespace, got {v!r}")
        if isinstance(t.epoch, bool) or not isinstance(t.epoch, int):
            raise BadArgumentError(f"tasks[{i}].epoch must be an integer, got {t.epoch!r}")
        try:
            payload = encode(t)
        except CodecError as exc:
            raise BadArgumentError(f"tasks[{i}]: {exc}") from None
        idx = epochs.setdefault(t.epoch, len(epochs) + 2)
        body += [idx, t.prompt_id, t.task_id, payload]
    klist = [keys.task_stream] + [keys.task_published_in(e) for e in epochs]
    args = [keys.task_group, max_inflight, int(bool(force)), len(tasks)] + body
    return klist, args


def parse_publish(reply: Sequence[Any]) -> PublishResult:
    return PublishResult(
        published=int(reply[0]), duplicates=[_s(x) for x in reply[1]], deferred=[_s(x) for x in reply[2]]
    )


def reclaimable(pending: Sequence[dict[str, Any]], consumer: str, count: int) -> dict[str, int]:
    """Entry id -> delivery count after a reclaim, for idle entries held by other consumers."""
    out: dict[str, int] = {}
    for row in pending:
        if _s(row["consumer"]) != consumer and len(out) < count:
            out[_s(row["message_id"])] = int(row["times_delivered"]) + 1
    return out


def own_pending(pending: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Entry id -> delivery count after a reclaim, for a consumer's own pending entries."""
    return {_s(row["message_id"]): int(row["times_delivered"]) + 1 for row in pending}


def parse_entries(entries: Sequence[Any], pel_counts: dict[str, int] | None = None) -> tuple[list[ClaimedTask], list[str]]:
    """Stream entries -> claimed tasks, plus the ids of entries that do not decode (to be acked)."""
    out, garbage = [], []
    for entry in entries or []:
        if entry is None:
            continue
        eid_raw, fields = entry
        eid = _s(eid_raw)
        if not fields:
            garbage.append(eid)
            continue
        f = {_s(k): v for k, v in (fields.items() if isinstance(fields, dict) else zip(fields[::2], fields[1::2]))}
        try:
            task = decode(f["d"], PromptTask)
            redeliveries = int(_s(f.get("r", b"0")))
        except (CodecError, KeyError, ValueError):
            garbage.append(eid)
            continue
        pel = (pel_counts or {}).get(eid, 1)
        out.append(ClaimedTask(entry_id=eid, task=task, deliveries=redeliveries + pel))
    return out, garbage


# --------------------------------------------------------------------------- registry and versions


def server_info_json(server_id: str, info: dict[str, Any]) -> str:
    if not isinstance(server_id, str) or not _ID_RE.match(server_id):
        raise BadArgumentError(f"server_id must be a non-empty string without whitespace, got {server_id!r}")
    if not isinstance(info, dict):
        raise BadArgumentError(f"info must be a dict, got {type(info).__name__}")
    try:
        return json.dumps(info, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BadArgumentError(f"info of {server_id} is not JSON-serialisable: {exc}") from None


def parse_live(reply: Sequence[Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for i in range(0, len(reply), 3):
        try:
            out[_s(reply[i])] = json.loads(_s(reply[i + 1]))
        except ValueError:
            out[_s(reply[i])] = {}
    return out


_PV_FIELDS = ("version", "step", "num_bytes", "published_at")


def policy_version_mapping(pv: PolicyVersion) -> dict[str, str]:
    if not isinstance(pv, PolicyVersion):
        raise BadArgumentError(f"expected a PolicyVersion, got {type(pv).__name__}")
    if isinstance(pv.version, bool) or not isinstance(pv.version, int) or pv.version < 0:
        raise BadArgumentError(f"PolicyVersion.version must be an integer >= 0, got {pv.version!r}")
    return {k: json.dumps(getattr(pv, k)) for k in _PV_FIELDS}


def parse_policy_version(raw: dict[Any, Any]) -> PolicyVersion | None:
    if not raw:
        return None
    d = {_s(k): json.loads(_s(v)) for k, v in raw.items() if _s(k) in _PV_FIELDS}
    if "version" not in d:
        return None
    return PolicyVersion(
        version=int(d["version"]), step=int(d.get("step", 0)),
        num_bytes=int(d.get("num_bytes", 0)), published_at=float(d.get("published_at", 0.0)),
    )


def policy_event(pv: PolicyVersion) -> str:
    return json.dumps({"type": "version", "version": pv.version, "step": pv.step, "source": "buffer"})
