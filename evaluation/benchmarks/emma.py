"""EMMA (luckychao/EMMA; EMMA-mini has the same layout): Math, Physics, Chemistry, Coding.

Expected local layout (the Hugging Face release, one folder per subject config)::

    DATA_DIR/emma/Math/test-00000-of-00001.parquet
    DATA_DIR/emma/Physics/test-*.parquet
    DATA_DIR/emma/Chemistry/test-*.parquet
    DATA_DIR/emma/Coding/test-*.parquet

(``test.jsonl`` / ``test.json`` per subject folder, with image paths, are read as well.)

Variants: ``all`` (default: every subject folder present) or one subject (``emma:math``, ...).

Field mapping:

- ``<Subject>/<pid>`` -> id (pids are only unique within a subject); ``question`` -> question text;
- ``type == "Multiple Choice"``: ``options`` -> options A, B, ...; ``answer`` is the letter -> gold;
  ``Open-ended``: gold = ``answer`` (free form);
- images ``image_1`` .. ``image_5``: every ``<image_k>`` placeholder in the question *and in the
  options* becomes an ``<image>`` token at its place, so an option that is a picture (``"<image_3>"``)
  is rendered as ``C. <image>`` with image 3 there, as EMMA's reference code interleaves the images
  of its query (question, then "A: ...", "B: ..."); images mentioned nowhere go first;
- ``context`` (background text some items carry) goes before the question, as in EMMA's reference
  prompt (``{context}`` then the question); it is also kept in meta with ``source``;
- categories: ``subject``, ``category``, ``task``.
"""

from __future__ import annotations

from pathlib import Path

from evaluation.benchmarks.base import (
    FREE_FORM,
    BenchmarkError,
    BenchmarkSpec,
    EvalItem,
    iter_source_rows,
    require_split_tables,
    set_multiple_choice,
    subject_dirs,
)

NAME = "emma"
SUBJECTS = ("Math", "Physics", "Chemistry", "Coding")
MAX_IMAGES = 5


def _subject_dirs(path: Path, variant: str) -> list[tuple[str, Path]]:
    if path.is_file():
        return [(variant.capitalize() if variant != "all" else "", path)]
    return subject_dirs(NAME, path, SUBJECTS if variant == "all" else tuple(s for s in SUBJECTS if s.lower() == variant))


def load(path: Path, variant: str | None = None) -> list[EvalItem]:
    variant = (variant or "all").lower()
    items = []
    for subject_dir, folder in _subject_dirs(path, variant):
        files = require_split_tables(NAME, folder, "test")
        prefix = f"{folder.name}/" if folder.is_dir() else ""
        for row in iter_source_rows(files, folder, ("pid",), prefix):
            subject = row.text("subject") or subject_dir
            answer = row.required("answer")
            options = row.options()
            is_mc = row.text("type").lower().startswith("multiple") or (bool(options) and not row.text("type"))
            text, choices, images = row.question_and_options(options, MAX_IMAGES)
            context = row.text("context").strip()
            if context:
                text = f"{context}\n{text}"
            item = EvalItem(
                id=f"{subject_dir or subject}/{row.id}",
                benchmark=NAME if variant == "all" else f"{NAME}:{variant}",
                question=text,
                images=images,
                gold=answer,
                question_type=FREE_FORM,
                answer_type="expression",
                categories={"subject": subject, "category": row.text("category"), "task": row.text("task")},
                meta={"context": row.text("context"), "source": row.text("source")},
            )
            if is_mc:
                if not choices:
                    raise BenchmarkError(f"{row.where}: multiple-choice question without 'options'")
                set_multiple_choice(item, answer, choices, row.where)
            items.append(item)
    return items


SPEC = BenchmarkSpec(
    name=NAME,
    description="EMMA (Math, Physics, Chemistry, Coding); variants all | math | physics | chemistry | coding",
    load=load,
    variants=("all",) + tuple(s.lower() for s in SUBJECTS),
    default_variant="all",
    dir_names=("emma", "EMMA", "emma-mini", "EMMA-mini"),
)
