"""gloo backend: weights travel over TCP between CPU processes (also works across hosts).

Each round builds its own ``ProcessGroupGloo`` from the round's private store prefix, so the global
``torch.distributed`` state of either side (DeepSpeed's group in the learner) is never touched and a
member that died in one round cannot wedge the next one.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

import torch.distributed as dist

from common.config import RethinkerConfig
from common.interfaces import OnWeights
from weight_transport.protocol import Backend, Channel, ProcessGroupChannel, RoundReceiver, RoundSender

if TYPE_CHECKING:
    from redis import Redis


class GlooBackend(Backend):
    name = "gloo"

    def open(self, store: dist.Store, rank: int, world: int, timeout_s: float) -> Channel:
        import torch

        pg = dist.ProcessGroupGloo(store, rank, world, datetime.timedelta(seconds=timeout_s))
        return ProcessGroupChannel(pg, torch.device("cpu"))


class GlooSender(RoundSender):
    def __init__(self, cfg: RethinkerConfig, *, redis: Redis | None = None) -> None:
        super().__init__(cfg, GlooBackend(), redis=redis)


class GlooReceiver(RoundReceiver):
    def __init__(
        self, cfg: RethinkerConfig, *, server_id: str, on_weights: OnWeights, initial_version: int = -1, redis: Redis | None = None
    ) -> None:
        super().__init__(
            cfg, GlooBackend(), server_id=server_id, on_weights=on_weights, initial_version=initial_version, redis=redis
        )
