"""MATH-Vision (MathLLMs/MathVision), split ``test`` (3,040 items; variant ``testmini``, 304).

Accepted local layouts (each public release as it ships)::

    DATA_DIR/mathvision/data/test-*.parquet                  # Hugging Face MathLLMs/MathVision, ``decoded_image`` inline
    DATA_DIR/mathvision/data/test.jsonl + images/<id>.jpg    # GitHub mathllm/MATH-V: ``image`` = "images/<id>.jpg",
                                                             #   relative to the repository root
    DATA_DIR/mathvision/test.jsonl + images/<id>.jpg         # the same with the tables at the top
    ... testmini-*.parquet | testmini.jsonl                  # variant ``testmini``

The folder may be the repository root or its ``data/`` folder (images are then found in
``../images``).  ``test`` never reads the ``testmini`` tables beside it.

Field mapping:

- ``id`` -> id; ``question`` -> question text, whose ``<image1>`` placeholder becomes the
  ``<image>`` token at the same place (an image the text does not mention goes first; MATH-V draws
  several sub-figures into its one image file, so mentions of ``<image2>``.. stay as text);
- ``decoded_image`` (inline) or else ``image`` (path) -> the image;
- ``options`` (list, possibly empty) -> options A, B, ...; with options the ``answer`` is a letter
  (an answer given as an option text is mapped to its letter) and gold is that letter; without
  options gold = ``answer`` (free form).  Options that are pictures are drawn in the image labelled
  A-E (the options list is then just ``["A", ..., "E"]``);
- categories: ``subject`` (16 subjects), ``level`` (1-5).
"""

from __future__ import annotations

from pathlib import Path

from evaluation.benchmarks.base import (
    FREE_FORM,
    NUMBERED_IMAGE,
    BenchmarkSpec,
    EvalItem,
    interleave_images,
    iter_source_rows,
    require_split_tables,
    set_multiple_choice,
)

NAME = "mathvision"
SPLITS = ("test", "testmini")


def load(path: Path, variant: str | None = None) -> list[EvalItem]:
    variant = variant or "test"
    items = []
    for row in iter_source_rows(require_split_tables(NAME, path, variant), path, ("id", "_key")):
        answer = row.required("answer")
        img = row.image("decoded_image", "image")
        text, images = interleave_images(row.required("question"), {1: img} if img else {}, NUMBERED_IMAGE)
        item = EvalItem(
            id=row.id,
            benchmark=NAME if variant == "test" else f"{NAME}:{variant}",
            question=text,
            images=images,
            gold=answer,
            question_type=FREE_FORM,
            answer_type="expression",
            categories={"subject": row.text("subject"), "level": row.text("level")},
        )
        options = row.options()
        if options:
            set_multiple_choice(item, answer, options, row.where)
        items.append(item)
    return items


SPEC = BenchmarkSpec(
    name=NAME,
    description="MATH-Vision test (3,040 items; variant testmini)",
    load=load,
    variants=SPLITS,
    default_variant="test",
    dir_names=("mathvision", "MathVision", "math_vision", "MATH-V"),
)
