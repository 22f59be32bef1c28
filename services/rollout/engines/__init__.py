"""Generation engines behind one interface (public API; see docs/rollout.md).

``make_engine(cfg)`` builds the backend named by ``cfg.rollout.engine``: ``hf`` (transformers,
CPU or GPU) or ``vllm`` (vLLM ``AsyncLLM``, GPU only).  Typical local use (evaluation)::

    from services.rollout.engines import make_engine, GenerationRequest, SamplingParams

    engine = make_engine(cfg)
    await engine.start()
    prompt = engine.encode_question(question, images, cfg.data.prompt_suffix)
    [res] = await engine.generate([GenerationRequest("q1", prompt, SamplingParams(temperature=0, max_new_tokens=2048))])
    text = res.completions[0].text
    await engine.close()
"""

from __future__ import annotations

from typing import Any

from common.config import RethinkerConfig
from services.rollout.engines.base import (
    Completion,
    Engine,
    EngineError,
    GenerationRequest,
    GenerationResult,
    PromptInputs,
    SamplingParams,
)

__all__ = [
    "Completion",
    "Engine",
    "EngineError",
    "GenerationRequest",
    "GenerationResult",
    "PromptInputs",
    "SamplingParams",
    "make_engine",
]


def make_engine(cfg: RethinkerConfig, *, engine: str | None = None, **kwargs: Any) -> Engine:
    """The engine named by ``engine`` or ``cfg.rollout.engine`` (not started: ``await e.start()``)."""
    name = engine or cfg.rollout.engine
    if name == "hf":
        from services.rollout.engines.hf import HFEngine

        return HFEngine(cfg, **kwargs)
    if name == "vllm":
        from services.rollout.engines.vllm import VLLMEngine

        return VLLMEngine(cfg, **kwargs)
    raise EngineError(f"rollout.engine must be 'hf' or 'vllm', got {name!r}")
