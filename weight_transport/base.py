"""Weight transport: the public interface between the learner (sender) and the rollout servers (receivers).

One protocol, three backends (``gloo.py``, ``nccl.py``, ``cuda_ipc.py``); build them with
``weight_transport.make_sender`` / ``make_receiver``.  The full description, with a sequence
diagram, is docs/weight-sync.md.  In short:

Receiver side (a rollout server)::

    from weight_transport import make_receiver

    def on_weights(weights, version):          # called in the receiver's background thread
        state = dict(weights)                   # works for both staging modes (see below)
        engine.load_weights(state.items())      # names are HF state-dict names (model.state_dict())

    rx = make_receiver(cfg, server_id="rollout-0", on_weights=on_weights, initial_version=0)
    rx.start()          # registers (token proof + heartbeat), loads the latest checkpoint if newer, listens
    ...
    rx.loaded_version   # the version whose weights on_weights last accepted (-1 before any)
    rx.wait_for_version(v, timeout=30.0) -> bool
    rx.load_latest_checkpoint() -> int | None   # catch up from the published checkpoint now
    rx.stop()           # deregisters; safe to call twice

``on_weights(weights, version)``:
  - ``weights`` is a ``dict[str, torch.Tensor]`` with EVERY parameter when
    ``learner.weight_sync.staging == "full"`` (default): the round was received completely and checked
    before the callback runs, so a failed round never touches the engine.  With ``staging == "stream"``
    it is an iterator of ``(name, tensor)`` pairs that receives bucket after bucket while it is consumed
    (no full staging copy; if the round breaks mid-way the iterator raises ``WeightSyncError`` and the
    engine holds a partial update until the next round).  ``dict(weights)`` handles both.
  - tensors have the learner's dtypes and shapes; they live on CPU (gloo), or on the receiver's
    ``device`` (nccl, cuda_ipc).  They are valid until ``on_weights`` returns: the receiver reuses its
    CPU staging buffers for the next round, so copy what you keep (``param.copy_(t)`` as every
    engine's weight loading does; weights loaded from a checkpoint are fresh tensors).
  - names are the Hugging Face names of ``model.state_dict()`` / ``save_pretrained`` (tied weights
    appear once, under the name ``named_parameters()`` gives).
  - it runs in the receiver thread: make it thread-safe against generation (e.g. take the engine's
    lock, or ``asyncio.run_coroutine_threadsafe(...).result()`` into the server's loop).  If it raises,
    ``loaded_version`` does not change and the error is kept in ``last_error``.
  - the version of a round is authoritative: after a learner restart from an older checkpoint a round
    may carry a LOWER version than ``loaded_version``; it is loaded all the same.

Sender side (the learner's rank 0)::

    tx = make_sender(cfg)                   # cfg: RethinkerConfig
    report = tx.sync(specs, tensors, version=v, step=s)   # -> SyncReport
    tx.publish_checkpoint(path, version=v, step=s)        # late joiners load this first
    tx.close()

``specs`` is the manifest (``list[TensorSpec]``, known up front, e.g. from ZeRO-3's ``ds_shape``) and
``tensors`` yields the full tensors in the same order (it may gather lazily).  ``sync`` ALWAYS consumes
``tensors`` to the end, even when there is no member or the round fails, so that ZeRO-3 ranks that
gather collectively alongside never deadlock.  It never raises for a receiver's fault and never blocks
longer than about ``join_timeout_s + (buckets + 1) * timeout_s``.

Protocol of one round (all keys from ``common.redis_keys.RedisKeys``):
 1. Members: records of ``sync_members`` whose heartbeat is fresh (``member_ttl_s``, Redis clock), whose
    backend matches and whose token proof (HMAC-SHA256(token, server_id)) is right; members that
    failed recent rounds sit out an exponential number of rounds (``max_failure_backoff``).
 2. The sender starts a TCPStore on ``master_addr`` at a fresh port, writes the round descriptor
    (``RoundDescriptor``) into the ``sync_round`` hash (field ``round``) and publishes
    ``{"type": "sync_round", ...}`` on ``policy_channel``.
 3. Invited receivers dial the store and write ``joined/<server_id>`` under a prefix that only a
    holder of the token can compute (HMAC(token, round_id)); the sender waits ``join_timeout_s``, then
    writes the final rank map (only those who joined) under ``final``.
 4. Sender and ranked receivers build a fresh process group for this round only (backend-specific),
    the sender streams the buckets (``plan_buckets``: flattened per dtype, ``bucket_mb`` each), and a
    final all-reduce of a status flag confirms that everyone received everything.
 5. The sender writes the round's report (``last_result``, with its version) into ``sync_round``
    (the learner then publishes the ``PolicyVersion`` through the buffer client); receivers hand the
    weights to ``on_weights`` and report ``loaded_version`` in their join record.  A failure (timeout, reset connection) ends
    the round for everyone; nothing is retried within the round: the next round is built afresh.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch

from common.schemas.weights import TensorSpec, dtype_of


# --------------------------------------------------------------------------- buckets


@dataclass(frozen=True)
class Bucket:
    """Tensors sent as one flat buffer of one dtype; ``indices`` point into the manifest."""

    dtype: str
    indices: tuple[int, ...]
    numel: int

    @property
    def nbytes(self) -> int:
        return self.numel * dtype_of(self.dtype).itemsize


def plan_buckets(specs: Sequence[TensorSpec], bucket_bytes: int) -> list[Bucket]:
    """Deterministic bucketing shared by sender and receivers.

    Specs are walked in manifest order; each goes into the open bucket of its dtype; a bucket is
    emitted (in emission order = send order) when the next tensor of its dtype would overflow it.
    A tensor larger than ``bucket_bytes`` is a bucket on its own.  Open buckets are emitted at the end
    in order of first appearance.  The sender therefore never holds more than one open bucket per
    dtype while it streams the manifest.
    """
    out: list[Bucket] = []
    open_: dict[str, tuple[list[int], int]] = {}
    for i, spec in enumerate(specs):
        item = dtype_of(spec.dtype).itemsize
        idx, numel = open_.get(spec.dtype, ([], 0))
        if idx and (numel + spec.numel) * item > bucket_bytes:
            out.append(Bucket(spec.dtype, tuple(idx), numel))
            idx, numel = [], 0
        idx.append(i)
        numel += spec.numel
        open_[spec.dtype] = (idx, numel)
    for dt, (idx, numel) in open_.items():
        if idx:
            out.append(Bucket(dt, tuple(idx), numel))
    return out


# --------------------------------------------------------------------------- tokens


def token_proof(token: str | None, server_id: str) -> str:
    """What a receiver stores in its join record to show it holds the token (never the token itself)."""
    return hmac.new((token or "").encode(), f"member:{server_id}".encode(), hashlib.sha256).hexdigest()


def round_secret(token: str | None, round_id: str) -> str:
    """Store prefix of a round: computable only with the token, fresh per round."""
    return hmac.new((token or "").encode(), f"round:{round_id}".encode(), hashlib.sha256).hexdigest()[:32]


# --------------------------------------------------------------------------- receivers


class VersionWaiter:
    """A tiny condition-variable helper shared by receivers."""

    def __init__(self, initial: int) -> None:
        self._cv = threading.Condition()
        self._version = initial

    @property
    def value(self) -> int:
        return self._version

    def set(self, v: int) -> None:
        with self._cv:
            self._version = v
            self._cv.notify_all()

    def wait_for(self, version: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._version < version:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
            return True


def specs_of(named: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> list[TensorSpec]:
    items = named.items() if isinstance(named, Mapping) else named
    return [TensorSpec.of(n, t) for n, t in items]
