"""Versioned weight broadcast from the learner: gather full weights (ZeRO-3 aware) and send them.

Every rank calls ``WeightSync.sync(version, step)`` (the gather is collective under ZeRO-3); rank 0
streams the tensors through the ``weight_transport`` sender to every live registered rollout
server, then publishes the ``PolicyVersion`` through the buffer client (so rollout servers and the
buffer's staleness accounting see it).  ``publish_checkpoint`` records an exported HF folder for late
joiners.  A failed round (dead or hung receiver) is reported, never raised.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterator, Protocol

from common.config import RethinkerConfig
from common.interfaces import VersionPublisher, WeightSender
from common.logging import get_logger
from common.schemas import PolicyVersion
from weight_transport import SyncReport, make_sender

if TYPE_CHECKING:
    import torch

    from common.schemas.weights import TensorSpec

log = get_logger("learner.sync")


class ParameterSource(Protocol):
    """What the sync needs from the learner's policy (``learner.policy_model.PolicyModel``)."""

    rank: int

    def manifest(self) -> list[TensorSpec]: ...

    def full_parameters(self, chunk_bytes: int = ...) -> Iterator[torch.Tensor]: ...


class WeightSync:
    def __init__(
        self,
        cfg: RethinkerConfig,
        policy: ParameterSource,
        *,
        buffer: VersionPublisher | None = None,
        sender: WeightSender | None = None,
    ) -> None:
        self.cfg = cfg
        self.policy = policy
        self.buffer = buffer
        self.sender = sender if sender is not None or policy.rank != 0 else make_sender(cfg)
        self.last: SyncReport | None = None
        self.failures = 0

    def sync(self, version: int, step: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        specs = self.policy.manifest()
        chunk = int(self.cfg.learner.weight_sync.bucket_mb * 1024 * 1024)
        tensors = self.policy.full_parameters(chunk_bytes=chunk)
        if self.policy.rank != 0:
            for _ in tensors:
                pass
            return {"sync_s": time.perf_counter() - t0}
        if self.buffer is not None and hasattr(self.buffer, "reserve_policy_version"):
            try:  # the number is taken before any receiver can hold it
                self.buffer.reserve_policy_version(version)
            except Exception as exc:  # noqa: BLE001 - Redis blip: the publish below records it too
                log.warning("policy_version_reserve_failed", version=version, error=str(exc))
        rep = self.sender.sync(specs, tensors, version=version, step=step)
        self.last = rep
        if not rep.ok:
            self.failures += 1
            log.warning("weight_sync_failed", version=version, failed=rep.failed, error=rep.error)
        if self.buffer is not None:
            try:
                self.buffer.publish_policy_version(
                    PolicyVersion(version=version, step=step, num_bytes=rep.num_bytes)
                )
            except Exception as exc:  # noqa: BLE001 - Redis blip: the next sync publishes again
                log.warning("policy_version_publish_failed", error=str(exc))
        return {
            "sync_s": time.perf_counter() - t0,
            "sync_ok": 1.0 if rep.ok else 0.0,
            "sync_members": float(len(rep.joined)),
            "sync_failed": float(len(rep.failed)),
            "sync_bytes": float(rep.num_bytes),
            "sync_transfer_s": rep.transfer_s,
        }

    def member_versions(self) -> dict[str, int]:
        """Rank 0: the weight version each live registered rollout server reports it holds."""
        if self.sender is None or not hasattr(self.sender, "members"):
            return {}
        return {sid: int(rec.loaded_version) for sid, rec in self.sender.members().items()}

    def publish_checkpoint(self, path: str, *, version: int, step: int) -> None:
        if self.policy.rank != 0:
            return
        self.sender.publish_checkpoint(str(path), version=version, step=step)

    def close(self) -> None:
        if self.sender is not None:
            self.sender.close()
