"""Wire schemas shared by every process: prompt tasks, samples, groups and policy versions.

This package is the one home of what crosses a process boundary.  Besides the records below:

- ``common.schemas.buffer``: results of the buffer's calls (claimed tasks, sampled batches, sizes ...);
- ``common.schemas.verifier``: the verifier's HTTP API (``VerifyItem``, ``VerifyResult`` ...);
- ``common.schemas.weights``: weight-sync records (manifest, round descriptor, join records ...).

These are plain dataclasses.  ``common.codec`` turns them into msgpack bytes (token ids and
log-probs as raw numpy buffers) and back, checking field names and types so that a bad payload gives
a clear ``CodecError`` instead of a ``KeyError`` deep inside a service.

Flow: the learner publishes ``PromptTask``s -> a rollout server generates ``n`` ``Sample``s for a task,
scores them, forces rethinking on some, and stores them as one ``Group`` -> the buffer computes
advantages and serves ``Sample``s to the learner -> the learner broadcasts weights tagged with a
``PolicyVersion``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = 1


def new_id(prefix: str = "") -> str:
    """A globally unique id (uuid4 hex), optionally prefixed (``s-``, ``g-`` ...)."""
    return f"{prefix}{uuid.uuid4().hex}"


@dataclass(slots=True)
class PromptTask:
    """One question to roll out: published by the learner, claimed by a rollout server."""

    task_id: str  # unique per publication (epoch + prompt id); the group id derives from it
    prompt_id: str  # the dataset's qid
    question: str  # with "<image>" placeholders, without the prompt suffix
    answer: str  # gold answer (may be \boxed{...})
    images: list[bytes] = field(default_factory=list)  # encoded image files (PNG/JPEG)
    prompt_suffix: str = ""
    category: str = ""
    source: str = ""
    epoch: int = 0
    n: int = 8  # responses to generate
    policy_version: int = 0  # learner's version when published
    published_at: float = field(default_factory=time.time)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Sample:
    """One response to one prompt, with everything the learner and the stats need."""

    sample_id: str
    group_id: str
    task_id: str
    prompt_id: str
    prompt_token_ids: np.ndarray  # int32, the chat-formatted prompt as the engine saw it
    response_token_ids: np.ndarray  # int32, generated tokens (incl. a forced-rethinking trigger)
    sampler_logprobs: np.ndarray  # float32, one per response token, under `policy_version`
    response_text: str = ""
    finish_reason: str = "stop"  # "stop" (EOS) | "length"
    reward: float = 0.0
    correct: bool = False
    extracted: str | None = None
    verdict_reason: str = ""
    rethought: bool = False  # a kept forced-rethinking response (y1' + trigger + y2)
    n_wait: int = 0
    policy_version: int = 0  # the oldest version whose weights produced any of its tokens
    advantage: float = 0.0  # set by the buffer when the group is stored
    times_sampled: int = 0  # set by the buffer: how often the learner has trained on it
    category: str = ""
    source: str = ""
    created_at: float = field(default_factory=time.time)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class Group:
    """All responses to one prompt task, stored atomically by the buffer."""

    group_id: str
    task: PromptTask
    samples: list[Sample]
    server_id: str = ""
    policy_version: int = 0  # min over the samples
    created_at: float = field(default_factory=time.time)
    rethink_triggered: int = 0
    rethink_kept: int = 0
    first_pass_accuracy: float = 0.0


@dataclass(slots=True)
class PolicyVersion:
    """A published set of weights (the checkpoint a late joiner loads is not here: its one record
    is ``sync_round.checkpoint``, written by the weight sender, docs/weight-sync.md)."""

    version: int
    step: int
    num_bytes: int = 0
    published_at: float = field(default_factory=time.time)


def group_id_for(task: PromptTask) -> str:
    """The deterministic group id of a task: a retried task yields the same id (idempotent add)."""
    return f"g-{task.task_id}"


SCHEMAS: dict[str, type] = {cls.__name__: cls for cls in (PromptTask, Sample, Group, PolicyVersion)}
