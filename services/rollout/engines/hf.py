"""The transformers engine: batched ``model.generate`` on CPU or GPU (tests, CPU demo, evaluation).

All model work runs in a one-thread executor, so the server's event loop (heartbeats, HTTP) stays
responsive while torch computes (torch releases the GIL inside its kernels) and so that generation
and weight swaps are naturally serialized.

Batching: every request is expanded into ``n`` rows; rows with equal sampling parameters are
left-padded into batches of at most ``rollout.hf_max_batch_rows`` and generated together (pixel
values of the rows are concatenated, which is how the Qwen2.5-VL processor batches images).  With
``rollout.hf_shared_prefill`` (default) the ``n`` rows of a prompt share one prefill: the distinct
prompts run once and their KV cache is repeated per row before decoding, so a group of 8 pays for
its prompt (and image) once instead of 8 times.  A
continuation row is ``prompt + prefix`` with ``mm_token_type_ids`` extended by zeros.  Continuations
share the prefill the same way: each distinct prompt runs once, one forward appends every row's
prefix to its copy of the prompt's cache, and the logits of that forward are the prefix's
log-probs under the current weights.  Without the shared prefill every continuation row is
prefilled in full and its prefix log-probs come from one extra teacher-forced forward.
Sampler log-probs are ``log_softmax`` of the raw logits (``output_logits=True``), which match the
learner's teacher-forced log-probs.

The sampling settings start from the model's ``generation_config`` (so token suppression such as
the tiny model's vision-placeholder ban is kept) and override temperature, top-p, top-k, length
and repetition penalty (1.0) from the request.
"""

from __future__ import annotations

import asyncio
import copy
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Container, Sequence

import numpy as np
import torch

from common.config import RethinkerConfig
from common.logging import get_logger
from services.rollout.engines.base import (
    Completion,
    Engine,
    EngineError,
    GenerationRequest,
    GenerationResult,
    PromptInputs,
    SamplingParams,
    WeightsLike,
    as_int32,
    iter_named,
)

log = get_logger("rollout.hf")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class HFEngine(Engine):
    name = "hf"

    def __init__(self, cfg: RethinkerConfig, *, model_path: str | None = None, device: str | None = None) -> None:
        super().__init__(cfg)
        self.model_path = model_path or cfg.model.path
        self.device = resolve_device(device or cfg.rollout.device)
        self.max_rows = cfg.rollout.hf_max_batch_rows
        self.shared_prefill = cfg.rollout.hf_shared_prefill
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-engine")
        self._model: Any = None
        self._pad_id = 0
        self._gen_config: Any = None

    # ---------------------------------------------------------------- lifecycle

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def start(self, initial_version: int = 0) -> None:
        await self._run(self._load_sync)
        self._version = int(initial_version)
        log.info("engine_ready", engine=self.name, model=self.model_path, device=str(self.device), version=self._version)

    def _load_sync(self) -> None:
        from common.model_loading import load_model, load_processor
        from devtools.tiny_model import ensure_model

        if self.model_path == self.cfg.model.path:
            self.model_path = ensure_model(self.cfg.model)  # builds the tiny model when configured
        dtype = _DTYPES[self.cfg.model.dtype]
        if self.device.type == "cpu" and dtype == torch.float16:
            dtype = torch.float32  # fp16 matmuls are not supported on every CPU
        model = load_model(
            self.model_path,
            dtype=dtype,
            attn_implementation=self.cfg.model.attn_implementation,
            device=str(self.device),
            trust_remote_code=self.cfg.model.trust_remote_code,
        )
        model.requires_grad_(False)
        self._model = model
        self._processor = load_processor(
            self.model_path, min_pixels=self.cfg.data.min_pixels, max_pixels=self.cfg.data.max_pixels
        )
        tok = self.tokenizer
        gc = copy.deepcopy(self._model.generation_config)
        eos = gc.eos_token_id
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        if tok.eos_token_id is not None:
            eos_ids.add(int(tok.eos_token_id))
        if not eos_ids:
            raise EngineError(f"model {self.model_path!r} defines no EOS token")
        self._eos = frozenset(int(e) for e in eos_ids)
        self._pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else min(self._eos))
        gc.eos_token_id = sorted(self._eos)
        gc.pad_token_id = self._pad_id
        gc.repetition_penalty = 1.0
        gc.num_return_sequences = 1
        gc.return_dict_in_generate = True
        gc.output_logits = True
        gc.output_scores = False
        self._gen_config = gc

    async def close(self) -> None:
        # waits (off the loop) for a generation still running in the executor, e.g. after a cancel
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)

    # ---------------------------------------------------------------- tokenization

    @property
    def model(self) -> Any:
        return self._model

    def encode_question(
        self, question: str, images: Sequence[Any], prompt_suffix: str = "", system: str | None = None
    ) -> PromptInputs:
        from common.model_loading import build_prompt_inputs

        inputs = build_prompt_inputs(
            self.processor,
            question,
            list(images),
            prompt_suffix,
            min_pixels=self.cfg.data.min_pixels,
            max_pixels=self.cfg.data.max_pixels,
            system=system,
        )
        tensors = {k: v for k, v in dict(inputs).items() if isinstance(v, torch.Tensor)}
        ids = tensors["input_ids"].reshape(-1)
        if ids.numel() > self.cfg.data.max_prompt_tokens:
            raise EngineError(f"prompt has {ids.numel()} tokens > data.max_prompt_tokens={self.cfg.data.max_prompt_tokens}")
        return PromptInputs(token_ids=as_int32(ids.numpy()), tensors=tensors)

    # ---------------------------------------------------------------- generation

    async def _generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        return await self._run(self._generate_sync, requests, self._version)

    def _rows_inputs(self, rows: list[tuple[PromptInputs, np.ndarray | None]]) -> dict[str, torch.Tensor]:
        """Left-pad rows of (prompt, prefix) into one batch."""
        seqs, masks, mms, pvs, grids = [], [], [], [], []
        for prompt, prefix in rows:
            t = prompt.tensors
            ids = t["input_ids"].reshape(-1)
            mm = t.get("mm_token_type_ids")
            mm = mm.reshape(-1) if mm is not None else torch.zeros_like(ids)
            mask = t["attention_mask"].reshape(-1) if "attention_mask" in t else torch.ones_like(ids)
            if prefix is not None and len(prefix):
                p = torch.as_tensor(np.asarray(prefix, dtype=np.int64))
                ids = torch.cat([ids, p])
                mm = torch.cat([mm, torch.zeros_like(p)])
                mask = torch.cat([mask, torch.ones_like(p)])
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
            "input_ids": torch.stack([lpad(s, self._pad_id) for s in seqs]),
            "attention_mask": torch.stack([lpad(m, 0) for m in masks]),
            "mm_token_type_ids": torch.stack([lpad(m, 0) for m in mms]),
        }
        if pvs:
            batch["pixel_values"] = torch.cat(pvs)
            batch["image_grid_thw"] = torch.cat(grids)
        return {k: v.to(self.device) for k, v in batch.items()}

    def _gen_config_for(self, p: SamplingParams) -> Any:
        gc = copy.deepcopy(self._gen_config)
        gc.max_new_tokens = p.max_new_tokens
        if p.temperature == 0:
            gc.do_sample = False
            gc.temperature, gc.top_p, gc.top_k = 1.0, 1.0, 0
        else:
            gc.do_sample = True
            gc.temperature, gc.top_p = p.temperature, p.top_p
            gc.top_k = p.top_k if p.top_k > 0 else 0
        return gc

    @torch.inference_mode()
    def _generate_sync(self, requests: list[GenerationRequest], version: int) -> list[GenerationResult]:
        completions: list[list[Completion | None]] = [[None] * r.params.n for r in requests]
        prefix_lps: dict[int, np.ndarray] = {}  # continuations whose prefix log-probs came with their prefill
        # Rows grouped by sampling params (one generate call per group and chunk).
        groups: dict[tuple, list[tuple[int, int]]] = {}
        for i, r in enumerate(requests):
            for j in range(r.params.n):
                groups.setdefault(r.params.key(), []).append((i, j))
        for key, rows in groups.items():
            params = requests[rows[0][0]].params
            gc = self._gen_config_for(params)
            for c0 in range(0, len(rows), self.max_rows):
                chunk = rows[c0 : c0 + self.max_rows]
                seed = requests[chunk[0][0]].params.seed
                out = width = None
                if self.shared_prefill and all(requests[i].prefix_token_ids is not None for i, _ in chunk):
                    out, width = self._generate_continuations(requests, chunk, gc, seed, c0, prefix_lps)
                elif self.shared_prefill and len({i for i, _ in chunk}) < len(chunk):
                    out, width = self._generate_shared_prompts(requests, chunk, gc, seed, c0)
                if out is None:
                    batch = self._rows_inputs([(requests[i].prompt, requests[i].prefix_token_ids) for i, _ in chunk])
                    if seed is not None:
                        torch.manual_seed(seed + c0)
                    out = self._model.generate(**batch, generation_config=gc)
                    width = batch["input_ids"].shape[1]
                seqs = out.sequences[:, width:].cpu()
                logits = torch.stack(out.logits, dim=1)  # (rows, steps, vocab)
                lps = torch.log_softmax(logits.float(), dim=-1).gather(-1, seqs.to(logits.device).unsqueeze(-1))
                lps = lps.squeeze(-1).cpu()
                for row, (i, j) in enumerate(chunk):
                    ids = seqs[row].tolist()
                    end, reason = len(ids), "length"
                    for t, tok in enumerate(ids):
                        if tok in self._eos:
                            end, reason = t + 1, "stop"
                            break
                    tok_ids = as_int32(ids[:end])
                    completions[i][j] = Completion(
                        token_ids=tok_ids,
                        logprobs=np.ascontiguousarray(lps[row, :end].numpy().astype(np.float32)),
                        finish_reason=reason,  # type: ignore[arg-type]
                        text=self.decode(tok_ids),
                        policy_version=version,
                    )
        prefix_lps.update(self._prefix_logprobs(requests, skip=prefix_lps))
        return [
            GenerationResult(
                request_id=r.request_id,
                completions=[c for c in completions[i] if c is not None],
                prompt_token_ids=r.prompt.token_ids,
                policy_version=version,
                prefix_logprobs=prefix_lps.get(i),
            )
            for i, r in enumerate(requests)
        ]

    @property
    def _inner(self) -> Any:
        """The model under the generation head (it holds the 3D-rope offsets of the last prefill)."""
        return getattr(self._model, "model", self._model)

    def _prefill_prompts(self, uniq: dict[str, torch.Tensor], index: torch.Tensor) -> tuple[dict[str, Any], torch.Tensor]:
        """Run the distinct prompts of ``uniq`` (all but their last token) once and repeat their KV
        cache for the rows ``index`` maps to them.  Returns the cache as the keyword arguments the
        model takes it in, and the rows' 3D-rope offsets; raises ``EngineError`` when the installed
        transformers returns no cache or offsets to continue from."""
        ids, mask, mm = uniq["input_ids"], uniq["attention_mask"], uniq["mm_token_type_ids"]
        pre = self._model(
            input_ids=ids[:, :-1], attention_mask=mask[:, :-1], mm_token_type_ids=mm[:, :-1],
            pixel_values=uniq.get("pixel_values"), image_grid_thw=uniq.get("image_grid_thw"), use_cache=True,
        )
        cache = getattr(pre, "cache", None) or getattr(pre, "past_key_values", None)
        deltas = getattr(self._inner, "rope_deltas", None)
        if cache is None or deltas is None or not hasattr(cache, "batch_select_indices"):
            raise EngineError("the model returned no KV cache / rope offsets to continue from")
        cache.batch_select_indices(index)
        kwargs = {"cache" if "cache" in _forward_params(self._model) else "past_key_values": cache}
        return kwargs, deltas.index_select(0, index.to(deltas.device))

    def _generate_shared_prompts(
        self, requests: list[GenerationRequest], chunk: list[tuple[int, int]], gc: Any, seed: int | None, c0: int
    ) -> tuple[Any, int | None]:
        """Generate ``chunk`` with one prefill per distinct prompt: the prompts (all but their last
        token) run once, their KV cache and 3D-rope offsets are repeated for each of the prompt's
        rows, and ``generate`` continues from there.  Same rows, padding and positions as the plain
        path, so the same tokens and log-probs up to float rounding.  Returns ``(None, None)`` when
        the installed transformers cannot continue from a given cache (the caller falls back to the
        plain path and this path stays off)."""
        order: list[int] = []
        for i, _ in chunk:
            if not order or order[-1] != i:
                order.append(i)
        if len(order) != len(set(order)):
            return None, None  # rows of one request are not contiguous: plain path
        uniq = self._rows_inputs([(requests[i].prompt, requests[i].prefix_token_ids) for i in order])
        counts = torch.tensor([sum(1 for i, _ in chunk if i == u) for u in order])
        index = torch.repeat_interleave(torch.arange(len(order)), counts).to(self.device)
        ids, mask, mm = uniq["input_ids"], uniq["attention_mask"], uniq["mm_token_type_ids"]
        try:
            kwargs, deltas = self._prefill_prompts(uniq, index)
            self._inner.rope_deltas = deltas
            if seed is not None:
                torch.manual_seed(seed + c0)
            out = self._model.generate(
                input_ids=ids.index_select(0, index), attention_mask=mask.index_select(0, index),
                mm_token_type_ids=mm.index_select(0, index), generation_config=gc, **kwargs,
            )
        except Exception as exc:  # noqa: BLE001 - an unsupported transformers version: plain path from now on
            self.shared_prefill = False
            log.warning("shared_prefill_off", error=f"{type(exc).__name__}: {exc}")
            return None, None
        return out, int(ids.shape[1])

    def _generate_continuations(
        self, requests: list[GenerationRequest], chunk: list[tuple[int, int]], gc: Any, seed: int | None, c0: int,
        prefix_lps: dict[int, np.ndarray],
    ) -> tuple[Any, int | None]:
        """Generate a chunk of continuations with one prefill per distinct prompt.

        1. The distinct prompts (all but their last token) run once, image included; their KV cache
           and 3D-rope offsets are repeated for each continuation row of that prompt.
        2. One forward over each row's ``last prompt token + prefix`` extends the cache; its logits
           are the prefix's teacher-forced log-probs (written to ``prefix_lps``), so no second
           forward over prompt and prefix is needed.  Rows with shorter prefixes get a masked gap
           between prompt and prefix: positions follow the attention mask, so the gap shifts none.
        3. ``generate`` continues from the last prefix token.

        Same tokens and log-probs as the plain path up to float rounding.  Returns ``(None, None)``
        (and this path stays off) when the installed transformers cannot continue from a cache."""
        rows = [i for i, _ in chunk]
        slot: dict[int, int] = {}  # id(prompt inputs) -> row of the distinct-prompt batch
        distinct: list[PromptInputs] = []
        for i in rows:
            if id(requests[i].prompt) not in slot:
                slot[id(requests[i].prompt)] = len(distinct)
                distinct.append(requests[i].prompt)
        uniq = self._rows_inputs([(p, None) for p in distinct])
        index = torch.tensor([slot[id(requests[i].prompt)] for i in rows], device=self.device)
        ids, mask, mm = (uniq[k].index_select(0, index) for k in ("input_ids", "attention_mask", "mm_token_type_ids"))
        prefixes = [torch.as_tensor(np.asarray(requests[i].prefix_token_ids, dtype=np.int64), device=ids.device) for i in rows]
        width = max(len(p) for p in prefixes) + 1
        seg = torch.full((len(rows), width), self._pad_id, dtype=ids.dtype, device=ids.device)
        seg_mask = torch.zeros((len(rows), width), dtype=mask.dtype, device=ids.device)
        for r, p in enumerate(prefixes):  # built where the prompts are: no copy of a device value to the host
            seg[r, width - len(p) - 1] = ids[r, -1]
            seg[r, width - len(p) :] = p
            seg_mask[r, width - len(p) - 1 :] = 1
        full_ids = torch.cat([ids[:, :-1], seg], dim=1)
        full_mask = torch.cat([mask[:, :-1], seg_mask], dim=1)
        full_mm = torch.cat([mm[:, :-1], torch.zeros_like(seg)], dim=1)  # the prompt's last token is text
        try:
            kwargs, deltas = self._prefill_prompts(uniq, index)
            start = ids.shape[1] - 1
            text_pos = (full_mask.long().cumsum(-1) - 1).clamp(min=0)[:, start : start + width - 1]
            position_ids = (text_pos + deltas.to(text_pos.device)).unsqueeze(0).expand(3, -1, -1)
            ext = self._model(
                input_ids=seg[:, :-1], attention_mask=full_mask[:, : start + width - 1], position_ids=position_ids,
                use_cache=True, **kwargs,
            )
            logp = torch.log_softmax(ext.logits.float(), dim=-1)
            for r, (i, p) in enumerate(zip(rows, prefixes)):
                lo = width - len(p) - 1  # the logits at the last prompt token predict the prefix's first token
                lp = logp[r, lo : lo + len(p)].gather(-1, p.unsqueeze(-1)).squeeze(-1)
                prefix_lps[i] = np.ascontiguousarray(lp.cpu().numpy().astype(np.float32))
            self._inner.rope_deltas = deltas
            if seed is not None:
                torch.manual_seed(seed + c0)
            out = self._model.generate(
                input_ids=full_ids, attention_mask=full_mask, mm_token_type_ids=full_mm, generation_config=gc, **kwargs,
            )
        except Exception as exc:  # noqa: BLE001 - an unsupported transformers version: plain path from now on
            for i in rows:
                prefix_lps.pop(i, None)
            self.shared_prefill = False
            log.warning("shared_prefill_off", error=f"{type(exc).__name__}: {exc}")
            return None, None
        return out, int(full_ids.shape[1])

    def _prefix_logprobs(self, requests: list[GenerationRequest], skip: Container[int] = ()) -> dict[int, np.ndarray]:
        """Teacher-forced log-probs of each continuation's prefix under the current weights (requests
        in ``skip`` already have theirs)."""
        from common.model_loading import teacher_forced_logprobs_batch

        idx = [i for i, r in enumerate(requests) if r.prefix_token_ids is not None and i not in skip]
        out: dict[int, np.ndarray] = {}
        for c0 in range(0, len(idx), self.max_rows):
            chunk = idx[c0 : c0 + self.max_rows]
            items = [(requests[i].prompt.tensors, np.asarray(requests[i].prefix_token_ids, dtype=np.int64)) for i in chunk]
            lps = teacher_forced_logprobs_batch(self._model, items, pad_token_id=self._pad_id)
            for i, lp in zip(chunk, lps):
                out[i] = np.ascontiguousarray(lp.detach().float().cpu().numpy().astype(np.float32))
        return out

    # ---------------------------------------------------------------- weights

    async def _load_weights(self, weights: WeightsLike, version: int) -> None:
        await self._run(self._load_weights_sync, weights)

    @torch.no_grad()
    def _load_weights_sync(self, weights: WeightsLike) -> None:
        if isinstance(weights, (str, os.PathLike)):
            weights = read_checkpoint(Path(weights))
        params = self._model.state_dict()  # detached views sharing storage (tied names included)
        n = 0
        for name, tensor in iter_named(weights):  # type: ignore[arg-type]
            key = resolve_param_name(name, params)
            if key is None:
                raise EngineError(f"unknown weight name {name!r} (not a parameter of the loaded model)")
            target = params[key]
            t = torch.as_tensor(tensor)
            if tuple(t.shape) != tuple(target.shape):
                raise EngineError(f"weight {name!r} has shape {tuple(t.shape)}, the model expects {tuple(target.shape)}")
            target.copy_(t.to(device=target.device, dtype=target.dtype))
            n += 1
        if n == 0:
            raise EngineError("no weights given")


def _forward_params(model: Any) -> frozenset[str]:
    import inspect

    return frozenset(inspect.signature(model.forward).parameters)


def resolve_param_name(name: str, params: Any) -> str | None:
    """``name`` as a key of the live state dict, accepting the on-disk (legacy) Qwen-VL layout.

    ``save_pretrained`` writes ``model.layers.*`` / ``visual.*`` while the live transformers-5 model
    names them ``model.language_model.layers.*`` / ``model.visual.*``; both are accepted.
    """
    if name in params:
        return name
    candidates = []
    if name.startswith("model.") and not name.startswith(("model.language_model.", "model.visual.")):
        candidates.append("model.language_model." + name[len("model.") :])
    if name.startswith("visual."):
        candidates.append("model." + name)
    if name.startswith("model.language_model."):
        candidates.append("model." + name[len("model.language_model.") :])
    if name.startswith("model.visual."):
        candidates.append(name[len("model.") :])
    for c in candidates:
        if c in params:
            return c
    return None


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the ``*.safetensors`` files of a Hugging Face model folder."""
    from safetensors.torch import load_file

    if not path.is_dir():
        raise EngineError(f"checkpoint folder {str(path)!r} does not exist")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise EngineError(f"checkpoint folder {str(path)!r} holds no .safetensors file")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(f)))
    return out
