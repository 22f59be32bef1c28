"""Worker-side receive: an engine's own worker processes receive the round; this process coordinates.

With vLLM the model lives in separate worker processes (one per tensor-parallel rank).  Receiving a
round in the rollout server and handing the tensors to the workers through an RPC would serialize
every tensor once more, so the workers take part in the round themselves:

- each worker is a member of its own (``WorkerMember``: id ``<server_id>/w<rank>``, its GPU's uuid
  for ``cuda_ipc``) and holds a ``RoundParticipant`` (protocol.py) built from ``make_backend``;
- ``WorkerRoundReceiver`` (this module), in the rollout server, keeps the workers' join records fresh
  (token proof, heartbeat, ``loaded_version``), watches for rounds like every receiver, and when a
  round invites its workers calls ``join_workers(desc, invited, apply)``: the engine starts the round
  in every worker at once (vLLM: ``collective_rpc`` with the descriptor as a small JSON string),
  waits for their ``JoinOutcome`` list, loads the weights (``apply``), bumps the version and resets
  the prefix cache; only then does ``loaded_version`` move;
- the published checkpoint (cold start, resync) goes to ``on_checkpoint(path, version)``: the
  workers read the files themselves.

Tensor-parallel ranks must hold one weight set: a round that invites only some of this server's
workers is received and dropped (``apply=False``, the sender sees every invited member take part),
and a round is loaded only when every worker received it.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Callable, Sequence

import torch.distributed as dist

from common.config import RethinkerConfig, reveal
from common.interfaces import WeightsArg
from common.schemas.weights import JoinOutcome, JoinRecord, RoundDescriptor, WeightSyncError, WorkerMember
from weight_transport.base import token_proof
from weight_transport.protocol import Backend, Channel, RoundReceiver, log, redis_now

if TYPE_CHECKING:
    from redis import Redis

BACKENDS = ("gloo", "nccl", "cuda_ipc")


JoinWorkers = Callable[[RoundDescriptor, list[str], bool], Sequence[JoinOutcome]]
"""``join_workers(desc, invited, apply) -> outcomes``: take part in ``desc`` in every worker (those not
in ``invited`` return ``joined=False`` at once); with ``apply`` load the weights when every worker
received them, else drop them.  One ``JoinOutcome`` per worker; ``ok`` means received (and loaded
when ``apply``)."""

OnCheckpoint = Callable[[str, int], None]
"""``on_checkpoint(path, version)``: load a published safetensors folder in every worker."""


class _Coordinator(Backend):
    """The backend name of the workers' rounds; this process moves no bytes itself."""

    def __init__(self, name: str) -> None:
        self.name = name

    def open(self, store: dist.Store, rank: int, world: int, timeout_s: float) -> Channel:
        raise WeightSyncError("the workers receive this round; the coordinating process has no channel")


def _no_weights(weights: WeightsArg, version: int) -> None:  # pragma: no cover - never called
    raise WeightSyncError("worker-side receive: weights never reach the coordinating process")


class WorkerRoundReceiver(RoundReceiver):
    """A ``WeightReceiver`` whose rounds are received by the engine's workers (see the module docstring).

    ``loaded_version``, ``wait_for_version``, ``last_error``, ``start``/``stop`` and
    ``load_latest_checkpoint`` behave as for the other receivers.  ``last_outcomes`` holds the
    workers' outcomes of the last round.
    """

    def __init__(
        self,
        cfg: RethinkerConfig,
        *,
        server_id: str,
        members: Sequence[WorkerMember],
        join_workers: JoinWorkers,
        on_checkpoint: OnCheckpoint,
        initial_version: int = -1,
        redis: Redis | None = None,
        backend: str | None = None,
    ) -> None:
        name = backend or cfg.learner.weight_sync.backend
        if name not in BACKENDS:
            raise ValueError(f"learner.weight_sync.backend: unknown backend {name!r} ({', '.join(BACKENDS)})")
        if not members:
            raise ValueError("members: at least one worker")
        ids = [m.member_id for m in members]
        if len(set(ids)) != len(ids) or not all(ids):
            raise ValueError(f"members: ids must be distinct and non-empty, got {ids}")
        super().__init__(
            cfg, _Coordinator(name), server_id=server_id, on_weights=_no_weights, initial_version=initial_version, redis=redis
        )
        self.members = list(members)
        self.join_workers = join_workers
        self.on_checkpoint = on_checkpoint
        self.last_outcomes: list[JoinOutcome] = []

    # ---- membership: one record per worker, kept fresh by this process
    def _member_ids(self) -> list[str]:
        return [m.member_id for m in self.members]

    def _invited(self, desc: RoundDescriptor) -> bool:
        return any(m in desc.members for m in self._member_ids())

    def _records(self) -> list[JoinRecord]:
        now = redis_now(self.r)
        return [
            JoinRecord(
                server_id=m.member_id,
                backend=self._backend.name,
                proof=token_proof(reveal(self.wcfg.token), m.member_id),
                host=m.host or socket.gethostname(),
                pid=m.pid or os.getpid(),
                heartbeat=now,
                loaded_version=self.loaded_version,
                last_round=self._last_round,
                last_error=self._last_error[:300],
                gpu_uuid=m.gpu_uuid,
                started_at=self._started_at,
            )
            for m in self.members
        ]

    # ---- checkpoints: the workers read the files
    def load_latest_checkpoint(self) -> int | None:
        ck = self.published_checkpoint()
        if ck is None or ck[1] <= self.loaded_version:
            return None
        path, version = ck
        self.on_checkpoint(path, version)
        self._version.set(version)
        log.info("checkpoint_loaded", server_id=self.server_id, version=version, path=path, where="workers")
        self._heartbeat()
        return version

    # ---- one round
    def _receive_round(self, desc: RoundDescriptor) -> dict[str, int] | None:
        """The workers take part in the round (``join_workers``); the books are kept by
        ``RoundReceiver._join``.  A round some worker missed or failed raises."""
        ids = self._member_ids()
        invited = [m for m in ids if m in desc.members]
        apply = len(invited) == len(ids)
        outcomes = [o if isinstance(o, JoinOutcome) else JoinOutcome.from_dict(o) for o in self.join_workers(desc, invited, apply)]
        self.last_outcomes = outcomes
        by_id = {o.member_id: o for o in outcomes}
        if not any(o.joined for o in outcomes):
            log.info("sync_round_missed", server_id=self.server_id, round_id=desc.round_id)
            return None
        bad = [m for m in ids if m not in by_id or not (by_id[m].joined and by_id[m].ok)]
        if not apply:
            raise WeightSyncError(f"only {invited} of {ids} invited: received and dropped")
        if bad:
            errors = "; ".join(f"{m}: {by_id[m].error if m in by_id else 'no outcome'}" for m in bad)
            raise WeightSyncError(f"workers without the round: {errors}")
        return {"workers": len(ids)}
