"""Learner -> rollout weight transport (one interface, one file per backend).

``make_sender(cfg)`` (learner rank 0) and ``make_receiver(cfg, server_id=..., on_weights=...)``
(rollout servers) build the backend named by ``cfg.learner.weight_sync.backend``: ``gloo`` (CPU/TCP),
``nccl`` (GPU, multi-node), ``cuda_ipc`` (learner and rollout on the same GPU).  The API is documented
in ``weight_transport/base.py`` and docs/weight-sync.md.

Engines whose model lives in worker processes (vLLM) receive in the workers: each worker holds a
``RoundParticipant`` on ``make_backend(name)`` and the server coordinates with
``WorkerRoundReceiver`` (``weight_transport/workers.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from common.config import RethinkerConfig
from common.interfaces import OnWeights, WeightReceiver, WeightSender
from common.schemas.weights import JoinRecord, RoundDescriptor, SyncReport, TensorSpec, WeightSyncError
from weight_transport.base import Bucket, plan_buckets, specs_of

if TYPE_CHECKING:
    from redis import Redis
    from torch.types import Device

    from weight_transport.protocol import Backend

__all__ = [
    "Bucket",
    "JoinRecord",
    "OnWeights",
    "RoundDescriptor",
    "SyncReport",
    "TensorSpec",
    "WeightReceiver",
    "WeightSender",
    "WeightSyncError",
    "make_receiver",
    "make_sender",
    "plan_buckets",
    "specs_of",
    "read_sync_state",
    "make_backend",
]


def make_sender(cfg: RethinkerConfig, *, redis: Redis | None = None, backend: str | None = None) -> WeightSender:
    """The learner's sender for ``cfg.learner.weight_sync.backend`` (or ``backend``): the round
    protocol over that backend's data path."""
    from weight_transport.protocol import RoundSender

    return RoundSender(cfg, make_backend(backend or cfg.learner.weight_sync.backend), redis=redis)


def make_backend(name: str, *, device: Device = None) -> Backend:
    """The data path of one backend (``protocol.Backend``), for a ``RoundParticipant`` in a worker.
    ``device``: where received tensors live for nccl/cuda_ipc (default: the current CUDA device)."""
    if name == "gloo":
        from weight_transport.gloo import GlooBackend

        return GlooBackend()
    if name == "nccl":
        from weight_transport.nccl import NcclBackend

        return NcclBackend(device)
    if name == "cuda_ipc":
        from weight_transport.cuda_ipc import CudaIpcBackend

        return CudaIpcBackend(device)
    raise ValueError(f"learner.weight_sync.backend: unknown backend {name!r} (gloo, nccl, cuda_ipc)")


def make_receiver(
    cfg: RethinkerConfig,
    *,
    server_id: str,
    on_weights: OnWeights,
    initial_version: int = -1,
    device: Device = None,
    redis: Redis | None = None,
    backend: str | None = None,
) -> WeightReceiver:
    """A rollout server's receiver; call ``.start()`` then read ``.loaded_version``; ``.stop()`` at exit.

    ``initial_version``: the version of the weights the engine already holds (0 for the base model;
    -1 = unknown, so any published checkpoint is loaded first).  ``device``: where received tensors
    live for nccl/cuda_ipc (default: the current CUDA device); ignored by gloo.
    """
    from weight_transport.protocol import RoundReceiver

    return RoundReceiver(
        cfg,
        make_backend(backend or cfg.learner.weight_sync.backend, device=device),
        server_id=server_id,
        on_weights=on_weights,
        initial_version=initial_version,
        redis=redis,
    )


def read_sync_state(cfg: RethinkerConfig, redis: Redis | None = None) -> dict[str, Any]:
    """The ``sync_round`` hash decoded: ``checkpoint`` {path, version, step}, current ``round``
    descriptor and ``last_result`` (the last round's report), plus ``version``: the version the last
    round carried (``last_result["version"]``).  The learner's published version itself is
    ``BufferClient.policy_version()``."""
    import json

    from common.redis_conn import sync_client
    from common.redis_keys import RedisKeys

    r = redis if redis is not None else sync_client(cfg.redis)
    raw = r.hgetall(RedisKeys(cfg.redis.namespace).sync_round)
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key = k.decode() if isinstance(k, bytes) else k
        out[key] = json.loads(v)
    if "last_result" in out:
        out["version"] = int(out["last_result"]["version"])
    return out
