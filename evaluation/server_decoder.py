"""Decoding against running rollout servers (``rethinker eval --server URL [--server URL2 ...]``).

Each prompt is one ``POST /v1/generate`` (``services.rollout.client.AsyncRolloutClient``) with the
question and its images as chat messages, the prompt suffix, greedy sampling (temperature 0) and,
for forced rethinking, ``force_rethink=true``: the server then continues every EOS-ended answer after
its ``algorithm.rethink.eval_trigger`` ("\\n\\nWait" by default) and returns y1 (``first_text``)
and y1 + trigger + y2 (``text``).  Requests go to the servers round-robin; ``max_inflight`` lets
one batch per server be in flight at a time.

Errors: a 4xx answer (the server rejects this item, e.g. an undecodable image) raises
``ValueError`` so the runner records the item as failed; anything else (servers unreachable, 5xx
after the client's retries) raises ``ConnectionError`` and stops the run (resumable).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, Sequence

from common.config import RethinkerConfig

from evaluation.generation import Decoded, Generation
from evaluation.prompts import EvalPrompt


class ServerDecoder:
    def __init__(
        self,
        urls: Sequence[str],
        cfg: RethinkerConfig | None = None,
        *,
        timeout_s: float = 1800.0,
        retries: int = 3,
        inflight_per_server: int = 1,
    ) -> None:
        from services.rollout.client import AsyncRolloutClient

        if not urls:
            raise ValueError("ServerDecoder needs at least one server URL")
        self.urls = [u.rstrip("/") for u in urls]
        token = cfg.rollout.api_token if cfg is not None else None
        self.clients = [AsyncRolloutClient(u, timeout_s=timeout_s, retries=retries, token=token) for u in self.urls]
        self._next = itertools.cycle(range(len(self.clients)))
        self.max_inflight = max(1, len(self.clients) * inflight_per_server)
        self.trigger = cfg.algorithm.rethink.eval_trigger if cfg is not None else "\n\nWait"
        self.requests_per_server = [0] * len(self.clients)

    async def _one(self, p: EvalPrompt, max_new_tokens: int, rethink: bool) -> Decoded:
        from services.rollout.client import RolloutClientError

        k = next(self._next)
        self.requests_per_server[k] += 1
        try:
            out = await self.clients[k].generate_question(
                p.question,
                list(p.images),
                prompt_suffix=p.suffix,
                temperature=0.0,
                top_p=1.0,
                top_k=-1,
                max_new_tokens=max_new_tokens,
                force_rethink=rethink,
            )
        except RolloutClientError as exc:
            if exc.status is not None and 400 <= exc.status < 500:
                raise ValueError(f"server {self.urls[k]} rejected the prompt: {exc}") from None
            raise ConnectionError(f"server {self.urls[k]}: {exc}") from None
        return parse_choice(out["choices"][0], self.trigger if rethink else None)

    async def decode(
        self, prompts: Sequence[EvalPrompt], *, max_new_tokens: int, rethink_trigger: str | None = None
    ) -> list[Decoded]:
        if rethink_trigger is not None and rethink_trigger != self.trigger:
            raise ValueError(
                f"servers continue after their own eval trigger {self.trigger!r}; asked for {rethink_trigger!r}"
            )
        results = await asyncio.gather(
            *(self._one(p, max_new_tokens, rethink_trigger is not None) for p in prompts), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            fatal = [e for e in errors if not isinstance(e, ValueError)]
            raise (fatal or errors)[0]
        return list(results)  # type: ignore[arg-type]

    async def aclose(self) -> None:
        for c in self.clients:
            await c.aclose()


def parse_choice(ch: dict[str, Any], trigger: str | None) -> Decoded:
    """One ``/v1/generate`` choice -> Decoded (``first_text`` is y1 when the server rethought)."""
    if trigger is not None and ch.get("rethought"):
        first_text = ch.get("first_text", "")
        full = ch["text"]
        head = first_text + trigger
        cont = full[len(head) :] if full.startswith(head) else None
        return Decoded(
            first=Generation(text=first_text, finish_reason="stop", n_tokens=None),
            rethink=Generation(text=full, finish_reason=ch["finish_reason"], n_tokens=None, continuation=cont),
        )
    return Decoded(first=Generation(text=ch["text"], finish_reason=ch["finish_reason"], n_tokens=ch.get("n_tokens")))
