"""vLLM worker extension: weight sync and weight loading inside vLLM's GPU workers (``collective_rpc`` targets).

vLLM mixes this class into its worker class when it is named in
``AsyncEngineArgs(worker_extension_cls="services.rollout.engines.vllm_worker.WeightLoaderExtension")``;
``await llm.collective_rpc(method, args=...)`` then runs ``method`` on every worker (one per
tensor-parallel rank) and returns their results in a list.  Every argument and result is small
(strings, dicts of numbers): no tensor crosses the RPC channel.

Weight-sync rounds (``weight_transport``): each worker is a member of its own
(``<server_id>/w<rank>``) and receives the learner's buckets straight into its own memory with the
round's backend (NCCL across GPUs, CUDA IPC when it shares the learner's GPU, gloo on CPU), then
hands them to the model's ``load_weights`` (every rank gets the full tensors; vLLM's weight loaders
take each rank's shard and map the Hugging Face names).  The rollout server coordinates
(``WorkerRoundReceiver``, ``VLLMEngine.receive_round``):

1. ``weight_sync_init(settings) -> member dict`` once after start;
2. per round ``weight_sync_receive(round_json, mode) -> JoinOutcome dict`` with ``mode``
   ``"stage"`` (receive and keep, ``staging: full``), ``"load"`` (load bucket by bucket while
   receiving, ``staging: stream``) or ``"discard"`` (take part, load nothing);
3. after a staged round every worker received: ``weight_sync_apply(round_id) -> tensors loaded``,
   or ``weight_sync_drop()``.

``load_checkpoint(path)`` loads a safetensors folder (cold start, resync from the published
checkpoint).  ``self`` is vLLM's worker (``self.model_runner``, ``self.device``, ``self.rank``).
It imports nothing from vLLM, and torch only inside methods: importable without vLLM.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

MODES = ("stage", "load", "discard")


def _named(weights: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    yield from (weights.items() if isinstance(weights, Mapping) else weights)


class WeightLoaderExtension:
    """Methods added to vLLM's worker (see the module docstring)."""

    # ---------------------------------------------------------------- the model

    def _model(self) -> Any:
        return self.model_runner.get_model()  # type: ignore[attr-defined]

    def _load_named(self, weights: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> int:
        """Stream ``(hf_name, tensor)`` pairs into the model's ``load_weights``; returns how many."""
        count = 0

        def counted() -> Iterator[tuple[str, Any]]:
            nonlocal count
            for name, t in _named(weights):
                count += 1
                yield name, t

        self._model().load_weights(weights=counted())
        return count

    def load_checkpoint(self, path: str) -> int:
        """Load every tensor of the ``*.safetensors`` files in ``path``; returns how many."""
        from safetensors import safe_open

        files = sorted(Path(path).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"checkpoint {path!r} holds no .safetensors file")

        def stream() -> Iterator[tuple[str, Any]]:
            for f in files:
                with safe_open(str(f), framework="pt", device="cpu") as fh:
                    for name in fh.keys():
                        yield name, fh.get_tensor(name)

        return self._load_named(stream())

    # ---------------------------------------------------------------- weight-sync rounds

    def weight_sync_init(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Become a member: ``settings`` = {server_id, backend, token, staging}.  Returns this worker's
        ``WorkerMember`` fields (member_id, gpu_uuid for cuda_ipc, pid, host)."""
        import torch

        from weight_transport import make_backend
        from weight_transport.protocol import RoundParticipant

        missing = [k for k in ("server_id", "backend") if not settings.get(k)]
        if missing:
            raise ValueError(f"weight_sync_init: missing {missing}")
        name = str(settings["backend"])
        dev = getattr(self, "device", None)
        device = dev if name != "gloo" and isinstance(dev, torch.device) and dev.type == "cuda" else None
        backend = make_backend(name, device=device)
        self._wsync = RoundParticipant(backend, token=settings.get("token"), staging=str(settings.get("staging", "full")))
        self._wsync_member = f"{settings['server_id']}/w{int(getattr(self, 'rank', 0))}"
        self._wsync_staged: tuple[str, Any] | None = None
        extra = backend.member_extra()
        return {
            "member_id": self._wsync_member,
            "gpu_uuid": str(extra.get("gpu_uuid", "")),
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }

    def weight_sync_receive(self, round_json: str, mode: str) -> dict[str, Any]:
        """Take part in one round (see the module docstring); returns a ``JoinOutcome`` as a dict.
        Failures come back in the outcome (``ok=False``, ``error``), never as an exception."""
        from common.schemas.weights import JoinOutcome, RoundDescriptor

        participant = getattr(self, "_wsync", None)
        member = getattr(self, "_wsync_member", "")
        try:
            if participant is None:
                raise RuntimeError("weight_sync_init was not called")
            if mode not in MODES:
                raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
            desc = RoundDescriptor.from_json(round_json)
        except Exception as exc:  # noqa: BLE001
            return JoinOutcome(member, "", -1, error=f"{type(exc).__name__}: {exc}").to_dict()
        self._wsync_staged = None  # a new round replaces whatever was staged
        loaded = {"n": 0}

        def deliver(weights: Any) -> None:
            if mode == "stage":
                # full staging: views into receive buffers the participant keeps until the next round
                self._wsync_staged = (desc.round_id, weights if isinstance(weights, Mapping) else dict(weights))
            elif mode == "load":
                loaded["n"] = self._load_named(weights)
            else:
                for _ in _named(weights):
                    pass

        try:
            out = participant.receive(desc, member, deliver)
        except Exception as exc:  # noqa: BLE001 - reported to the coordinator
            self._wsync_staged = None
            out = JoinOutcome(member, desc.round_id, desc.version, joined=True, error=f"{type(exc).__name__}: {exc}"[:500])
        return out.to_dict()

    def weight_sync_apply(self, round_id: str) -> int:
        """Load the weights staged by round ``round_id``; returns how many tensors."""
        staged, self._wsync_staged = getattr(self, "_wsync_staged", None), None
        if staged is None or staged[0] != round_id:
            have = staged[0] if staged else None
            raise RuntimeError(f"no staged weights of round {round_id!r} (staged: {have!r})")
        return self._load_named(staged[1])

    def weight_sync_drop(self) -> None:
        """Forget staged weights (a round not every worker received)."""
        self._wsync_staged = None
