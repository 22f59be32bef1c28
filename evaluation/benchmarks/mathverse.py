"""MathVerse (AI4Math/MathVerse), split ``testmini`` (3,940 items = 788 problems x 5 versions).

Accepted local layouts (the public release's two forms)::

    DATA_DIR/mathverse/testmini.parquet                      # parquet, images inline in ``image``
    DATA_DIR/mathverse/testmini.json + images/images_version_1-4/...  # JSON release, images.zip extracted into images/
    DATA_DIR/mathverse/testmini.json + images_version_1-4/ ...        # the image folders next to it
                                     # ("image": "images_version_5/image_7.png": one file name per problem,
                                     #  a different picture in each version's folder)
    DATA_DIR/mathverse/testmini_text_only.{parquet,json}     # variant ``text_only`` (no images)

(also under ``data/``).  ``testmini`` never reads ``testmini_text_only`` (split names are matched
exactly, see ``base.split_tables``).

Field mapping:

- ``sample_index`` -> id; ``question`` -> question text.  MathVerse writes a multiple-choice
  question's options into the question itself ("Choices:\\nA:..."), so no options are added.
  "Vision Only" items have (almost) no text; their question becomes "Answer the question shown in
  the image." (the official ``query_*`` prompts ask for a bare letter and are not used);
- ``image`` (inline struct, or a path resolved next to the table or in ``images/``) -> the single
  image, placed before the question;
- ``question_type == "multi-choice"``: gold = the option letter in ``answer``;
  ``free-form``: gold = ``answer``;
- categories: ``problem_version`` (Text Dominant, Text Lite, Vision Intensive, Vision Dominant,
  Vision Only), ``metadata.subject``, ``metadata.subfield``.
"""

from __future__ import annotations

from pathlib import Path

from evaluation.benchmarks.base import (
    FREE_FORM,
    MULTIPLE_CHOICE,
    BenchmarkError,
    BenchmarkSpec,
    EvalItem,
    as_text,
    iter_source_rows,
    normalize_letter,
    prepend_images,
    require_split_tables,
)

NAME = "mathverse"
VISION_ONLY_QUESTION = "Answer the question shown in the image."
SPLITS = {
    "testmini": ("testmini",),
    "text_only": ("testmini_text_only", "testmini_text-only"),
}


def load(path: Path, variant: str | None = None) -> list[EvalItem]:
    variant = variant or "testmini"
    items = []
    for row in iter_source_rows(require_split_tables(NAME, path, SPLITS[variant]), path, ("sample_index", "_key")):
        answer = row.required("answer")
        img = None if variant == "text_only" else row.image("image")
        question = row.text("question")
        if not question:
            if img is None:
                raise BenchmarkError(f"{row.where}: empty 'question' and no image")
            question = VISION_ONLY_QUESTION
        text, images = prepend_images(question, [img] if img else [])
        meta_in = row.data.get("metadata") or {}
        letter = normalize_letter(answer) if row.text("question_type") == "multi-choice" else None
        items.append(
            EvalItem(
                id=row.id,
                benchmark=NAME if variant == "testmini" else f"{NAME}:{variant}",
                question=text,
                images=images,
                gold=letter or answer,
                question_type=MULTIPLE_CHOICE if letter else FREE_FORM,
                answer_type="letter" if letter else "expression",
                categories={
                    "problem_version": row.text("problem_version"),
                    "subject": as_text(meta_in.get("subject")),
                    "subfield": as_text(meta_in.get("subfield")),
                },
                meta={"problem_index": row.text("problem_index")},
            )
        )
    return items


SPEC = BenchmarkSpec(
    name=NAME,
    description="MathVerse testmini (3,940 items, 5 problem versions; variant text_only)",
    load=load,
    variants=tuple(SPLITS),
    default_variant="testmini",
    dir_names=("mathverse", "MathVerse"),
)
