"""Results of the buffer's calls, shared by its clients and every caller (rollout actor, learner).

The buffer clients (``services.buffer.client``) parse the replies of the store's Redis Functions into
these records; the rollout actor and the learner receive them through the ``TaskQueue`` and
``TrajectoryStore`` interfaces (``common.interfaces``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.schemas import PromptTask, Sample


@dataclass(slots=True)
class PublishResult:
    published: int
    duplicates: list[str] = field(default_factory=list)  # task ids already published in their epoch
    deferred: list[str] = field(default_factory=list)  # task ids refused by max_inflight_tasks


@dataclass(slots=True)
class ClaimedTask:
    entry_id: str
    task: PromptTask
    deliveries: int  # 1 on the first delivery; reclaims and releases add one each


@dataclass(slots=True)
class AddGroupResult:
    group_id: str
    stored: bool  # False: the group id already existed, nothing was written
    n_effective: int
    advantages: list[float]


@dataclass(slots=True)
class SampledBatch:
    """One training batch.  ``samples[i]`` came from the replay pool iff ``replayed[i]``."""

    samples: list[Sample]
    replayed: list[bool]
    tasks: dict[str, PromptTask]  # task_id -> task (with images) of every drawn sample
    n_fresh: int  # draws from never-trained responses
    n_replay: int  # draws from the replay pool
    n_effective_available: int  # fresh effective responses available when the call started
    n_replay_available: int
    n_zero_available: int  # fresh zero-advantage responses (used by mode "grpo" only)
    mode: str
    policy_version: int
    request_id: str

    def __len__(self) -> int:
        return len(self.samples)

    def items(self) -> list[tuple[Sample, bool]]:
        return list(zip(self.samples, self.replayed))


@dataclass(slots=True)
class StoreSizes:
    fresh: int  # effective, never trained
    replay: int
    zero: int  # zero-advantage, never trained
    stored: int  # every stored response
    groups: int


@dataclass(slots=True)
class QueueStats:
    inflight: int  # published, not yet acked (queued + pending)
    pending: int  # delivered to a rollout server, not yet acked
    max_inflight: int

    @property
    def depth(self) -> int:
        return max(0, self.inflight - self.pending)

    @property
    def can_publish(self) -> int:
        return max(0, self.max_inflight - self.inflight)


@dataclass(slots=True)
class SampleRecord:
    """A stored sample with its buffer state (``pool``: f fresh, r replay, z zero-advantage fresh,
    t trained and retired, x evicted as stale)."""

    sample: Sample
    pool: str
    group_id: str
