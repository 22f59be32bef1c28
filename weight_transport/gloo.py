"""gloo backend: weights travel over TCP between CPU processes (also works across hosts).

Each round builds its own ``ProcessGroupGloo`` from the round's private store prefix, so the global
``torch.distributed`` state of either side (DeepSpeed's group in the learner) is never touched and a
member that died in one round cannot wedge the next one.
"""

from __future__ import annotations

import datetime

import torch.distributed as dist

from weight_transport.protocol import Backend, Channel, ProcessGroupChannel


class GlooBackend(Backend):
    name = "gloo"

    def open(self, store: dist.Store, rank: int, world: int, timeout_s: float) -> Channel:
        import torch

        pg = dist.ProcessGroupGloo(store, rank, world, datetime.timedelta(seconds=timeout_s))
        return ProcessGroupChannel(pg, torch.device("cpu"))
