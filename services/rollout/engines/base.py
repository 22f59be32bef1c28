"""The generation-engine interface every rollout backend implements (``hf``, ``vllm``).

An engine turns prompts (chat-formatted token ids plus images) into sampled responses with their
sampler log-probs, continues a response from a given prefix (Forced Rethinking), and swaps its
weights for a new policy version.  All calls are ``async``; CPU/GPU work runs off the event loop.

Data flow::

    prompt = engine.encode_prompt(task)                       # PromptInputs (processor output)
    [res] = await engine.generate([GenerationRequest("t1", prompt, SamplingParams(n=8))])
    res.completions[i].token_ids / .logprobs / .finish_reason / .text / .policy_version
    [cont] = await engine.generate([GenerationRequest("t1:0:r", prompt, params, prefix_token_ids=y1+trig)])
    cont.prefix_logprobs        # log-probs of the prefix tokens under the weights that continued it
    await engine.load_weights({"name": tensor, ...} | "ckpt_dir", version=3)

Engines whose model lives in worker processes (``worker_receive = True``: vLLM) take weight-sync
rounds in those workers instead (``init_worker_receive`` / ``receive_round``, see
``weight_transport/workers.py``); ``load_weights`` then takes a checkpoint folder or a
``StagedRound`` (weights the workers received and keep).

Log-probs are the policy's raw log-probs (log-softmax of the unprocessed logits, i.e. temperature
1 and no top-p/top-k filtering), which is what the learner recomputes; for vLLM this is
``logprobs_mode="raw_logprobs"``.

Weight swaps never overlap a generation call: ``load_weights`` waits for the calls in flight and
holds new ones back (``AsyncRWLock``), so no forward pass mixes two weight sets.  Every result
carries the version its call ran under.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, Mapping, Sequence, Union

import numpy as np

from common.config import RethinkerConfig, SamplingConfig
from common.errors import RolloutServiceError
from common.schemas import PromptTask

if TYPE_CHECKING:
    from common.schemas.weights import JoinOutcome, WorkerMember

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class StagedRound:
    """Weights of sync round ``round_id`` that the engine's workers received and hold, not yet loaded."""

    round_id: str


WeightsLike = Union[Mapping[str, Any], Iterable[tuple[str, Any]], str, Path, StagedRound]


class EngineError(RolloutServiceError, RuntimeError):
    """A generation or weight-loading failure the caller can report (bad input, unknown weight name)."""


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Per-request sampling; ``temperature == 0`` is greedy; ``top_k <= 0`` disables top-k."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 256
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @staticmethod
    def from_config(s: SamplingConfig, **override: Any) -> "SamplingParams":
        kw = dict(n=s.n, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, max_new_tokens=s.max_new_tokens)
        kw.update(override)
        return SamplingParams(**kw)

    def key(self) -> tuple:
        """Requests with equal keys can share one batched engine call (the seed is not part of it:
        the hf engine seeds a batch with its first request's seed; vLLM seeds each request)."""
        return (self.temperature, self.top_p, self.top_k, self.max_new_tokens)


@dataclass(slots=True)
class PromptInputs:
    """A prompt as the engine sees it.

    ``token_ids`` is the chat-formatted prompt with image pad tokens expanded (what the learner's
    teacher-forced pass uses); ``images`` are the resized PIL images; ``tensors`` holds the
    processor outputs for the HF engine (``input_ids``, ``attention_mask``, ``pixel_values``,
    ``image_grid_thw``, ``mm_token_type_ids``; batch dimension 1).
    """

    token_ids: np.ndarray  # int32
    images: list[Any] = field(default_factory=list)
    tensors: dict[str, Any] = field(default_factory=dict)
    text: str = ""


@dataclass(slots=True)
class GenerationRequest:
    """``n`` samples for one prompt; with ``prefix_token_ids`` a continuation of that prefix."""

    request_id: str
    prompt: PromptInputs
    params: SamplingParams
    prefix_token_ids: np.ndarray | None = None  # int32 response tokens to continue from


@dataclass(slots=True)
class Completion:
    token_ids: np.ndarray  # int32 generated tokens (EOS included when finish_reason == "stop")
    logprobs: np.ndarray  # float32, one raw log-prob per token
    finish_reason: FinishReason
    text: str  # decoded token_ids, special tokens skipped
    policy_version: int


@dataclass(slots=True)
class GenerationResult:
    request_id: str
    completions: list[Completion]
    prompt_token_ids: np.ndarray  # int32, as the engine saw it (image pads expanded)
    policy_version: int
    prefix_logprobs: np.ndarray | None = None  # float32 per prefix token (continuations only)


# --------------------------------------------------------------------------- helpers


class AsyncRWLock:
    """Many concurrent generation calls (readers) or one weight swap (writer); writers win ties."""

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    async def acquire_read(self) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._writer and self._writers_waiting == 0)
            self._readers += 1

    async def release_read(self) -> None:
        async with self._cond:
            self._readers -= 1
            self._cond.notify_all()

    async def acquire_write(self) -> None:
        async with self._cond:
            self._writers_waiting += 1
            try:
                await self._cond.wait_for(lambda: not self._writer and self._readers == 0)
            finally:
                self._writers_waiting -= 1
            self._writer = True

    async def release_write(self) -> None:
        async with self._cond:
            self._writer = False
            self._cond.notify_all()

    @property
    def readers(self) -> int:
        return self._readers


class _Read:
    def __init__(self, lock: AsyncRWLock) -> None:
        self.lock = lock

    async def __aenter__(self) -> None:
        await self.lock.acquire_read()

    async def __aexit__(self, *exc: object) -> None:
        await self.lock.release_read()


class _Write(_Read):
    async def __aenter__(self) -> None:
        await self.lock.acquire_write()

    async def __aexit__(self, *exc: object) -> None:
        await self.lock.release_write()


@dataclass
class EngineStats:
    """Generated-token throughput over a sliding window of engine calls."""

    window: int = 64
    calls: int = 0
    tokens: int = 0
    busy_s: float = 0.0
    _recent: deque = field(default_factory=deque)

    def record(self, tokens: int, seconds: float) -> None:
        self.calls += 1
        self.tokens += tokens
        self.busy_s += seconds
        self._recent.append((tokens, seconds))
        while len(self._recent) > self.window:
            self._recent.popleft()

    @property
    def tokens_per_s(self) -> float:
        t = sum(s for _, s in self._recent)
        return sum(n for n, _ in self._recent) / t if t > 0 else 0.0


def as_int32(x: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.int32).reshape(-1))


# --------------------------------------------------------------------------- interface


class Engine(ABC):
    """A rollout backend.  Build with ``services.rollout.engines.make_engine(cfg)``."""

    name: str = "base"

    def __init__(self, cfg: RethinkerConfig) -> None:
        self.cfg = cfg
        self._lock = AsyncRWLock()
        self._version = -1  # -1: no weights loaded yet
        self.stats = EngineStats()
        self._processor: Any = None
        self._eos: frozenset[int] = frozenset()

    # ---- lifecycle
    @abstractmethod
    async def start(self, initial_version: int = 0) -> None:
        """Load the model from ``cfg.model.path`` (tagged ``initial_version``); ready afterwards."""

    async def close(self) -> None:
        """Release the model / engine processes; idempotent."""

    @property
    def ready(self) -> bool:
        return self._version >= 0

    @property
    def loaded_version(self) -> int:
        """Policy version of the loaded weights (-1 before any)."""
        return self._version

    # ---- tokenization / prompts (``start`` sets ``_processor`` and ``_eos``)
    @property
    def tokenizer(self) -> Any:
        """The HF tokenizer (``decode``, ``encode``)."""
        return self.processor.tokenizer

    @property
    def processor(self) -> Any:
        """The HF multimodal processor."""
        if self._processor is None:
            raise EngineError("engine not started")
        return self._processor

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Token ids that end a response."""
        return self._eos

    @abstractmethod
    def encode_question(
        self, question: str, images: Sequence[Any], prompt_suffix: str = "", system: str | None = None
    ) -> PromptInputs:
        """Chat-format a question with ``<image>`` placeholders (images: encoded bytes / PIL).

        Raises ``ValueError`` (e.g. ``common.data.images.ImageError``) or ``EngineError`` on bad input.
        """

    def encode_prompt(self, task: PromptTask) -> PromptInputs:
        return self.encode_question(task.question, task.images, task.prompt_suffix)

    def decode(self, token_ids: Sequence[int] | np.ndarray) -> str:
        ids = [int(t) for t in token_ids]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def strip_eos(self, token_ids: np.ndarray) -> np.ndarray:
        """Token ids without a trailing EOS token."""
        if len(token_ids) and int(token_ids[-1]) in self.eos_token_ids:
            return token_ids[:-1]
        return token_ids

    # ---- generation
    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Generate every request (continuations included); results in request order."""
        if not requests:
            return []
        for r in requests:
            if r.prefix_token_ids is not None and len(r.prefix_token_ids) == 0:
                raise EngineError(f"request {r.request_id}: empty prefix_token_ids")
        async with _Read(self._lock):
            if not self.ready:
                raise EngineError("no weights loaded yet")
            t0 = time.perf_counter()
            results = await self._generate(list(requests))
            n_tok = sum(len(c.token_ids) for r in results for c in r.completions)
            self.stats.record(n_tok, time.perf_counter() - t0)
            return results

    async def continue_from(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Continuations only: each request must carry ``prefix_token_ids``."""
        for r in requests:
            if r.prefix_token_ids is None:
                raise EngineError(f"request {r.request_id}: continue_from needs prefix_token_ids")
        return await self.generate(requests)

    @abstractmethod
    async def _generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Backend generation, called under the read lock."""

    # ---- weights
    async def load_weights(self, weights: WeightsLike, version: int) -> None:
        """Swap in named tensors (HF state-dict names) or a checkpoint folder, tagged ``version``.

        Waits for generation calls in flight and holds new ones until the swap is done.  On error
        the version does not change (the weights may be partially updated: load again).
        """
        async with _Write(self._lock):
            await self._load_weights(weights, version)
            self._version = int(version)

    @abstractmethod
    async def _load_weights(self, weights: WeightsLike, version: int) -> None:
        """Backend weight swap, called under the write lock."""

    # ---- worker-side receive (engines with worker processes)
    worker_receive: bool = False
    """True: weight-sync rounds are received by the engine's workers (``init_worker_receive``,
    ``receive_round``); the rollout server only coordinates."""

    async def init_worker_receive(self, server_id: str) -> list[WorkerMember]:
        """Make every worker a weight-sync member; returns their ``WorkerMember`` list."""
        raise EngineError(f"engine {self.name!r} receives weights in the server process")

    async def receive_round(self, round_json: str, *, mode: str) -> list[JoinOutcome]:
        """Run one weight-sync round in every worker (``mode``: stage / load / discard); returns their
        ``JoinOutcome`` list.  ``load`` holds generation back and sets the version when all loaded."""
        raise EngineError(f"engine {self.name!r} receives weights in the server process")

    async def drop_round(self) -> None:
        """Forget weights the workers staged (a round not every worker received)."""
        raise EngineError(f"engine {self.name!r} receives weights in the server process")

    @property
    def in_flight_calls(self) -> int:
        return self._lock.readers


def iter_named(weights: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> Iterable[tuple[str, Any]]:
    return weights.items() if isinstance(weights, Mapping) else weights
