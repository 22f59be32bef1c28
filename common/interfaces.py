"""The hand-offs between the parts, as ``typing.Protocol``s: what each side needs from the other.

Rollout side (``services.rollout``), implemented by ``services.buffer.client.AsyncBufferClient``:

- ``TaskQueue``: claim prompt tasks, keep the claims alive, ack or give them back;
- ``GroupStore``: store a finished group (idempotent by group id);
- ``PolicyVersionReader``: the learner's latest published ``PolicyVersion`` (staleness backpressure);
- ``ServerRegistry``: the rollout server's registry entry (register, heartbeat, unregister);
- ``ActorBuffer`` = queue + store + version (the actor loop), ``RolloutBuffer`` = that + registry
  (the rollout server).

Learner side, implemented by ``services.buffer.client.BufferClient``:

- ``TaskPublisher``: publish prompt tasks within the queue's bound (the prompt feeder);
- ``TrajectoryStore``: sizes, stats and SSR/GRPO batches of stored responses;
- ``VersionPublisher``: reserve and publish policy versions, read the highest one published;
- ``LearnerBuffer`` = all three (the trainer).

Scoring (rollout -> verifier): ``Scorer`` takes ``VerifyItem``s and returns ``VerifyResult``s keyed by
item id (``services.rollout.scoring.HttpScorer`` / ``LocalScorer``).

Weights (learner -> rollout): ``WeightSender`` (learner rank 0) and ``WeightReceiver`` (a rollout
server), built by ``weight_transport.make_sender`` / ``make_receiver``; ``OnWeights`` is the
receiver's callback.  Their behaviour is described in ``weight_transport/base.py`` and
docs/weight-sync.md.

The records these methods take and return live in ``common.schemas`` (and its ``buffer``,
``verifier`` and ``weights`` modules).  Nothing here is imported at run time by anything heavy:
torch and the record modules are imported for type checking only.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence, Union

if TYPE_CHECKING:
    import torch

    from common.schemas import Group, PolicyVersion, PromptTask
    from common.schemas.buffer import AddGroupResult, ClaimedTask, PublishResult, SampledBatch, StoreSizes
    from common.schemas.verifier import VerifyItem, VerifyResult
    from common.schemas.weights import JoinRecord, SyncReport, TensorSpec


# --------------------------------------------------------------------------- buffer, rollout side


class TaskQueue(Protocol):
    """The prompt-task queue as a rollout actor uses it (asyncio)."""

    async def claim_tasks(self, consumer: str, count: int, block_ms: int = 1000) -> list[ClaimedTask]: ...

    async def reclaim_own(self, consumer: str, count: int) -> list[ClaimedTask]: ...

    async def extend_claims(self, consumer: str, entry_ids: Sequence[str]) -> int: ...

    async def ack_task(self, entry_id: str) -> bool: ...

    async def release_task(self, entry_id: str) -> bool: ...


class GroupStore(Protocol):
    """Where a rollout actor stores finished groups (asyncio)."""

    async def add_group(self, group: Group) -> AddGroupResult: ...


class PolicyVersionReader(Protocol):
    """The learner's latest published policy version (asyncio)."""

    async def policy_version(self) -> PolicyVersion | None: ...


class ServerRegistry(Protocol):
    """A rollout server's entry in the registry (asyncio); ``info`` is its JSON status summary."""

    async def register_server(self, server_id: str, info: dict[str, Any], ttl_s: float) -> None: ...

    async def heartbeat(self, server_id: str, info: dict[str, Any], ttl_s: float) -> None: ...

    async def unregister_server(self, server_id: str) -> None: ...


class ActorBuffer(TaskQueue, GroupStore, PolicyVersionReader, Protocol):
    """Everything the actor loop needs from the buffer."""


class RolloutBuffer(ActorBuffer, ServerRegistry, Protocol):
    """Everything a rollout server needs from the buffer."""


# --------------------------------------------------------------------------- buffer, learner side


class TaskPublisher(Protocol):
    """Publishing prompt tasks (the learner's prompt feeder)."""

    def publish_tasks(self, tasks: Sequence[PromptTask], *, force: bool = False) -> PublishResult: ...

    def can_publish(self) -> int: ...


class TrajectoryStore(Protocol):
    """The stored responses as the learner draws them."""

    def sizes(self) -> StoreSizes: ...

    def stats(self) -> dict[str, Any]: ...

    def sample(
        self,
        n: int,
        *,
        mode: str | None = None,
        policy_version: int,
        seed: int | None = None,
        request_id: str | None = None,
    ) -> SampledBatch: ...


class VersionPublisher(Protocol):
    """Policy versions as the learner publishes them (a number names one weight set, forever)."""

    def reserve_policy_version(self, version: int) -> None: ...

    def publish_policy_version(self, pv: PolicyVersion) -> None: ...

    def highest_policy_version(self) -> int | None: ...


class LearnerBuffer(TaskPublisher, TrajectoryStore, VersionPublisher, Protocol):
    """Everything the learner needs from the buffer."""


# --------------------------------------------------------------------------- scoring


class Scorer(Protocol):
    """Rollout -> verifier: the verdicts of ``items`` keyed by item id (every item has an id).

    A failure raises; an exception whose ``unavailable`` attribute is true means the verifier could
    not be reached (worth waiting for)."""

    async def score(self, items: Sequence[VerifyItem]) -> dict[str, VerifyResult]: ...

    async def close(self) -> None: ...


# --------------------------------------------------------------------------- weights

WeightsArg = Union[Mapping[str, "torch.Tensor"], Iterator[tuple[str, "torch.Tensor"]]]
"""What ``OnWeights`` gets: every tensor by name (``staging: full``) or a stream of pairs (``stream``)."""

OnWeights = Callable[[WeightsArg, int], None]
"""``on_weights(weights, version)``, called in the receiver's thread; see ``weight_transport/base.py``."""


class WeightSender(Protocol):
    """Learner side.  Build with ``make_sender(cfg)``; used only by the learner's rank 0."""

    backend: str

    @abstractmethod
    def sync(
        self,
        specs: Sequence[TensorSpec],
        tensors: Iterable[torch.Tensor],
        *,
        version: int,
        step: int = 0,
    ) -> SyncReport:
        """Send one version to every live registered member; see ``weight_transport/base.py``."""

    @abstractmethod
    def publish_checkpoint(self, path: str, *, version: int, step: int) -> None:
        """Record a safetensors HF folder holding ``version`` for late joiners."""

    @abstractmethod
    def members(self) -> dict[str, JoinRecord]:
        """The members the next round would invite."""

    @abstractmethod
    def close(self) -> None:
        """Release sockets/threads; idempotent."""


class WeightReceiver(Protocol):
    """Rollout side.  Build with ``make_receiver(cfg, server_id=..., on_weights=...)``."""

    server_id: str

    @abstractmethod
    def start(self, *, load_checkpoint: bool = True) -> WeightReceiver:
        """Register, load the latest published checkpoint if newer than what we hold, start listening."""

    @abstractmethod
    def stop(self) -> None:
        """Stop listening and deregister; idempotent."""

    @property
    @abstractmethod
    def loaded_version(self) -> int:
        """Version last handed to ``on_weights`` successfully (``initial_version`` before that)."""

    @property
    @abstractmethod
    def last_error(self) -> str:
        """Message of the last failed round or callback ("" if none)."""

    @abstractmethod
    def wait_for_version(self, version: int, timeout: float) -> bool:
        """Block until ``loaded_version >= version`` (True) or ``timeout`` seconds pass (False)."""

    @abstractmethod
    def load_latest_checkpoint(self) -> int | None:
        """Load the published checkpoint through ``on_weights`` if it is newer than ``loaded_version``;
        returns its version, or None when there is nothing newer.  ``start()`` calls it first."""
