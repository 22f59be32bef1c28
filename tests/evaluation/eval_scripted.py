"""A scripted generation engine: a test double for the ENGINE only (used by the runner's tests).

It implements ``services.rollout.engines.base.Engine`` with a character-level tokenizer and answers
from a script: ``script(prompt_text, images, prefix_text) -> response``; ``prefix_text`` is None for
a first pass and ``y1 + trigger`` for a continuation.  Responses longer than ``max_new_tokens``
are cut and finish with ``"length"``, like a real engine.  Everything the runner asks is recorded,
so tests can check what reached the model (prompt text, images in order, prefixes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import re

import numpy as np

import eval_synth

from common.config import RethinkerConfig
from services.rollout.engines.base import (
    Completion,
    Engine,
    GenerationRequest,
    GenerationResult,
    PromptInputs,
    as_int32,
)

EOS = 1
OFFSET = 10


class CharTokenizer:
    eos_token_id = EOS
    pad_token_id = 0

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) + OFFSET for c in text]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(int(i) - OFFSET) for i in ids if int(i) >= OFFSET)


Script = Callable[[str, list[bytes], "str | None"], str]


@dataclass
class Call:
    prompt_text: str
    images: list[bytes]
    prefix_text: str | None
    max_new_tokens: int
    temperature: float


class ScriptedEngine(Engine):
    name = "scripted"

    def __init__(self, script: Script, *, fail_after_calls: int | None = None) -> None:
        super().__init__(RethinkerConfig())
        self.script = script
        self.calls: list[Call] = []
        self.generate_calls = 0
        self.fail_after_calls = fail_after_calls  # raise ConnectionError on the calls after this many
        self._tok = CharTokenizer()
        self._version = 0  # ready without start()

    async def start(self, initial_version: int = 0) -> None:
        self._version = initial_version

    @property
    def tokenizer(self) -> Any:
        return self._tok

    @property
    def processor(self) -> Any:
        return None

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return frozenset({EOS})

    def encode_question(
        self, question: str, images: Sequence[Any], prompt_suffix: str = "", system: str | None = None
    ) -> PromptInputs:
        text = question + prompt_suffix
        return PromptInputs(token_ids=as_int32(self._tok.encode(text)), images=list(images), text=text)

    async def _generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        self.generate_calls += 1
        if self.fail_after_calls is not None and self.generate_calls > self.fail_after_calls:
            raise ConnectionError("scripted engine: simulated crash")
        out = []
        for r in requests:
            prefix = None if r.prefix_token_ids is None else self._tok.decode(r.prefix_token_ids)
            self.calls.append(Call(r.prompt.text, list(r.prompt.images), prefix, r.params.max_new_tokens, r.params.temperature))
            text = self.script(r.prompt.text, list(r.prompt.images), prefix)
            ids = self._tok.encode(text)
            if len(ids) + 1 <= r.params.max_new_tokens:
                ids, reason = ids + [EOS], "stop"
            else:
                ids, reason = ids[: r.params.max_new_tokens], "length"
            tok = as_int32(ids)
            out.append(
                GenerationResult(
                    request_id=r.request_id,
                    completions=[
                        Completion(
                            token_ids=tok,
                            logprobs=np.zeros(len(tok), dtype=np.float32),
                            finish_reason=reason,  # type: ignore[arg-type]
                            text=self._tok.decode(tok),
                            policy_version=self._version,
                        )
                    ],
                    prompt_token_ids=r.prompt.token_ids,
                    policy_version=self._version,
                )
            )
        return out

    async def _load_weights(self, weights: Any, version: int) -> None:
        return None


# --------------------------------------------------------------------------- scripts


def wrong_answer(t: dict) -> str:
    if t["question_type"] == "multiple_choice":
        return "A" if t["gold"] != "A" else "B"
    return "999"


def is_correct_by_plan(i: int) -> bool:
    return i % 3 != 1  # items 1, 4, 7, ... of each benchmark are answered wrongly


def planned(bench: str, i: int, t: dict) -> str:
    ans = t["gold"] if is_correct_by_plan(i) else wrong_answer(t)
    return f"Let me look at the figure. The result follows.\nSo the answer is \\boxed{{{ans}}}."


def make_script(truth: dict, respond: Callable[[str, int, dict], Any]) -> Script:
    """A script keyed by each item's tag (or, for an item without one, by its first image's bytes).

    ``respond(bench, index, truth_item)`` gives the response: a string, a ``(y1, y2)`` pair for
    forced rethinking, or an exception to raise.
    """
    by_tag, by_img = {}, {}
    for bench, ts in truth.items():
        for i, t in enumerate(ts):
            r = respond(bench, i, t)
            if t.get("tag"):
                by_tag[t["tag"]] = r
            else:
                by_img[eval_synth.png(tuple(t["colors"][0]))] = r

    def script(prompt: str, images: list[bytes], prefix: str | None) -> str:
        m = re.search(r"\[[a-z_]+-\d+\]", prompt)
        r = by_tag[m.group(0)] if m else by_img[images[0]]
        if isinstance(r, Exception):
            raise r
        if isinstance(r, tuple):
            return r[0] if prefix is None else r[1]
        assert prefix is None, "no continuation expected"
        return r

    return script
