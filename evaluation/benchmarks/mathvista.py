"""MathVista (AI4Math/MathVista), split ``testmini`` (1,000 items; ``test`` has no public answers).

Accepted local layouts (each public release as it ships; the folder may be the release's root or
its ``data/`` folder)::

    DATA_DIR/mathvista/data/testmini-00000-of-00001.parquet   # Hugging Face AI4Math/MathVista, images inline
    DATA_DIR/mathvista/data/testmini.json + data/images/1.jpg # GitHub lupantech/MathVista (data/ + images.zip)
    DATA_DIR/mathvista/testmini.{parquet,jsonl,json} (+ images/)

The GitHub ``testmini.json`` is a mapping ``pid -> record`` whose ``image`` ("images/1.jpg") is
relative to ``data/``; ``test.json`` / ``test-*.parquet`` next to it are never read (split names
are matched exactly, see ``base.split_tables``).

Field mapping:

- ``pid`` -> id; ``question`` -> question text (the pre-rendered ``query`` with its answer-format
  hint is not used: the spec's prompt is question + options + the boxed suffix);
- ``decoded_image`` (inline bytes) or else ``image`` (a relative path) -> the single image, placed
  before the question;
- ``question_type == "multi_choice"``: ``choices`` -> options A, B, ...; ``answer`` is the option
  *text*, so gold = the letter of ``answer`` in ``choices`` and ``gold_text`` = the text;
- ``free_form``: gold = ``answer``; ``answer_type`` (integer / float / text / list), ``precision``
  and ``unit`` are kept (the judge rounds a float prediction to ``precision`` decimals as MathVista's
  own scorer does, see evaluation.judging);
- categories: ``metadata.task``, ``metadata.category``, ``metadata.context``, ``metadata.grade``,
  ``metadata.skills`` (multi-label); the report adds ``question_type`` for every benchmark.
"""

from __future__ import annotations

from pathlib import Path

from evaluation.benchmarks.base import (
    FREE_FORM,
    BenchmarkError,
    BenchmarkSpec,
    EvalItem,
    as_text,
    iter_source_rows,
    prepend_images,
    require_split_tables,
    set_multiple_choice,
)

NAME = "mathvista"
SPLITS = ("testmini",)


def load(path: Path, variant: str | None = None) -> list[EvalItem]:
    variant = variant or "testmini"
    items = []
    for row in iter_source_rows(require_split_tables(NAME, path, variant), path, ("pid", "_key", "id")):
        question = row.required("question")
        answer = row.required("answer")
        img = row.image("decoded_image", "image")
        text, images = prepend_images(question, [img] if img else [])
        meta_in = row.data.get("metadata") or {}
        choices = [as_text(c) for c in (row.data.get("choices") or [])]
        qtype = row.text("question_type") or ("multi_choice" if choices else "free_form")
        item = EvalItem(
            id=row.id,
            benchmark=NAME,
            question=text,
            images=images,
            gold=answer,
            question_type=FREE_FORM,
            answer_type=row.text("answer_type") or "text",
            categories={
                "task": as_text(meta_in.get("task")),
                "category": as_text(meta_in.get("category")),
                "context": as_text(meta_in.get("context")),
                "grade": as_text(meta_in.get("grade")),
                "skills": [as_text(s) for s in (meta_in.get("skills") or [])],
            },
            meta={"unit": row.text("unit"), "precision": row.data.get("precision"), "source": as_text(meta_in.get("source"))},
        )
        if qtype == "multi_choice":
            if not choices:
                raise BenchmarkError(f"{row.where}: multi_choice question without 'choices'")
            set_multiple_choice(item, answer, choices, row.where, by_text_only=True)
        items.append(item)
    return items


SPEC = BenchmarkSpec(
    name=NAME,
    description="MathVista testmini (1,000 items; options -> letters, free-form numbers)",
    load=load,
    variants=SPLITS,
    default_variant="testmini",
    dir_names=("mathvista", "MathVista"),
)
