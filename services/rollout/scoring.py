"""Scoring responses through the verifier service (HTTP, batched, retried) for the actor loop.

``HttpScorer(cfg)`` wraps ``services.verifier.client.VerifierClient`` (which owns batching by
``verifier.max_items``, retries with backoff and per-request timeouts); results come back keyed by
the item id (checked against the item order), so a response is always matched to its own verdict (the
public code's running-counter matching is not reproduced).  Both scorers implement
``common.interfaces.Scorer``: ``async score(items) -> {id: result}`` with the verifier's own records,
``VerifyItem`` in and ``VerifyResult`` out (``common.schemas.verifier``).
"""

from __future__ import annotations

import asyncio
from typing import Sequence

from common.config import RethinkerConfig
from common.errors import RolloutServiceError
from common.schemas.verifier import VerifyItem, VerifyResult


class ScoringError(RolloutServiceError, RuntimeError):
    """The verifier could not score a batch (down, timed out after retries, or a missing id).
    ``unavailable``: the verifier could not be reached or kept failing (worth waiting for), as
    opposed to a rejected request or a malformed answer."""

    def __init__(self, message: str, *, unavailable: bool = False) -> None:
        super().__init__(message)
        self.unavailable = unavailable


class HttpScorer:
    """The verifier service over HTTP (``services.verifier.client.VerifierClient.averify``)."""

    def __init__(self, cfg: RethinkerConfig, base_url: str | None = None) -> None:
        from services.verifier.client import VerifierClient

        self.base_url = base_url or cfg.verifier.base_url()
        self.client = VerifierClient(
            self.base_url,
            timeout_s=cfg.rollout.verifier_timeout_s,
            retries=cfg.rollout.verifier_retries,
            batch_size=cfg.verifier.max_items,
            token=cfg.verifier.api_token,
        )

    async def score(self, items: Sequence[VerifyItem]) -> dict[str, VerifyResult]:
        items = list(items)
        if not items:
            return {}
        from services.verifier.client import VerifierUnavailable

        try:
            results = await self.client.averify(items)
        except Exception as exc:  # noqa: BLE001 - any client failure ends this batch
            raise ScoringError(f"verifier at {self.base_url} failed: {type(exc).__name__}: {exc}",
                               unavailable=isinstance(exc, VerifierUnavailable)) from exc
        out: dict[str, VerifyResult] = {}
        for it, r in zip(items, results):
            if r.id != it.id:  # results come back in item order, each carrying its id
                raise ScoringError(f"verifier result id {r.id!r} does not match item {it.id!r}")
            out[str(it.id)] = r
        if len(out) != len(items):
            raise ScoringError(f"verifier returned {len(results)} results for {len(items)} items")
        return out

    async def close(self) -> None:
        await self.client.aclose()


class LocalScorer:
    """In-process scoring with the verifier library (benchmarks and offline tools; the actor loop
    of a server always uses ``HttpScorer``).  Same item/result fields as the service."""

    def __init__(self, cfg: RethinkerConfig) -> None:
        self.reward_cfg = cfg.algorithm.reward

    def _score_sync(self, items: list[VerifyItem]) -> dict[str, VerifyResult]:
        from services.verifier import count_waits, grade, reward

        out = {}
        for it in items:
            v = grade(it.response, it.gold, question=it.question)
            n_wait = count_waits(it.response)
            out[str(it.id)] = VerifyResult(
                id=it.id,
                correct=v.correct,
                extracted=v.extracted,
                reason=v.reason,
                reward=reward(v, eos=it.eos, n_wait=n_wait, rethought=it.rethought, cfg=self.reward_cfg),
                n_wait=n_wait,
                timed_out=v.timed_out,
            )
        return out

    async def score(self, items: Sequence[VerifyItem]) -> dict[str, VerifyResult]:
        return await asyncio.to_thread(self._score_sync, list(items))

    async def close(self) -> None:
        return None
