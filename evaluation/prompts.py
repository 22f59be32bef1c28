"""The evaluation prompt: the spec's training prompt applied to a benchmark item.

The prompt is exactly what training uses (spec section 2 and 7): the question with its ``<image>``
placeholders, the options listed the way our ViRL39K-format data lists them ("\\nChoices:\\nA. ...",
see devtools/synth_data.py), then the prompt suffix ``data.prompt_suffix`` ("\\n\\nPlease reason step
by step, and put your final answer within \\boxed{}."); images are resized under
``data.min_pixels`` / ``data.max_pixels`` by whoever builds the model inputs.  Chat messages are
built by ``common.data.prompts.build_messages`` so that placeholders map to images as in training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.config import PROMPT_SUFFIX
from common.data.prompts import build_messages

from evaluation.benchmarks.base import LETTERS, EvalItem


@dataclass(slots=True)
class EvalPrompt:
    """One prompt to decode: question text (with ``<image>`` placeholders), images and suffix."""

    question: str
    images: list[bytes] = field(default_factory=list)
    suffix: str = PROMPT_SUFFIX

    @property
    def text(self) -> str:
        """The full user text (placeholders included) as the model reads it."""
        return self.question + self.suffix

    def messages(self, *, min_pixels: int | None = None, max_pixels: int | None = None) -> list[dict[str, Any]]:
        return build_messages(self.question, self.images, self.suffix, min_pixels=min_pixels, max_pixels=max_pixels)


def render_question(item: EvalItem) -> str:
    """The item's question followed by its options (when the question does not list them itself).

    An option that is a picture is the option text ``<image>``, so its image comes at its letter
    (``A. <image>``); the loaders order ``item.images`` question first, then options, to match."""
    if not item.choices:
        return item.question
    lines = [f"{LETTERS[i]}. {c}" for i, c in enumerate(item.choices)]
    return item.question + "\nChoices:\n" + "\n".join(lines)


def build_prompt(item: EvalItem, suffix: str = PROMPT_SUFFIX) -> EvalPrompt:
    return EvalPrompt(question=render_question(item), images=list(item.images), suffix=suffix)
