"""MathVerse (AI4Math/MathVerse), split ``testmini`` (3,940 items = 788 problems x 5 versions).

Expected local layout (either form of the public release)::

    DATA_DIR/mathverse/testmini.parquet                      # images inline in ``image``
    DATA_DIR/mathverse/testmini.json + images/...            # json release + images.zip extracted
    DATA_DIR/mathverse/testmini_text_only.parquet | .json    # variant ``text_only`` (no images)

Field mapping:

- ``sample_index`` -> id; ``question`` -> question text.  MathVerse writes a multiple-choice
  question's options into the question itself ("Choices:\\nA:..."), so no options are added.
  "Vision Only" items have (almost) no text; their question becomes "Answer the question shown in
  the image." (the official ``query_*`` prompts ask for a bare letter and are not used);
- ``image`` (inline struct, or a path relative to the folder / ``images/``) -> the single image,
  placed before the question;
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
    find_tables,
    iter_rows,
    load_image,
    normalize_letter,
    prepend_images,
    require,
)

NAME = "mathverse"
VISION_ONLY_QUESTION = "Answer the question shown in the image."
PATTERNS = {
    "testmini": ["testmini.parquet", "data/testmini-*.parquet", "testmini.jsonl", "testmini.json"],
    "text_only": [
        "testmini_text_only.parquet",
        "testmini_text-only.parquet",
        "data/testmini_text_only-*.parquet",
        "testmini_text_only.jsonl",
        "testmini_text_only.json",
        "testmini_text-only.json",
    ],
}


def load(path: Path, variant: str | None = None) -> list[EvalItem]:
    variant = variant or "testmini"
    files = find_tables(path, PATTERNS[variant])
    if not files:
        raise BenchmarkError(f"{NAME}: no {variant} table under {path} (tried {PATTERNS[variant]})")
    items = []
    for f, i, row in iter_rows(files):
        sid = as_text(row.get("sample_index") or row.get("_key"))
        where = f"{f.name} row {i} (sample_index {sid or '?'})"
        if not sid:
            raise BenchmarkError(f"{where}: missing field 'sample_index'")
        answer = as_text(require(row, "answer", where))
        base = [f.parent, path if path.is_dir() else path.parent]
        img = None if variant == "text_only" else load_image(row.get("image"), base, where)
        question = as_text(row.get("question"))
        if not question:
            if img is None:
                raise BenchmarkError(f"{where}: empty 'question' and no image")
            question = VISION_ONLY_QUESTION
        text, images = prepend_images(question, [img] if img else [])
        meta_in = row.get("metadata") or {}
        qtype = as_text(row.get("question_type"))
        letter = normalize_letter(answer) if qtype == "multi-choice" else None
        items.append(
            EvalItem(
                id=sid,
                benchmark=NAME if variant == "testmini" else f"{NAME}:{variant}",
                question=text,
                images=images,
                gold=letter or answer,
                question_type=MULTIPLE_CHOICE if letter else FREE_FORM,
                answer_type="letter" if letter else "expression",
                categories={
                    "problem_version": as_text(row.get("problem_version")),
                    "subject": as_text(meta_in.get("subject")),
                    "subfield": as_text(meta_in.get("subfield")),
                },
                meta={"problem_index": as_text(row.get("problem_index"))},
            )
        )
    return items


SPEC = BenchmarkSpec(
    name=NAME,
    description="MathVerse testmini (3,940 items, 5 problem versions; variant text_only)",
    load=load,
    variants=tuple(PATTERNS),
    default_variant="testmini",
    dir_names=("mathverse", "MathVerse"),
)
