"""cuda_ipc backend: learner and rollout servers on the SAME GPU exchange CUDA IPC handles.

No bytes cross a wire: for each bucket the sender fills a CUDA buffer, exports its IPC handle
(``torch.multiprocessing.reductions.reduce_tensor``) and writes it, msgpack-encoded (no pickle), under
the round's private store prefix; each receiver maps the buffer, copies it into its own memory and
acknowledges.  Only members whose join record names the sender's GPU (by UUID, so differing
CUDA_VISIBLE_DEVICES do not matter) are invited.

Not exercised by the CPU test suite (no GPU there); see docs/weight-sync.md.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import msgpack
import torch
import torch.distributed as dist

from common.schemas.weights import JoinRecord, WeightSyncError, dtype_name, dtype_of
from weight_transport.nccl import _resolve_device
from weight_transport.protocol import Backend, Channel

if TYPE_CHECKING:
    from torch.types import Device


def gpu_uuid(device: torch.device) -> str:
    return str(torch.cuda.get_device_properties(device).uuid)


def export_handle(t: torch.Tensor) -> bytes:
    """msgpack of the arguments of ``rebuild_cuda_tensor`` that are data (classes are implied)."""
    from torch.multiprocessing.reductions import reduce_tensor

    _fn, args = reduce_tensor(t)
    (_cls, size, stride, offset, _scls, dtype, _dev, handle, ssize, soff, _rg, rc_handle, rc_off, ev_handle, ev_sync) = args
    return msgpack.packb(
        [list(size), list(stride), int(offset), dtype_name(dtype), bytes(handle), int(ssize), int(soff),
         bytes(rc_handle), int(rc_off), bytes(ev_handle) if ev_handle is not None else None, bool(ev_sync)],
        use_bin_type=True,
    )


def import_handle(raw: bytes, device: torch.device) -> torch.Tensor:
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    size, stride, offset, dt, handle, ssize, soff, rc_handle, rc_off, ev_handle, ev_sync = msgpack.unpackb(raw, raw=False)
    return rebuild_cuda_tensor(
        torch.Tensor, torch.Size(size), tuple(stride), offset, torch.storage.TypedStorage, dtype_of(dt),
        device.index, handle, ssize, soff, False, rc_handle, rc_off, ev_handle, ev_sync,
    )


class IpcChannel(Channel):
    def __init__(self, store: dist.Store, rank: int, world: int, device: torch.device, timeout_s: float) -> None:
        self.store, self.rank, self.world, self.device, self.timeout_s = store, rank, world, device, timeout_s

    def _wait_count(self, key: str, n: int, what: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        while self.store.add(key, 0) < n:
            if time.monotonic() > deadline:
                raise WeightSyncError(f"cuda_ipc {what}: timed out after {self.timeout_s:.1f}s")
            time.sleep(0.0005)

    def send(self, flat: torch.Tensor, index: int) -> None:
        torch.cuda.current_stream(self.device).synchronize()
        self.store.set(f"b/{index}", export_handle(flat))
        self._wait_count(f"ack/{index}", self.world - 1, f"bucket {index}")  # keeps `flat` alive until copied

    def recv(self, flat: torch.Tensor, index: int) -> None:
        src = import_handle(self.store.get(f"b/{index}"), self.device)
        flat.copy_(src)
        torch.cuda.current_stream(self.device).synchronize()
        del src
        self.store.add(f"ack/{index}", 1)

    def confirm(self, status: int) -> int:
        if self.rank != 0:
            self.store.add("status", int(status))
            self.store.add("confirmed", 1)
            return int(status)
        self._wait_count("confirmed", self.world - 1, "confirmation")
        return self.store.add("status", 0)


class CudaIpcBackend(Backend):
    name = "cuda_ipc"

    def __init__(self, device: Device = None) -> None:
        self._device_arg = device
        self._device: torch.device | None = None

    def device(self) -> torch.device:
        if self._device is None:
            self._device = _resolve_device(self._device_arg)
        return self._device

    def open(self, store: dist.Store, rank: int, world: int, timeout_s: float) -> Channel:
        torch.cuda.set_device(self.device())
        return IpcChannel(store, rank, world, self.device(), timeout_s)

    def member_extra(self) -> dict[str, Any]:
        return {"gpu_uuid": gpu_uuid(self.device())}

    def admits(self, record: JoinRecord) -> bool:
        return record.gpu_uuid == gpu_uuid(self.device())

    def round_extra(self) -> dict[str, Any]:
        return {"gpu_uuid": gpu_uuid(self.device())}
