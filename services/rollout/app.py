"""HTTP face of a rollout server (FastAPI): ``create_app(server)``.

- ``POST /v1/generate``: chat messages with images (base64 / data URLs), sampling parameters,
  optional test-time forced rethinking ("\\n\\nWait"); used by evaluation.
- ``GET /v1/status``: engine, loaded version, tokens/s, in-flight tasks, actor counters and
  rethinking stats (triggered, kept, dropped by reason, accuracy before/after).
- ``GET /healthz``: 200 only when weights are loaded and the server is serving, else 503.
- ``GET /metrics``: Prometheus.

Bad requests get a 4xx with a reason naming the field (422 for schema violations, 400 for unusable
content such as an undecodable image, a remote image URL, an image over ``rollout.max_image_pixels``
or a prompt over ``data.max_prompt_tokens``), never a 500.

Bounded work per request: a body over ``rollout.max_body_bytes`` gets 413 before it is parsed
(``common.http_guard.BodyLimitMiddleware``); the prompt text is measured before tokenizing (text
longer than ``data.max_prompt_tokens`` times the longest vocabulary entry cannot fit and gets 400 at
once); ``sampling.max_new_tokens`` may not exceed ``rollout.max_model_len``; decoding images and
tokenizing run in a worker thread, so ``/healthz`` and ``/v1/status``
answer while a request is prepared or generated.  With ``rollout.api_token`` set, ``/v1/generate``
answers 401 unless the request carries ``Authorization: Bearer <rollout.api_token>``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import time
import uuid
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from common.data.schema import IMAGE_PLACEHOLDER
from common.http_guard import BodyLimitMiddleware, bearer_dependency
from common.metrics import metrics_response
from services.rollout import rethink
from services.rollout.engines.base import Engine, EngineError, GenerationRequest, PromptInputs, SamplingParams

if TYPE_CHECKING:
    from services.rollout.server import RolloutServer

MAX_N = 64
MAX_NEW_TOKENS = 32768
# Sampling below this temperature divides logits into inf/nan: 0 (greedy) or at least this.
MIN_TEMPERATURE = 0.01
MAX_SEED = 2**32 - 1
MAX_TOP_K = 2**31 - 1


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    url: str


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text", "image", "image_url"]
    text: str | None = None
    image: str | None = None  # base64 or data URL
    image_url: ImageURL | str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "user"]
    content: str | list[ContentPart]


class SamplingBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float = Field(0.0, ge=0.0, le=10.0, description=f"0 (greedy) or in [{MIN_TEMPERATURE}, 10]")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(-1, ge=-1, le=MAX_TOP_K, description="-1 or 0 disables top-k")
    max_new_tokens: int = Field(2048, ge=1, le=MAX_NEW_TOKENS)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: float) -> float:
        if 0.0 < v < MIN_TEMPERATURE:
            raise ValueError(f"must be 0 (greedy) or >= {MIN_TEMPERATURE}; smaller positive values overflow the logits")
        return v


class GenerateBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    messages: list[Message] = Field(min_length=1)
    sampling: SamplingBody = SamplingBody()
    prompt_suffix: str = ""  # appended to the last text part (e.g. data.prompt_suffix)
    force_rethink: bool = False  # test-time forced rethinking with rethink.eval_trigger
    return_token_ids: bool = False
    return_logprobs: bool = False


def _check_image(raw: bytes, where: str, max_pixels: int) -> None:
    """400 unless ``raw`` is an image whose header says at most ``max_pixels`` pixels (the header
    only is read: nothing is decompressed here)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as img:
            w, h = img.size
    except Image.DecompressionBombError as exc:
        raise HTTPException(400, f"{where}: image too large: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise HTTPException(400, f"{where}: not a readable image: {exc}") from None
    if w * h > max_pixels:
        raise HTTPException(400, f"{where}: image of {w}x{h} pixels exceeds rollout.max_image_pixels={max_pixels}")


def _decode_image(ref: str, where: str) -> bytes:
    data = ref
    if ref.startswith("data:"):
        head, _, data = ref.partition(",")
        if ";base64" not in head:
            raise HTTPException(400, f"{where}: only base64 data URLs are supported")
    elif ref.startswith(("http://", "https://", "file:")):
        raise HTTPException(400, f"{where}: remote/file image URLs are not fetched; send the image base64-encoded")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(400, f"{where}: image is not valid base64") from None
    if not raw:
        raise HTTPException(400, f"{where}: empty image")
    return raw


def messages_to_question(
    messages: list[Message], max_image_pixels: int | None = None
) -> tuple[str, list[bytes], str | None]:
    """(question with <image> placeholders, image bytes, system prompt) of a single-turn chat;
    with ``max_image_pixels`` each image's header is checked against it."""
    system = None
    msgs = list(messages)
    if msgs and msgs[0].role == "system":
        sm = msgs.pop(0)
        if not isinstance(sm.content, str):
            raise HTTPException(400, "messages[0]: a system message must have string content")
        system = sm.content
    if len(msgs) != 1 or msgs[0].role != "user":
        raise HTTPException(400, "messages: expected one user message (optionally after one system message)")
    content = msgs[0].content
    if isinstance(content, str):
        parts = [ContentPart(type="text", text=content)]
    else:
        parts = content
    pieces: list[str] = []
    images: list[bytes] = []
    for i, p in enumerate(parts):
        where = f"messages[-1].content[{i}]"
        if p.type == "text":
            if p.text is None:
                raise HTTPException(400, f"{where}: text part without text")
            if IMAGE_PLACEHOLDER in p.text:
                raise HTTPException(400, f"{where}: literal {IMAGE_PLACEHOLDER} in text; send images as image parts")
            pieces.append(p.text)
        else:
            ref = p.image if p.type == "image" else (p.image_url.url if isinstance(p.image_url, ImageURL) else p.image_url)
            if not ref:
                raise HTTPException(400, f"{where}: image part without data")
            raw = _decode_image(ref, where)
            if max_image_pixels is not None:
                _check_image(raw, where, max_image_pixels)
            images.append(raw)
            pieces.append(IMAGE_PLACEHOLDER)
    return "".join(pieces), images, system


_ERROR_SCHEMA = {"type": "object", "properties": {"detail": {}}, "required": ["detail"]}


def _err(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}


GENERATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _err("unusable content (image, prompt length, message layout); the detail names the field"),
    401: _err("rollout.api_token is set and the request has no matching bearer token"),
    413: _err("request body over rollout.max_body_bytes"),
    422: _err("the body does not match the schema (the errors name the fields)"),
    503: _err("no weights loaded yet, or generation failed"),
}


def max_token_chars(engine: Engine) -> int:
    """The longest vocabulary entry of ``engine``'s tokenizer in characters (cached on the engine):
    a text of C characters has at least C / this many tokens."""
    cached = getattr(engine, "_max_token_chars", None)
    if cached is None:
        try:
            tok = engine.tokenizer
            vocab = tok.get_vocab()
            cached = max([len(t) for t in vocab] + [1])
        except Exception:  # noqa: BLE001 - no tokenizer vocabulary: no early bound
            cached = 0
        engine._max_token_chars = cached
    return cached


def prepare_prompt(server: RolloutServer, body: GenerateBody) -> PromptInputs:
    """Check, decode and tokenize the prompt of ``body`` (runs in a worker thread); 400 on bad input."""
    engine = server.engine
    cfg = server.cfg
    limit = cfg.data.max_prompt_tokens
    per_token = max_token_chars(engine)
    n_chars = len(body.prompt_suffix) + sum(
        len(m.content) if isinstance(m.content, str) else sum(len(p.text or "") for p in m.content) for m in body.messages
    )
    if per_token and n_chars > limit * per_token:
        raise HTTPException(400, f"messages: {n_chars} characters of text cannot fit data.max_prompt_tokens={limit} "
                                 f"(at most {per_token} characters per token)")
    question, images, system = messages_to_question(body.messages, cfg.rollout.max_image_pixels)
    from PIL import Image

    try:
        return engine.encode_question(question, images, body.prompt_suffix, system=system)
    except (EngineError, ValueError, OSError, Image.DecompressionBombError, OverflowError) as exc:
        raise HTTPException(400, f"messages: cannot build the prompt: {exc}") from None


def create_app(server: RolloutServer | None) -> FastAPI:
    """The FastAPI app of ``server`` (a ``services.rollout.server.RolloutServer``)."""
    from common.config import RethinkerConfig

    rcfg = (getattr(server, "cfg", None) or RethinkerConfig()).rollout  # no server: routes only (tests)
    app = FastAPI(title="rethinker rollout server", version="1")
    app.add_middleware(BodyLimitMiddleware, max_bytes=rcfg.max_body_bytes, field="rollout.max_body_bytes")
    app.state.server = server
    require_token = bearer_dependency(rcfg.api_token, "rollout.api_token")

    @app.get("/healthz", responses={200: {"description": "weights loaded, serving"},
                                    503: {"description": "loading or stopping"}})
    async def healthz() -> JSONResponse:
        ok = server.ready
        body = {"ready": ok, "loaded_version": server.engine.loaded_version, "server_id": server.server_id}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/v1/status")
    async def status() -> dict[str, Any]:
        return server.status()

    @app.get("/metrics", responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                                          "description": "Prometheus text format"}})
    async def metrics():  # noqa: ANN202
        return metrics_response(server.metrics)

    @app.post("/v1/generate", dependencies=[Depends(require_token)], responses=GENERATE_RESPONSES)
    async def generate(body: GenerateBody) -> dict[str, Any]:
        engine = server.engine
        if not engine.ready:
            raise HTTPException(503, "no weights loaded yet")
        if body.sampling.max_new_tokens > rcfg.max_model_len:
            raise HTTPException(400, f"sampling.max_new_tokens={body.sampling.max_new_tokens} exceeds "
                                     f"rollout.max_model_len={rcfg.max_model_len}")
        prompt = await asyncio.to_thread(prepare_prompt, server, body)
        s = body.sampling
        params = SamplingParams(
            n=s.n, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, max_new_tokens=s.max_new_tokens, seed=s.seed
        )
        rid = f"gen-{uuid.uuid4().hex[:12]}"
        t0 = time.perf_counter()
        try:
            [res] = await engine.generate([GenerationRequest(rid, prompt, params)])
            choices: list[dict[str, Any]] = []
            for i, c in enumerate(res.completions):
                choices.append(
                    {
                        "index": i,
                        "text": c.text,
                        "finish_reason": c.finish_reason,
                        "n_tokens": int(len(c.token_ids)),
                        "policy_version": c.policy_version,
                        "rethought": False,
                        "_c": c,
                    }
                )
            if body.force_rethink:
                await _force_rethink(server, prompt, params, rid, choices)
        except EngineError as exc:
            raise HTTPException(503, f"generation failed: {exc}") from None
        for ch in choices:
            c = ch.pop("_c")
            tokens, lps = ch.pop("_tokens", c.token_ids), ch.pop("_logprobs", c.logprobs)
            if body.return_token_ids:
                ch["token_ids"] = [int(t) for t in tokens]
            if body.return_logprobs:
                ch["logprobs"] = [float(x) for x in lps]
        n_completion = sum(ch["n_tokens"] for ch in choices)
        return {
            "id": rid,
            "server_id": server.server_id,
            "engine": engine.name,
            "policy_version": min([res.policy_version] + [ch["policy_version"] for ch in choices]),
            "choices": choices,
            "usage": {"prompt_tokens": int(len(res.prompt_token_ids)), "completion_tokens": n_completion},
            "seconds": round(time.perf_counter() - t0, 4),
        }

    return app


async def _force_rethink(
    server: RolloutServer, prompt: PromptInputs, params: SamplingParams, rid: str, choices: list[dict[str, Any]]
) -> None:
    """Test-time rethinking: every EOS-ended answer is continued after ``rethink.eval_trigger``."""
    engine = server.engine
    rcfg = server.cfg.algorithm.rethink
    todo = [ch for ch in choices if ch["finish_reason"] == "stop"]
    if not todo:
        return
    reqs = []
    plans = []
    for ch in todo:
        c = ch["_c"]
        view = rethink.FirstPassView(ch["index"], engine.strip_eos(c.token_ids), c.text, True, False)
        plan = rethink.eval_plan(view, rcfg, engine.tokenizer)
        plans.append(plan)
        cont = SamplingParams(
            n=1, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
            max_new_tokens=params.max_new_tokens, seed=params.seed,
        )
        reqs.append(GenerationRequest(f"{rid}:{ch['index']}:r", prompt, cont, prefix_token_ids=plan.prefix_token_ids))
    results = await engine.continue_from(reqs)
    for ch, plan, res in zip(todo, plans, results):
        c, y2 = ch["_c"], res.completions[0]
        n_trig = len(plan.trigger_token_ids)
        tokens = np.concatenate([plan.prefix_token_ids, y2.token_ids]).astype(np.int32)
        trig_lps = res.prefix_logprobs[-n_trig:] if res.prefix_logprobs is not None else np.zeros(n_trig, np.float32)
        ch.update(
            first_text=c.text,
            text=engine.decode(tokens),
            finish_reason=y2.finish_reason,
            n_tokens=int(len(tokens)),
            policy_version=min(c.policy_version, y2.policy_version),
            rethought=True,
            _tokens=tokens,
            _logprobs=np.concatenate([c.logprobs[: plan.kept_tokens], trig_lps, y2.logprobs]),
        )
