"""Chat messages for a ViRL39K question: ``<image>`` placeholders become image content parts.

``build_messages("<image>What is shown?", [img], suffix)`` gives the Qwen-VL chat format::

    [{"role": "user", "content": [{"type": "image", "image": img, ...},
                                  {"type": "text", "text": "What is shown?" + suffix}]}]

Each ``<image>`` placeholder is replaced, in order, by the next image. Images without a
placeholder (a question with fewer placeholders than images) are put first, before the text, the
way Qwen-VL's examples place them. More placeholders than images is an error. The prompt suffix
(``data.prompt_suffix``, by default "Please reason step by step, and put your final answer within
\\boxed{}.") is appended to the last text part.
"""

from __future__ import annotations

from typing import Any, Sequence

from common.data.schema import IMAGE_PLACEHOLDER
from common.errors import CommonError


class PromptError(CommonError, ValueError):
    """A question whose placeholders do not fit its images."""


def split_question(question: str, n_images: int) -> list[str | int]:
    """The question as a list of text pieces and image indices, in prompt order."""
    pieces = question.split(IMAGE_PLACEHOLDER)
    n_placeholders = len(pieces) - 1
    if n_placeholders > n_images:
        raise PromptError(f"question has {n_placeholders} {IMAGE_PLACEHOLDER} placeholders but only {n_images} images")
    lead = n_images - n_placeholders  # images without a placeholder go first
    out: list[str | int] = list(range(lead))
    for k, text in enumerate(pieces):
        if k > 0:
            out.append(lead + k - 1)
        if text:
            out.append(text)
    return out


def build_messages(
    question: str,
    images: Sequence[Any],
    suffix: str = "",
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    system: str | None = None,
) -> list[dict[str, Any]]:
    """Qwen-VL chat messages for one question; ``images`` are placed as given (PIL, path, ...)."""
    content: list[dict[str, Any]] = []
    for piece in split_question(question, len(images)):
        if isinstance(piece, int):
            part: dict[str, Any] = {"type": "image", "image": images[piece]}
            if min_pixels is not None:
                part["min_pixels"] = min_pixels
            if max_pixels is not None:
                part["max_pixels"] = max_pixels
            content.append(part)
        else:
            content.append({"type": "text", "text": piece})
    if suffix:
        if content and content[-1]["type"] == "text":
            content[-1] = {"type": "text", "text": content[-1]["text"] + suffix}
        else:
            content.append({"type": "text", "text": suffix})
    messages: list[dict[str, Any]] = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": content})
    return messages
