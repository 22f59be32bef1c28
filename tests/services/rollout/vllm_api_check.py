"""Opt-in lane (``make test-vllm-api``): every vLLM name and signature the vLLM engine uses exists.

Runs in its own venv (``.venv-vllm``: ``vllm==0.33.0`` + pytest) and needs no GPU: it imports vLLM,
inspects classes and signatures, builds the exact ``AsyncEngineArgs`` and ``SamplingParams`` our
engine builds, and imports our engine module.  The file name does not match pytest's ``test_*.py``
pattern, so the normal suite never collects it.  Keep this list in sync with
services/rollout/engines/vllm.py and vllm_worker.py.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import typing
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

vllm = pytest.importorskip("vllm")


def params(fn) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(fn).parameters)


def test_version_is_pinned():
    assert vllm.__version__.startswith("0.33"), vllm.__version__


def test_engine_args_fields():
    from vllm import AsyncEngineArgs

    fields = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    used = {
        "model", "tokenizer", "dtype", "trust_remote_code", "tensor_parallel_size", "gpu_memory_utilization",
        "max_model_len", "enforce_eager", "seed", "enable_prefix_caching", "logprobs_mode", "worker_extension_cls",
        "limit_mm_per_prompt", "mm_processor_kwargs", "disable_log_stats",
    }
    assert used <= fields, sorted(used - fields)


def test_logprobs_mode_accepts_raw_logprobs():
    from vllm.config.model import LogprobsMode  # 0.33: not re-exported by vllm.config

    assert "raw_logprobs" in typing.get_args(LogprobsMode)


def test_async_llm_methods():
    from vllm.v1.engine.async_llm import AsyncLLM

    assert "engine_args" in params(AsyncLLM.from_engine_args)
    gen = params(AsyncLLM.generate)
    assert {"prompt", "sampling_params", "request_id"} <= gen.keys()
    assert inspect.isasyncgenfunction(AsyncLLM.generate)
    rpc = params(AsyncLLM.collective_rpc)
    assert {"method", "timeout", "args", "kwargs"} <= rpc.keys()
    assert inspect.iscoroutinefunction(AsyncLLM.collective_rpc)
    assert inspect.iscoroutinefunction(AsyncLLM.reset_prefix_cache)
    assert "timeout" in params(AsyncLLM.collective_rpc)  # our calls pass method + args only
    assert callable(AsyncLLM.shutdown)


def test_sampling_params_and_prompt_types():
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    sp = SamplingParams(
        n=4, temperature=1.0, top_p=0.95, top_k=40, max_tokens=16, seed=1, logprobs=0, prompt_logprobs=0,
        output_kind=RequestOutputKind.FINAL_ONLY, skip_special_tokens=True,
    )
    assert sp.n == 4 and sp.logprobs == 0 and sp.prompt_logprobs == 0
    SamplingParams(temperature=0.0, top_p=1.0, top_k=0, max_tokens=4)  # greedy, top-k disabled
    tp = TokensPrompt(prompt_token_ids=[1, 2, 3])
    tp["multi_modal_data"] = {"image": []}
    assert "multi_modal_data" in TokensPrompt.__annotations__ or "multi_modal_data" in typing.get_type_hints(TokensPrompt)


def test_logprob_containers_index_by_position_then_token():
    """Our engine reads ``o.logprobs[i][token].logprob`` and slices ``prompt_logprobs``: both the
    list-of-dicts form and ``FlatLogprobs`` support it."""
    from vllm.logprobs import FlatLogprobs, Logprob

    flat = FlatLogprobs()
    flat.append(None)  # the first prompt position has no log-prob
    flat.append({5: Logprob(logprob=-0.5)})
    flat.append({7: Logprob(logprob=-1.5)})
    tail = flat[len(flat) - 2 :]
    assert [entry[tok].logprob for entry, tok in zip(tail, [5, 7])] == [-0.5, -1.5]


def test_output_fields():
    from vllm.outputs import CompletionOutput, RequestOutput

    comp = {f.name for f in dataclasses.fields(CompletionOutput)} if dataclasses.is_dataclass(CompletionOutput) else set(params(CompletionOutput.__init__))
    assert {"token_ids", "logprobs", "finish_reason", "text"} <= comp, comp
    req = set(params(RequestOutput.__init__))
    assert {"prompt_token_ids", "prompt_logprobs", "outputs", "finished"} <= req, req
    try:
        from vllm.logprobs import Logprob
    except ImportError:  # older layout
        from vllm.sequence import Logprob
    assert Logprob(logprob=-1.0).logprob == -1.0


def test_worker_side_names():
    from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    assert "weights" in params(Qwen2_5_VLForConditionalGeneration.load_weights)
    assert callable(GPUModelRunner.get_model)


def test_worker_attributes_our_extension_reads():
    """The extension reads ``self.rank``, ``self.device`` and ``self.model_runner`` of the worker."""
    from vllm.v1.worker.worker_base import WorkerBase

    src = inspect.getsource(WorkerBase.__init__)
    for attr in ("self.rank = rank", "self.device", "self.model_runner"):
        assert attr in src, attr


def test_extension_mixes_into_the_gpu_worker_without_conflict():
    """vLLM asserts that no attribute of the extension class exists on its worker class (other than
    dunders) before it adds the class to the worker's bases; every public method is then callable
    through ``collective_rpc``."""
    from vllm.v1.worker.gpu_worker import Worker

    from services.rollout.engines.vllm_worker import WeightLoaderExtension

    ours = [a for a in dir(WeightLoaderExtension) if not a.startswith("__")]
    assert not [a for a in ours if hasattr(Worker, a)]
    rpc = {"load_checkpoint", "weight_sync_init", "weight_sync_receive", "weight_sync_apply", "weight_sync_drop"}
    assert rpc <= set(ours)


def test_qwen2_5_vl_maps_transformers_names():
    """The learner sends transformers' ``named_parameters()`` names; the model's ``load_weights``
    maps them through its ``hf_to_vllm_mapper``."""
    from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration

    mapper = Qwen2_5_VLForConditionalGeneration.hf_to_vllm_mapper
    names = [
        "model.language_model.layers.0.self_attn.q_proj.weight",
        "model.visual.blocks.0.attn.qkv.weight",
        "lm_head.weight",
    ]
    mapped = mapper.apply_list(names)
    assert mapped == [
        "language_model.model.layers.0.self_attn.q_proj.weight",
        "visual.blocks.0.attn.qkv.weight",
        "language_model.lm_head.weight",
    ], mapped


def test_our_engine_builds_its_arguments(tmp_path):
    from common.config import load_config
    from services.rollout.engines.vllm import WORKER_EXTENSION, VLLMEngine, collapse_image_pads
    from services.rollout.engines.vllm_worker import WeightLoaderExtension

    cfg = load_config(None, [f"model.path={tmp_path}", "rollout.engine=vllm"])
    args = VLLMEngine(cfg).engine_args()
    assert args.worker_extension_cls == WORKER_EXTENSION and args.logprobs_mode == "raw_logprobs"
    assert hasattr(WeightLoaderExtension, "load_checkpoint") and hasattr(WeightLoaderExtension, "weight_sync_receive")
    assert VLLMEngine.worker_receive
    assert collapse_image_pads([1, 9, 9, 9, 2, 9, 9, 3], 9) == [1, 9, 2, 9, 3]
