"""Decoding back-ends of the evaluation: greedy first pass, then optional forced rethinking.

A ``Decoder`` turns a batch of ``EvalPrompt``s into ``Decoded`` results: the greedy first response
y1 and, when a rethinking trigger is given, the continuation of ``prompt + y1 + trigger`` (spec
section 7: at test time the trigger is always "\\n\\nWait").  A first response that did not end
with EOS (it hit ``max_new_tokens``) is not continued.  The continuation gets its own
``max_new_tokens`` budget; its full text is y1 + trigger + y2.

Back-ends:

- ``EngineDecoder``: an in-process rollout engine (``services.rollout.engines``; the ``hf`` engine
  on CPU, ``vllm`` on GPU) -- or any object with the ``Engine`` interface, which is how the tests
  of the runner inject a scripted engine.
- ``ModelDecoder``: a transformers model object in this process (the learner's current weights
  for the periodic eval), batched ``model.generate`` with left padding.
- ``ServerDecoder`` (evaluation.server_decoder): running rollout servers over HTTP, round-robin.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np

from evaluation.prompts import EvalPrompt

if TYPE_CHECKING:
    from services.rollout.engines import Engine, PromptInputs, SamplingParams


@dataclass(slots=True)
class Generation:
    """One decoded response."""

    text: str  # the response text (for a continuation: y1 + trigger + y2)
    finish_reason: str  # "stop" (EOS) | "length"
    n_tokens: int | None  # generated tokens (for a continuation: those of y2); None if unknown
    continuation: str | None = None  # y2 alone (continuations only)


@dataclass(slots=True)
class Decoded:
    first: Generation
    rethink: Generation | None = None  # None: not asked for, or y1 had no EOS


class Decoder(Protocol):
    """What the runner needs from a decoding back-end."""

    max_inflight: int  # batches the runner may have in flight at once

    async def decode(
        self, prompts: Sequence[EvalPrompt], *, max_new_tokens: int, rethink_trigger: str | None = None
    ) -> list[Decoded]: ...

    async def aclose(self) -> None: ...


def greedy_params(max_new_tokens: int) -> SamplingParams:
    from services.rollout.engines import SamplingParams

    return SamplingParams(n=1, temperature=0.0, top_p=1.0, top_k=-1, max_new_tokens=max_new_tokens)


class EngineDecoder:
    """Decode with an in-process engine (``Engine`` interface of services/rollout/engines/base.py)."""

    _ids = itertools.count()

    def __init__(self, engine: Engine, *, owns_engine: bool = False) -> None:
        self.engine = engine
        self.max_inflight = 1  # one process: batches run one after the other
        self._owns = owns_engine

    def _encode(self, p: EvalPrompt) -> PromptInputs:
        return self.engine.encode_question(p.question, p.images, p.suffix)

    async def decode(
        self, prompts: Sequence[EvalPrompt], *, max_new_tokens: int, rethink_trigger: str | None = None
    ) -> list[Decoded]:
        from services.rollout.engines import GenerationRequest

        if not prompts:
            return []
        params = greedy_params(max_new_tokens)
        inputs = await asyncio.to_thread(lambda: [self._encode(p) for p in prompts])
        tag = next(self._ids)
        reqs = [GenerationRequest(f"eval-{tag}-{i}", x, params) for i, x in enumerate(inputs)]
        results = await self.engine.generate(reqs)
        out = []
        firsts = []
        for res in results:
            c = res.completions[0]
            firsts.append(c)
            out.append(Decoded(Generation(text=c.text, finish_reason=c.finish_reason, n_tokens=len(c.token_ids))))
        if rethink_trigger is None:
            return out
        trig = np.asarray(self.engine.tokenizer.encode(rethink_trigger, add_special_tokens=False), dtype=np.int32)
        conts, where = [], []
        for i, c in enumerate(firsts):
            if c.finish_reason != "stop":
                continue
            prefix = np.concatenate([self.engine.strip_eos(np.asarray(c.token_ids, dtype=np.int32)), trig])
            conts.append(GenerationRequest(f"eval-{tag}-{i}-r", inputs[i], params, prefix_token_ids=prefix))
            where.append((i, prefix))
        if not conts:
            return out
        cont_results = await self.engine.continue_from(conts)
        for (i, prefix), res in zip(where, cont_results):
            c2 = res.completions[0]
            y2 = self.engine.strip_eos(np.asarray(c2.token_ids, dtype=np.int32))
            full = self.engine.decode(np.concatenate([prefix, y2]))
            out[i].rethink = Generation(
                text=full, finish_reason=c2.finish_reason, n_tokens=len(c2.token_ids), continuation=c2.text
            )
        return out

    async def aclose(self) -> None:
        if self._owns:
            await self.engine.close()


class ModelDecoder:
    """Greedy decoding with a transformers Qwen2.5-VL model object and its processor (no engine).

    Used by the learner's periodic eval on its own in-memory weights.  Prompts are built with
    ``common.model_loading.build_prompt_inputs`` (the same chat format, suffix and pixel limits as
    the rollout engines); rows are left-padded into batches of ``max_batch``.  The model is put in
    eval mode for the call and back in its previous mode afterwards.
    """

    def __init__(
        self,
        model: Any,  # transformers PreTrainedModel, untyped
        processor: Any,  # transformers ProcessorMixin, untyped
        *,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        max_batch: int = 8,
    ) -> None:
        self.model = model
        self.processor = processor
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.max_batch = max(1, max_batch)
        self.max_inflight = 1
        tok = processor.tokenizer
        gc = model.generation_config
        eos = gc.eos_token_id
        ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        if tok.eos_token_id is not None:
            ids.add(int(tok.eos_token_id))
        if not ids:
            raise ValueError("the model defines no EOS token")
        self.eos = frozenset(int(i) for i in ids)
        self.pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else min(self.eos))

    def _encode(self, p: EvalPrompt) -> dict[str, Any]:
        from common.model_loading import build_prompt_inputs

        return build_prompt_inputs(
            self.processor, p.question, p.images, p.suffix, min_pixels=self.min_pixels, max_pixels=self.max_pixels
        )

    def _batch(self, rows: list[tuple[dict[str, Any], list[int] | None]]) -> dict[str, Any]:
        import torch

        device = next(self.model.parameters()).device
        seqs, masks, mms, pvs, grids = [], [], [], [], []
        for t, prefix in rows:
            ids = t["input_ids"].reshape(-1)
            mm = t["mm_token_type_ids"].reshape(-1)
            mask = t["attention_mask"].reshape(-1)
            if prefix:
                p = torch.as_tensor(prefix, dtype=ids.dtype)
                ids, mm, mask = torch.cat([ids, p]), torch.cat([mm, torch.zeros_like(p)]), torch.cat([mask, torch.ones_like(p)])
            seqs.append(ids)
            masks.append(mask)
            mms.append(mm)
            if t.get("pixel_values") is not None:
                pvs.append(t["pixel_values"])
                grids.append(t["image_grid_thw"])
        width = max(s.numel() for s in seqs)

        def lpad(x: torch.Tensor, value: int) -> torch.Tensor:
            return torch.cat([torch.full((width - x.numel(),), value, dtype=x.dtype), x])

        batch = {
            "input_ids": torch.stack([lpad(s, self.pad_id) for s in seqs]),
            "attention_mask": torch.stack([lpad(m, 0) for m in masks]),
            "mm_token_type_ids": torch.stack([lpad(m, 0) for m in mms]),
        }
        if pvs:
            batch["pixel_values"] = torch.cat(pvs)
            batch["image_grid_thw"] = torch.cat(grids)
        return {k: v.to(device) for k, v in batch.items()}

    def _generate_rows(self, rows: list[tuple[dict[str, Any], list[int] | None]], max_new_tokens: int) -> list[tuple[list[int], str]]:
        import copy

        import torch

        gc = copy.deepcopy(self.model.generation_config)
        gc.do_sample = False
        gc.temperature, gc.top_p, gc.top_k = 1.0, 1.0, 0
        gc.max_new_tokens = max_new_tokens
        gc.eos_token_id = sorted(self.eos)
        gc.pad_token_id = self.pad_id
        gc.num_return_sequences = 1
        gc.repetition_penalty = 1.0
        out: list[tuple[list[int], str]] = []
        for c0 in range(0, len(rows), self.max_batch):
            batch = self._batch(rows[c0 : c0 + self.max_batch])
            with torch.no_grad():
                seqs = self.model.generate(**batch, generation_config=gc)
            if not isinstance(seqs, torch.Tensor):
                seqs = seqs.sequences
            for row in seqs[:, batch["input_ids"].shape[1] :].cpu().tolist():
                end, reason = len(row), "length"
                for t, tok in enumerate(row):
                    if tok in self.eos:
                        end, reason = t + 1, "stop"
                        break
                out.append((row[:end], reason))
        return out

    def _strip(self, ids: list[int]) -> list[int]:
        return ids[:-1] if ids and ids[-1] in self.eos else ids

    def _decode_sync(self, prompts: Sequence[EvalPrompt], max_new_tokens: int, trigger: str | None) -> list[Decoded]:
        tok = self.processor.tokenizer
        was_training = bool(getattr(self.model, "training", False))
        self.model.eval()
        try:
            inputs = [self._encode(p) for p in prompts]
            firsts = self._generate_rows([(x, None) for x in inputs], max_new_tokens)
            out = [
                Decoded(Generation(text=tok.decode(ids, skip_special_tokens=True), finish_reason=r, n_tokens=len(ids)))
                for ids, r in firsts
            ]
            if trigger is None:
                return out
            trig = list(tok.encode(trigger, add_special_tokens=False))
            todo = [(i, self._strip(ids) + trig) for i, (ids, r) in enumerate(firsts) if r == "stop"]
            conts = self._generate_rows([(inputs[i], prefix) for i, prefix in todo], max_new_tokens)
            for (i, prefix), (ids, r) in zip(todo, conts):
                out[i].rethink = Generation(
                    text=tok.decode(prefix + self._strip(ids), skip_special_tokens=True),
                    finish_reason=r,
                    n_tokens=len(ids),
                    continuation=tok.decode(ids, skip_special_tokens=True),
                )
            return out
        finally:
            self.model.train(was_training)

    async def decode(
        self, prompts: Sequence[EvalPrompt], *, max_new_tokens: int, rethink_trigger: str | None = None
    ) -> list[Decoded]:
        if not prompts:
            return []
        return await asyncio.to_thread(self._decode_sync, list(prompts), max_new_tokens, rethink_trigger)

    async def aclose(self) -> None:
        return None
