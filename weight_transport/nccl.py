"""nccl backend: GPU-to-GPU broadcast for learner and rollout servers on different GPUs or nodes.

Same protocol as gloo (rendezvous through the round's private TCPStore prefix), but the round's
group is a ``ProcessGroupNCCL`` and the buckets are CUDA tensors on each side's device.  NCCL cannot
put two ranks on one GPU: use ``cuda_ipc`` when the learner and a rollout server share a GPU.

Timeouts: NCCL work is asynchronous and its watchdog may tear the whole process down on a timeout
(TORCH_NCCL_ASYNC_ERROR_HANDLING).  The round's group therefore gets a watchdog timeout well above
``timeout_s`` and every wait is polled against our own deadline; on expiry the communicator is
aborted (``pg.abort()``), the round fails, and the learner carries on.

Not exercised by the CPU test suite (no GPU there); see docs/weight-sync.md.
"""

from __future__ import annotations

import datetime
import time
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from common.schemas.weights import WeightSyncError
from weight_transport.protocol import Backend, Channel

if TYPE_CHECKING:
    from torch.types import Device


def _resolve_device(device: Device) -> torch.device:
    if device is None:
        if not torch.cuda.is_available():
            raise WeightSyncError("the nccl/cuda_ipc backends need a CUDA device")
        return torch.device("cuda", torch.cuda.current_device())
    dev = torch.device(device)
    if dev.type != "cuda":
        raise WeightSyncError(f"device {device!r} is not a CUDA device")
    return dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())


class NcclChannel(Channel):
    def __init__(self, pg: dist.ProcessGroup, device: torch.device, timeout_s: float) -> None:
        self.pg = pg
        self.device = device
        self.timeout_s = timeout_s

    def _wait(self, work: dist.Work, what: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not work.is_completed():
            if time.monotonic() > deadline:
                raise WeightSyncError(f"nccl {what} timed out after {self.timeout_s:.1f}s")
            time.sleep(0.0005)
        work.wait()

    def send(self, flat: torch.Tensor, index: int) -> None:
        self._wait(self.pg.broadcast(flat, 0), f"broadcast of bucket {index}")

    def recv(self, flat: torch.Tensor, index: int) -> None:
        self._wait(self.pg.broadcast(flat, 0), f"broadcast of bucket {index}")

    def confirm(self, status: int) -> int:
        t = torch.tensor([int(status)], dtype=torch.int32, device=self.device)
        opts = dist.AllreduceOptions()
        opts.reduceOp = dist.ReduceOp.SUM
        self._wait(self.pg.allreduce([t], opts), "confirmation")
        torch.cuda.current_stream(self.device).synchronize()
        return int(t.item())

    def close(self) -> None:
        pg, self.pg = self.pg, None
        if pg is not None:
            try:
                pg.abort()  # round-scoped communicator: abort is the quick, never-hanging teardown
            except Exception:  # noqa: BLE001
                pass


class NcclBackend(Backend):
    name = "nccl"

    def __init__(self, device: Device = None) -> None:
        self._device_arg = device
        self._device: torch.device | None = None

    def device(self) -> torch.device:
        if self._device is None:
            self._device = _resolve_device(self._device_arg)
        return self._device

    def open(self, store: dist.Store, rank: int, world: int, timeout_s: float) -> Channel:
        dev = self.device()
        torch.cuda.set_device(dev)  # per thread: the receiver thread binds its own device
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = datetime.timedelta(seconds=timeout_s * 4 + 60)  # watchdog: far above our deadline
        pg = dist.ProcessGroupNCCL(store, rank, world, opts)
        return NcclChannel(pg, dev, timeout_s)
