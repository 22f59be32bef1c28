"""Weight-sync records that cross process boundaries: the manifest, round descriptors, join records
and outcomes, and the sender's report.

``RoundDescriptor`` and ``JoinRecord`` are JSON in Redis (``RedisKeys.sync_round`` /
``sync_members``), read by the learner's sender and every rollout receiver; ``JoinOutcome`` and
``WorkerMember`` travel between a rollout server and its engine's worker processes; ``SyncReport`` is
what ``WeightSender.sync`` returns to the learner.  The transport that uses them is the
``weight_transport`` package (docs/weight-sync.md).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch

from common.errors import CommonError

class WeightSyncError(CommonError, RuntimeError):
    """A round that could not complete (timeout, lost peer, manifest mismatch, bad token)."""


# --------------------------------------------------------------------------- manifest

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


def dtype_name(dtype: torch.dtype) -> str:
    for name, dt in _DTYPES.items():
        if dt == dtype:
            return name
    raise WeightSyncError(f"dtype {dtype} cannot be sent")


def dtype_of(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise WeightSyncError(f"unknown dtype {name!r} in manifest") from None


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of the manifest."""

    name: str
    dtype: str  # a key of _DTYPES ("bfloat16", "float32", ...)
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return int(math.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.numel * dtype_of(self.dtype).itemsize

    @staticmethod
    def of(name: str, t: torch.Tensor) -> "TensorSpec":
        return TensorSpec(name, dtype_name(t.dtype), tuple(int(s) for s in t.shape))


def manifest_to_json(specs: Sequence[TensorSpec]) -> list[list[Any]]:
    return [[s.name, s.dtype, list(s.shape)] for s in specs]


def manifest_from_json(raw: Any) -> list[TensorSpec]:
    try:
        return [TensorSpec(str(n), str(d), tuple(int(x) for x in sh)) for n, d, sh in raw]
    except (TypeError, ValueError) as exc:
        raise WeightSyncError(f"malformed manifest: {exc}") from None


# --------------------------------------------------------------------------- records


@dataclass
class JoinRecord:
    """A receiver's entry in ``RedisKeys.sync_members`` (JSON)."""

    server_id: str
    backend: str
    proof: str
    host: str = ""
    pid: int = 0
    heartbeat: float = 0.0  # Redis server time (seconds) of the last refresh
    loaded_version: int = -1
    last_round: str = ""
    last_error: str = ""
    gpu_uuid: str = ""  # cuda_ipc: members must share the sender's GPU
    started_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(raw: bytes | str) -> "JoinRecord":
        data = json.loads(raw)
        known = {k: data[k] for k in JoinRecord.__dataclass_fields__ if k in data}
        return JoinRecord(**known)


@dataclass
class RoundDescriptor:
    """Field ``round`` of ``RedisKeys.sync_round`` (JSON): everything a receiver needs to join."""

    round_id: str
    version: int
    step: int
    backend: str
    master_addr: str
    master_port: int
    members: dict[str, int]  # invited server_id -> provisional rank (final ranks come via the store)
    manifest: list[list[Any]]
    bucket_bytes: int
    created_at: float  # Redis server time
    join_timeout_s: float
    timeout_s: float
    extra: dict[str, Any] = field(default_factory=dict)  # backend specifics (cuda_ipc: gpu uuid)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(raw: bytes | str) -> "RoundDescriptor":
        try:
            data = json.loads(raw)
            return RoundDescriptor(**data)
        except (TypeError, ValueError) as exc:
            raise WeightSyncError(f"malformed round descriptor: {exc}") from None


@dataclass
class SyncReport:
    """What one ``WeightSender.sync`` did."""

    version: int
    round_id: str | None
    ok: bool  # every joined member confirmed the full transfer (True when there was nobody to send to)
    invited: list[str] = field(default_factory=list)
    joined: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # invited but did not join, or in a failed round
    num_bytes: int = 0
    num_buckets: int = 0
    join_s: float = 0.0
    transfer_s: float = 0.0
    total_s: float = 0.0
    error: str = ""


@dataclass
class JoinOutcome:
    """What one participant did in one round (JSON-able: it crosses process boundaries)."""

    member_id: str
    round_id: str
    version: int
    joined: bool = False  # was given a rank (False: not invited, or too late)
    ok: bool = False  # every bucket received, the round confirmed, and ``deliver`` returned
    tensors: int = 0
    num_bytes: int = 0
    seconds: float = 0.0
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "JoinOutcome":
        return JoinOutcome(**{k: data[k] for k in JoinOutcome.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class WorkerMember:
    """One worker that receives rounds itself (what its ``weight_sync_init`` returned)."""

    member_id: str
    gpu_uuid: str = ""  # cuda_ipc: the worker's GPU (the sender invites only members on its GPU)
    pid: int = 0
    host: str = ""

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "WorkerMember":
        return WorkerMember(
            member_id=str(data["member_id"]),
            gpu_uuid=str(data.get("gpu_uuid", "")),
            pid=int(data.get("pid", 0)),
            host=str(data.get("host", "")),
        )
