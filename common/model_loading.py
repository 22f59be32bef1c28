"""Loading the policy model and processor, building chat inputs, and teacher-forced log-probs.

Every part loads models here, so a model is loaded the same way everywhere:

- ``load_model(path_or_name, dtype=..., attn_implementation=..., device=...)`` -> a Qwen2.5-VL (or any
  image-text-to-text) model in eval mode; ``load_processor(path_or_name, min_pixels=, max_pixels=)``;
  ``load_from_config(cfg.model)`` / ``load_processor_from_config(cfg)`` (the path as configured; the
  tiny model is built on demand by ``devtools.tiny_model.ensure_model``).
  A local folder is loaded offline; a name that is not a local folder is tried on the hub, and if the
  hub is off (``HF_HUB_OFFLINE=1``) or unreachable ``ModelLoadError`` says so and asks for a path.
- ``build_prompt_inputs(processor, question, images, suffix, min_pixels, max_pixels)`` -> the
  tensors of one chat prompt with images (``input_ids``, ``attention_mask``, ``pixel_values``,
  ``image_grid_thw``, ``mm_token_type_ids``), images resized by qwen-vl-utils under the pixel limits.
- ``extend_prompt_inputs(prompt_inputs, ids)``: the prompt plus more tokens (a first response and a
  rethinking trigger) for a second ``generate`` with the same images.
- ``teacher_forced_logprobs(model, prompt_inputs, completion_ids)`` -> log p(token) of each
  completion token given the prompt and the earlier completion tokens, with gradients.  This is what
  the learner trains on and what the rollout's sampler log-probs must match (~1e-6 in fp32).

Pitfall handled here: Qwen2.5-VL's 3-D rotary positions need ``mm_token_type_ids`` (the processor's
values for the prompt, zeros for the completion); without them the model silently uses wrong
positions for every token after an image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from common.errors import CommonError

if TYPE_CHECKING:  # heavy imports stay lazy
    import torch
    from PIL import Image

    from common.config import DataConfig, ModelConfig

DTYPES = ("float32", "bfloat16", "float16")
# Token ids a completion must never contain when it is fed back with pixel values.
VISION_PLACEHOLDER_TOKENS = ("<|image_pad|>", "<|video_pad|>")
VISION_SPECIAL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


class ModelLoadError(CommonError, RuntimeError):
    """The model or processor could not be found or loaded; the message says what to do."""


# --------------------------------------------------------------------------- locating


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _looks_like_hub_id(name: str) -> bool:
    if not name or name.startswith((".", "/", "~")) or os.sep + os.sep in name or name.count("/") > 1:
        return False
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(name)
    except Exception:
        return False
    return True


def _resolve(path_or_name: str | os.PathLike, what: str) -> tuple[str, bool]:
    """(where to load from, is it a local folder); raises ModelLoadError with advice."""
    s = os.fspath(path_or_name)
    p = Path(s).expanduser()
    if p.is_dir():
        return str(p), True
    if p.exists():
        raise ModelLoadError(f"{what} path {s!r} is a file, not a model folder")
    if not _looks_like_hub_id(s):
        raise ModelLoadError(
            f"{what} folder {s!r} does not exist (and it is not a hub model id). Give the path of a local "
            f"model folder, or build the tiny test model with `rethinker tiny-model build {s}`."
        )
    if _hub_offline():
        raise ModelLoadError(
            f"{what} {s!r} is not a local folder and the hub is off (HF_HUB_OFFLINE=1): "
            f"download it beforehand and give the local path (model.path), or unset HF_HUB_OFFLINE."
        )
    return s, False


def _hub_failure(s: str, what: str, exc: BaseException) -> ModelLoadError:
    return ModelLoadError(
        f"{what} {s!r} is not a local folder and could not be loaded from the hub ({type(exc).__name__}: "
        f"{str(exc).splitlines()[0] if str(exc) else ''}). If this machine is offline, give a local path."
    )


def _torch_dtype(dtype: Any):
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return "auto"
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ModelLoadError(f"unknown dtype {dtype!r}; expected one of {list(DTYPES)} or 'auto'")
    return names[dtype]


# --------------------------------------------------------------------------- loading


def load_model(
    path_or_name: str | os.PathLike,
    *,
    dtype: Any = "float32",
    attn_implementation: str | None = "sdpa",
    device: str = "cpu",
    trust_remote_code: bool = False,
):
    """Load an image-text-to-text model (Qwen2.5-VL) in eval mode on ``device``."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    src, local = _resolve(path_or_name, "model")
    kwargs: dict[str, Any] = dict(dtype=_torch_dtype(dtype), trust_remote_code=trust_remote_code)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if local:
        kwargs["local_files_only"] = True
    try:
        config = AutoConfig.from_pretrained(src, trust_remote_code=trust_remote_code, local_files_only=local)
        model = AutoModelForImageTextToText.from_pretrained(src, config=config, **kwargs)
    except ModelLoadError:
        raise
    except (OSError, ValueError) as exc:
        if local:
            raise ModelLoadError(f"model folder {src!r} could not be loaded: {exc}") from exc
        raise _hub_failure(src, "model", exc) from exc
    model.to(device)
    model.eval()
    return model


def load_processor(
    path_or_name: str | os.PathLike,
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    trust_remote_code: bool = False,
):
    """Load the processor; ``min_pixels``/``max_pixels`` override the image processor's limits."""
    from transformers import AutoProcessor

    src, local = _resolve(path_or_name, "processor")
    try:
        processor = AutoProcessor.from_pretrained(src, trust_remote_code=trust_remote_code, local_files_only=local)
    except (OSError, ValueError) as exc:
        if local:
            raise ModelLoadError(f"processor in {src!r} could not be loaded: {exc}") from exc
        raise _hub_failure(src, "processor", exc) from exc
    if min_pixels is not None or max_pixels is not None:
        set_pixel_limits(processor, min_pixels=min_pixels, max_pixels=max_pixels)
    return processor


def set_pixel_limits(processor, *, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
    """Set the image processor's pixel limits (its ``size`` shortest/longest edge, in pixels)."""
    ip = processor.image_processor
    size = dict(ip.size.items() if hasattr(ip.size, "items") else vars(ip.size))
    size = {k: v for k, v in size.items() if v is not None}
    if min_pixels is not None:
        size["shortest_edge"] = int(min_pixels)
    if max_pixels is not None:
        size["longest_edge"] = int(max_pixels)
    if size.get("shortest_edge", 0) > size.get("longest_edge", float("inf")):
        raise ModelLoadError(f"min_pixels {size['shortest_edge']} > max_pixels {size['longest_edge']}")
    size.pop("min_pixels", None)
    size.pop("max_pixels", None)
    ip.size = type(ip.size)(**size) if not isinstance(ip.size, dict) else size
    for attr, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if value is not None and hasattr(ip, attr):
            setattr(ip, attr, int(value))


def pixel_limits(processor) -> tuple[int, int]:
    """The image processor's (min_pixels, max_pixels)."""
    size = processor.image_processor.size
    get = size.get if hasattr(size, "get") else lambda k: getattr(size, k, None)
    return int(get("shortest_edge")), int(get("longest_edge"))


def load_from_config(model_cfg: "ModelConfig", *, device: str = "cpu"):
    """``load_model`` with the config's path, dtype, attention and remote-code flag (the tiny model
    is built on demand by ``devtools.tiny_model.ensure_model``, before this)."""
    return load_model(
        model_cfg.path,
        dtype=model_cfg.dtype,
        attn_implementation=model_cfg.attn_implementation,
        device=device,
        trust_remote_code=model_cfg.trust_remote_code,
    )


def load_processor_from_config(model_cfg: "ModelConfig", data_cfg: "DataConfig | None" = None):
    """``load_processor`` for the config's model with ``data.min_pixels``/``max_pixels``."""
    return load_processor(
        model_cfg.path,
        min_pixels=data_cfg.min_pixels if data_cfg is not None else None,
        max_pixels=data_cfg.max_pixels if data_cfg is not None else None,
        trust_remote_code=model_cfg.trust_remote_code,
    )


# --------------------------------------------------------------------------- prompt inputs


def special_token_ids(processor_or_tokenizer, tokens: Sequence[str] = VISION_SPECIAL_TOKENS) -> list[int]:
    """Ids of the given tokens (default: the vision special tokens, which generation should ban)."""
    tok = getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)
    ids = []
    for t in tokens:
        i = tok.convert_tokens_to_ids(t)
        if i is not None and i != tok.unk_token_id:
            ids.append(int(i))
    return ids


def build_prompt_inputs(
    processor,
    question: str,
    images: Sequence["Image.Image | bytes | str"] = (),
    suffix: str = "",
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    *,
    system: str | None = None,
) -> dict[str, "torch.Tensor"]:
    """Tensors (batch of one) of the chat prompt for ``question`` + ``suffix`` with ``images``.

    ``<image>`` placeholders in the question mark where the images go (see common.data.prompts).
    Images (PIL, encoded bytes or file paths) are resized by qwen-vl-utils within
    [min_pixels, max_pixels] (default: the processor's limits) and the processor is told the same
    limits, so it does not resize again.  Returns ``input_ids``, ``attention_mask``,
    ``mm_token_type_ids`` and, with images, ``pixel_values`` and ``image_grid_thw``.
    """
    from common.data.images import fetch_images
    from common.data.prompts import build_messages

    pmin, pmax = pixel_limits(processor)
    min_pixels = pmin if min_pixels is None else int(min_pixels)
    max_pixels = pmax if max_pixels is None else int(max_pixels)
    patch = int(getattr(processor.image_processor, "patch_size", 14))
    pil = fetch_images(images, min_pixels=min_pixels, max_pixels=max_pixels, patch_size=patch) if images else []
    messages = build_messages(question, pil, suffix, min_pixels=min_pixels, max_pixels=max_pixels, system=system)
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    kwargs: dict[str, Any] = dict(text=[text], return_tensors="pt")
    if pil:
        kwargs["images"] = pil
        kwargs["images_kwargs"] = {"size": {"shortest_edge": min_pixels, "longest_edge": max_pixels}}
    out = processor(**kwargs)
    inputs = {k: v for k, v in out.items() if k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")}
    if "mm_token_type_ids" not in inputs:  # older processors: derive it (1 = image token)
        import torch

        image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        inputs["mm_token_type_ids"] = (inputs["input_ids"] == image_id).to(torch.long)
    return inputs


def extend_prompt_inputs(prompt_inputs: Mapping[str, Any], extra_ids: Any) -> dict[str, "torch.Tensor"]:
    """The prompt followed by ``extra_ids`` (e.g. a first response + a rethinking trigger), ready for
    a second ``generate`` with the same images: ``mm_token_type_ids`` are zeros for the new tokens."""
    import torch

    extra = _as_ids(extra_ids)
    if extra.numel() and prompt_inputs.get("pixel_values") is not None:
        _reject_placeholders(extra, prompt_inputs, "extra_ids")
    out = dict(prompt_inputs)
    ids = prompt_inputs["input_ids"]
    out["input_ids"] = torch.cat([ids, extra[None].to(ids.device, ids.dtype)], dim=1)
    mask = prompt_inputs.get("attention_mask")
    if mask is not None:
        out["attention_mask"] = torch.cat([mask, torch.ones((1, extra.numel()), dtype=mask.dtype, device=mask.device)], dim=1)
    mm = prompt_inputs.get("mm_token_type_ids")
    if mm is not None:
        out["mm_token_type_ids"] = torch.cat([mm, torch.zeros((1, extra.numel()), dtype=mm.dtype, device=mm.device)], dim=1)
    return out


def _reject_placeholders(ids: "torch.Tensor", where: Any, what: str) -> None:
    image_id = video_id = None
    cfg = getattr(where, "config", None)
    if cfg is not None:
        image_id, video_id = getattr(cfg, "image_token_id", None), getattr(cfg, "video_token_id", None)
    banned = {int(i) for i in (image_id, video_id) if i is not None}
    if not banned and isinstance(where, Mapping):  # prompt inputs: the image id is what the prompt's mm tokens hold
        mm, ids_p = where.get("mm_token_type_ids"), where.get("input_ids")
        if mm is not None and ids_p is not None:
            banned = {int(i) for i in ids_p[mm.bool()].unique().tolist()}
    bad = sorted({int(i) for i in ids.tolist()} & banned)
    if bad:
        raise ValueError(
            f"{what} contains image/video placeholder token ids {bad}; generation must ban them "
            f"(common.model_loading.special_token_ids) - they cannot be fed back with pixel values"
        )


# --------------------------------------------------------------------------- teacher forcing


def _as_ids(x) -> "torch.Tensor":
    import torch

    t = torch.as_tensor(x, dtype=torch.long)
    if t.ndim == 2 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 1:
        raise ValueError(f"expected a 1-D sequence of token ids, got shape {tuple(t.shape)}")
    return t


def teacher_forced_logprobs_batch(
    model,
    items: Sequence[tuple[Mapping[str, Any], Any]],
    *,
    temperature: float = 1.0,
    pad_token_id: int | None = None,
) -> list["torch.Tensor"]:
    """Log-probs of each item's completion tokens given its prompt, in one right-padded forward.

    ``items``: ``(prompt_inputs, completion_ids)`` pairs; ``prompt_inputs`` as made by
    ``build_prompt_inputs`` (batch of one).  Returns one float32 tensor per item, of the
    completion's length, differentiable w.r.t. the model's parameters.  ``temperature`` divides the
    logits first (1.0 = the policy's own distribution).
    """
    import torch

    if not items:
        return []
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    cfg = model.config
    device = next(model.parameters()).device
    if pad_token_id is None:
        pad_token_id = getattr(cfg, "pad_token_id", None)
        if pad_token_id is None:
            pad_token_id = getattr(getattr(cfg, "text_config", cfg), "pad_token_id", None) or 0

    seqs, types, p_lens, c_lens, pixels, grids = [], [], [], [], [], []
    for k, (prompt, completion) in enumerate(items):
        p_ids = _as_ids(prompt["input_ids"])
        c_ids = _as_ids(completion)
        if c_ids.numel() == 0:
            raise ValueError(f"item {k}: empty completion")
        _reject_placeholders(c_ids, model, f"item {k}: completion")
        mm = prompt.get("mm_token_type_ids")
        mm = torch.zeros_like(p_ids) if mm is None else _as_ids(mm)
        seqs.append(torch.cat([p_ids, c_ids]))
        types.append(torch.cat([mm, torch.zeros_like(c_ids)]))
        p_lens.append(p_ids.numel())
        c_lens.append(c_ids.numel())
        if prompt.get("pixel_values") is not None:
            pixels.append(prompt["pixel_values"])
            grids.append(prompt["image_grid_thw"])

    length = max(s.numel() for s in seqs)
    batch = len(seqs)
    input_ids = torch.full((batch, length), int(pad_token_id), dtype=torch.long)
    attention = torch.zeros((batch, length), dtype=torch.long)
    mm_types = torch.zeros((batch, length), dtype=torch.long)
    for b, (s, t) in enumerate(zip(seqs, types)):
        input_ids[b, : s.numel()] = s
        attention[b, : s.numel()] = 1
        mm_types[b, : t.numel()] = t
    kwargs: dict[str, Any] = dict(
        input_ids=input_ids.to(device),
        attention_mask=attention.to(device),
        mm_token_type_ids=mm_types.to(device),
        use_cache=False,
    )
    if pixels:
        kwargs["pixel_values"] = torch.cat(pixels).to(device)
        kwargs["image_grid_thw"] = torch.cat(grids).to(device)
    # Logits are needed from the position before each completion's first token to the end.
    keep = length - (min(p_lens) - 1)
    kwargs["logits_to_keep"] = keep
    out = model(**kwargs)
    logits = out.logits
    start = length - logits.shape[1]
    results = []
    for b in range(batch):
        lo = p_lens[b] - 1 - start
        rows = logits[b, lo : lo + c_lens[b]].float()
        if temperature != 1.0:
            rows = rows / temperature
        target = seqs[b][p_lens[b] :].to(rows.device)
        logp = torch.log_softmax(rows, dim=-1).gather(-1, target[:, None])[:, 0]
        results.append(logp)
    return results


def teacher_forced_logprobs(
    model,
    prompt_inputs: Mapping[str, Any],
    completion_ids: Any,
    *,
    temperature: float = 1.0,
) -> "torch.Tensor":
    """Log-prob of each completion token given the prompt (1-D float32, differentiable)."""
    return teacher_forced_logprobs_batch(model, [(prompt_inputs, completion_ids)], temperature=temperature)[0]
