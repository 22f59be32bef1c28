"""The vLLM engine: in-process ``AsyncLLM`` (vLLM 0.33, GPU only) behind the ``Engine`` interface.

Written against vLLM's documented API; every vLLM name used here is checked by the opt-in lane
``make test-vllm-api`` (tests/services/rollout/vllm_api_check.py).  It has not run on a GPU in
this repository yet (no GPU machine was available): see docs/rollout.md.

- Prompts go in as ``TokensPrompt`` with ONE ``<|image_pad|>`` per image (the chat template's form)
  plus the resized PIL images in ``multi_modal_data``; vLLM's multimodal processor expands the
  placeholders (vLLM's "tokenized + multi-modal inputs" path).  A continuation appends the prefix
  tokens (y1' + trigger) to those ids.  The expanded ids vLLM used come back in
  ``RequestOutput.prompt_token_ids`` and become the sample's ``prompt_token_ids``; they equal the
  HF processor's because images are resized by qwen-vl-utils before either processor sees them.
- Sampler log-probs: ``logprobs=0`` (the sampled token only) with the engine's
  ``logprobs_mode="raw_logprobs"`` (log-softmax of the raw logits, what the learner recomputes).
  Prefix log-probs of a continuation come from ``prompt_logprobs=0`` (the last ``len(prefix)``
  entries).
- Weights (``worker_receive``): vLLM's workers receive weight-sync rounds themselves through
  ``services.rollout.engines.vllm_worker.WeightLoaderExtension`` (``worker_extension_cls``), one
  member per tensor-parallel rank; this engine only starts a round in them with ``collective_rpc``
  (small JSON arguments, no tensor), waits for their outcomes, loads (``weight_sync_apply``), sets
  the version and resets the prefix cache.  ``load_weights(path)`` loads a checkpoint folder in the
  workers (cold start, resync).  Named tensors are refused: sending them through the RPC channel
  would serialize every tensor.  Generation is held back during a load by the engine's read/write
  lock.  Sleep/wake is not used.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from common.config import RethinkerConfig, reveal
from common.logging import get_logger
from services.rollout.engines.base import (
    Completion,
    Engine,
    EngineError,
    GenerationRequest,
    GenerationResult,
    PromptInputs,
    StagedRound,
    WeightsLike,
    _Write,
    as_int32,
)

if TYPE_CHECKING:
    from common.schemas.weights import JoinOutcome, WorkerMember

log = get_logger("rollout.vllm")

WORKER_EXTENSION = "services.rollout.engines.vllm_worker.WeightLoaderExtension"
IMAGE_PAD = "<|image_pad|>"


def collapse_image_pads(token_ids: Sequence[int], pad_id: int) -> list[int]:
    """Expanded prompt ids -> the chat template's form (each run of image pads becomes one pad)."""
    out: list[int] = []
    for t in token_ids:
        t = int(t)
        if t == pad_id and out and out[-1] == pad_id:
            continue
        out.append(t)
    return out


class VLLMEngine(Engine):
    name = "vllm"
    worker_receive = True

    def __init__(self, cfg: RethinkerConfig, *, model_path: str | None = None, max_images_per_prompt: int = 8) -> None:
        super().__init__(cfg)
        self.model_path = model_path or cfg.model.path
        self.max_images = max_images_per_prompt
        self._llm: Any = None
        self._pad_image_id = -1

    def engine_args(self) -> Any:
        """The ``AsyncEngineArgs`` this engine starts vLLM with."""
        from vllm import AsyncEngineArgs

        r = self.cfg.rollout
        return AsyncEngineArgs(
            model=self.model_path,
            tokenizer=self.model_path,
            dtype=self.cfg.model.dtype,
            trust_remote_code=self.cfg.model.trust_remote_code,
            tensor_parallel_size=r.tensor_parallel_size,
            gpu_memory_utilization=r.gpu_memory_utilization,
            max_model_len=r.max_model_len,
            enforce_eager=r.enforce_eager,
            seed=self.cfg.run.seed,
            enable_prefix_caching=True,
            logprobs_mode="raw_logprobs",
            worker_extension_cls=WORKER_EXTENSION,
            limit_mm_per_prompt={"image": self.max_images},
            mm_processor_kwargs={"min_pixels": self.cfg.data.min_pixels, "max_pixels": self.cfg.data.max_pixels},
            disable_log_stats=True,
        )

    async def start(self, initial_version: int = 0) -> None:
        from vllm.v1.engine.async_llm import AsyncLLM

        from common.model_loading import load_processor

        from devtools.tiny_model import ensure_model

        if self.model_path == self.cfg.model.path:
            self.model_path = ensure_model(self.cfg.model)
        self._processor = load_processor(
            self.model_path, min_pixels=self.cfg.data.min_pixels, max_pixels=self.cfg.data.max_pixels
        )
        tok = self._processor.tokenizer
        self._pad_image_id = int(tok.convert_tokens_to_ids(IMAGE_PAD))
        eos = {int(tok.eos_token_id)} if tok.eos_token_id is not None else set()
        try:
            from transformers import GenerationConfig

            gc = GenerationConfig.from_pretrained(self.model_path)
            e = gc.eos_token_id
            eos |= set(e if isinstance(e, (list, tuple)) else [e] if e is not None else [])
        except OSError:
            pass
        self._eos = frozenset(int(x) for x in eos)
        self._llm = AsyncLLM.from_engine_args(self.engine_args())
        self._version = int(initial_version)
        log.info("engine_ready", engine=self.name, model=self.model_path, version=self._version)

    async def close(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None

    # ---------------------------------------------------------------- tokenization

    def encode_question(
        self, question: str, images: Sequence[Any], prompt_suffix: str = "", system: str | None = None
    ) -> PromptInputs:
        from common.data.images import fetch_images
        from common.model_loading import build_prompt_inputs

        d = self.cfg.data
        pil = fetch_images(list(images), min_pixels=d.min_pixels, max_pixels=d.max_pixels) if images else []
        inputs = build_prompt_inputs(self.processor, question, pil, prompt_suffix, d.min_pixels, d.max_pixels, system=system)
        ids = inputs["input_ids"].reshape(-1).tolist()
        if len(ids) > d.max_prompt_tokens:
            raise EngineError(f"prompt has {len(ids)} tokens > data.max_prompt_tokens={d.max_prompt_tokens}")
        return PromptInputs(
            token_ids=as_int32(ids),
            images=pil,
            tensors={"engine_prompt_ids": collapse_image_pads(ids, self._pad_image_id)},
        )

    # ---------------------------------------------------------------- generation

    def _sampling_params(self, req: GenerationRequest) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        p = req.params
        return SamplingParams(
            n=p.n,
            temperature=p.temperature,
            top_p=p.top_p if p.temperature > 0 else 1.0,
            top_k=p.top_k if p.top_k > 0 else 0,
            max_tokens=p.max_new_tokens,
            seed=p.seed,
            logprobs=0,
            prompt_logprobs=0 if req.prefix_token_ids is not None else None,
            output_kind=RequestOutputKind.FINAL_ONLY,
            skip_special_tokens=True,
        )

    async def _one(self, req: GenerationRequest, version: int) -> GenerationResult:
        from vllm.inputs import TokensPrompt

        prefix = [] if req.prefix_token_ids is None else [int(t) for t in req.prefix_token_ids]
        ids = list(req.prompt.tensors["engine_prompt_ids"]) + prefix
        prompt: Any = TokensPrompt(prompt_token_ids=ids)
        if req.prompt.images:
            prompt["multi_modal_data"] = {"image": list(req.prompt.images)}
        final = None
        async for out in self._llm.generate(prompt, self._sampling_params(req), request_id=f"{req.request_id}-{uuid.uuid4().hex[:8]}"):
            final = out
        if final is None:
            raise EngineError(f"vLLM returned no output for {req.request_id}")
        full_prompt = [int(t) for t in final.prompt_token_ids]
        prompt_ids = full_prompt[: len(full_prompt) - len(prefix)]
        prefix_lps = None
        if prefix:
            plp = final.prompt_logprobs or []
            tail = plp[len(plp) - len(prefix) :]
            prefix_lps = np.asarray([entry[tok].logprob for entry, tok in zip(tail, prefix)], dtype=np.float32)
        completions = []
        for o in final.outputs:
            toks = [int(t) for t in o.token_ids]
            lps = np.asarray([o.logprobs[i][t].logprob for i, t in enumerate(toks)], dtype=np.float32)
            completions.append(
                Completion(
                    token_ids=as_int32(toks),
                    logprobs=lps,
                    finish_reason="stop" if o.finish_reason == "stop" else "length",
                    text=o.text,
                    policy_version=version,
                )
            )
        return GenerationResult(
            request_id=req.request_id,
            completions=completions,
            prompt_token_ids=as_int32(prompt_ids),
            policy_version=version,
            prefix_logprobs=prefix_lps,
        )

    async def _generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        import asyncio

        version = self._version
        return list(await asyncio.gather(*(self._one(r, version) for r in requests)))

    # ---------------------------------------------------------------- weights

    async def _rpc(self, method: str, *args: Any) -> list[Any]:
        if self._llm is None:
            raise EngineError("the vLLM engine is not started")
        return list(await self._llm.collective_rpc(method, args=args))

    async def init_worker_receive(self, server_id: str) -> list[WorkerMember]:
        from common.schemas.weights import WorkerMember

        w = self.cfg.learner.weight_sync
        settings = {"server_id": server_id, "backend": w.backend, "token": reveal(w.token), "staging": w.staging}
        members = [WorkerMember.from_dict(d) for d in await self._rpc("weight_sync_init", settings)]
        log.info("worker_receive_ready", engine=self.name, members=[m.member_id for m in members], backend=w.backend)
        return members

    async def receive_round(self, round_json: str, *, mode: str) -> list[JoinOutcome]:
        from common.schemas.weights import JoinOutcome, RoundDescriptor

        if mode != "load":
            return [JoinOutcome.from_dict(d) for d in await self._rpc("weight_sync_receive", round_json, mode)]
        version = RoundDescriptor.from_json(round_json).version
        async with _Write(self._lock):  # bucket-by-bucket loading: no generation meanwhile
            outcomes = [JoinOutcome.from_dict(d) for d in await self._rpc("weight_sync_receive", round_json, mode)]
            if any(o.joined for o in outcomes):  # weights may have changed, even in a failed round
                await self._llm.reset_prefix_cache()
            if outcomes and all(o.joined and o.ok for o in outcomes):
                self._version = int(version)
        return outcomes

    async def drop_round(self) -> None:
        await self._rpc("weight_sync_drop")

    async def _load_weights(self, weights: WeightsLike, version: int) -> None:
        import os

        if isinstance(weights, StagedRound):
            counts = await self._rpc("weight_sync_apply", weights.round_id)
        elif isinstance(weights, (str, os.PathLike)):
            counts = await self._rpc("load_checkpoint", os.fspath(weights))
        else:
            raise EngineError(
                "the vLLM engine loads a checkpoint folder or a round its workers received "
                "(named tensors would be serialized through vLLM's RPC channel)"
            )
        await self._llm.reset_prefix_cache()
        log.info("weights_loaded", engine=self.name, version=version, tensors=counts)
