"""`<image>` placeholders -> Qwen-VL chat messages."""

from __future__ import annotations

import pytest

from common.data.prompts import PromptError, build_messages, split_question


def test_split_question_places_images_at_placeholders():
    assert split_question("<image>What?", 1) == [0, "What?"]
    assert split_question("A <image> vs <image>.", 2) == ["A ", 0, " vs ", 1, "."]
    assert split_question("No placeholder.", 2) == [0, 1, "No placeholder."]  # extra images go first
    assert split_question("<image>one of two", 2) == [0, 1, "one of two"]
    assert split_question("text only", 0) == ["text only"]
    with pytest.raises(PromptError, match="2 <image> placeholders but only 1 images"):
        split_question("<image><image>", 1)


def test_build_messages_content_parts_and_suffix():
    msgs = build_messages("<image>What color?", ["IMG"], "\n\nSuffix", min_pixels=10, max_pixels=20)
    assert msgs == [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": "IMG", "min_pixels": 10, "max_pixels": 20},
                {"type": "text", "text": "What color?\n\nSuffix"},
            ],
        }
    ]
    # a question that ends with an image gets the suffix as its own text part; a system prompt is kept
    msgs = build_messages("Look <image>", ["IMG"], "S", system="sys")
    assert msgs[0] == {"role": "system", "content": "sys"}
    assert msgs[1]["content"] == [{"type": "text", "text": "Look "}, {"type": "image", "image": "IMG"}, {"type": "text", "text": "S"}]
