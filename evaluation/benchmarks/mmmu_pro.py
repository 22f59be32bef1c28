"""MMMU-Pro (MMMU/MMMU_Pro): ``standard (10 options)`` (default), ``standard (4 options)``, ``vision``.

Expected local layout (the Hugging Face release, one folder per config)::

    DATA_DIR/mmmu_pro/standard (10 options)/test-0000X-of-0000N.parquet   # variant standard10
    DATA_DIR/mmmu_pro/standard (4 options)/test-*.parquet                 # variant standard4
    DATA_DIR/mmmu_pro/vision/test-*.parquet                               # variant vision

(``standard_10``, ``standard10`` ... are accepted as folder names too; ``test.jsonl`` / ``test.json``
tables with image paths relative to the folder work as well.)

Field mapping, standard configs:

- ``id`` -> id; ``options``: a Python list literal stored as a string (``"['6', '8', ...]"``) ->
  options A..J; ``answer`` is the option letter -> gold;
- ``question`` and the options -> text whose ``<image k>`` placeholders become ``<image>`` tokens at
  the same place, with ``image_1`` .. ``image_7`` put in mention order
  (``SourceRow.question_and_options``, as for MMMU: an option that is a picture is rendered at its
  option letter);
- categories: ``subject``, ``topic_difficulty``.

Vision config: the question and its options are inside the screenshot ``image``; the text prompt is
"Answer the multiple-choice question shown in the image." and gold = ``answer`` (a letter); the
options are not repeated in text.  Categories: ``subject``.
"""

from __future__ import annotations

from pathlib import Path

from evaluation.benchmarks.base import (
    MULTIPLE_CHOICE,
    BenchmarkError,
    BenchmarkSpec,
    EvalItem,
    index_of_letter,
    iter_source_rows,
    normalize_letter,
    prepend_images,
    require_split_tables,
)

NAME = "mmmu_pro"
MAX_IMAGES = 7
VISION_QUESTION = "Answer the multiple-choice question shown in the image."
FOLDERS = {
    "standard10": ["standard (10 options)", "standard_10", "standard10", "standard_10_options"],
    "standard4": ["standard (4 options)", "standard_4", "standard4", "standard_4_options"],
    "vision": ["vision"],
}


def _variant_dir(path: Path, variant: str) -> Path:
    if path.is_file():
        return path
    for name in FOLDERS[variant]:
        if (path / name).exists():
            return path / name
    raise BenchmarkError(
        f"{NAME}: no folder for variant {variant!r} under {path} (expected one of {FOLDERS[variant]})"
    )


def load(path: Path, variant: str | None = None) -> list[EvalItem]:
    variant = variant or "standard10"
    root = _variant_dir(path, variant)
    bench = NAME if variant == "standard10" else f"{NAME}:{variant}"
    items = []
    for row in iter_source_rows(require_split_tables(NAME, root, "test"), root, ("id",)):
        answer = row.required("answer")
        letter = normalize_letter(answer)
        if letter is None:
            raise BenchmarkError(f"{row.where}: field 'answer' must be an option letter, got {answer!r}")
        options = row.options()
        if options and index_of_letter(letter) >= len(options):
            raise BenchmarkError(f"{row.where}: answer {letter} but only {len(options)} options")
        if variant == "vision":
            img = row.image("image")
            if img is None:
                raise BenchmarkError(f"{row.where}: missing field 'image'")
            text, images = prepend_images(VISION_QUESTION, [img])
            choices: list[str] = []
            categories = {"subject": row.text("subject")}
        else:
            if not options:
                raise BenchmarkError(f"{row.where}: missing field 'options'")
            text, choices, images = row.question_and_options(options, MAX_IMAGES)
            categories = {"subject": row.text("subject"), "topic_difficulty": row.text("topic_difficulty")}
        items.append(
            EvalItem(
                id=row.id,
                benchmark=bench,
                question=text,
                images=images,
                gold=letter,
                question_type=MULTIPLE_CHOICE,
                answer_type="letter",
                choices=choices,
                gold_text=choices[index_of_letter(letter)] if choices else (options[index_of_letter(letter)] if options else None),
                categories=categories,
            )
        )
    return items


SPEC = BenchmarkSpec(
    name=NAME,
    description="MMMU-Pro standard (10 options) by default; variants standard4, vision",
    load=load,
    variants=tuple(FOLDERS),
    default_variant="standard10",
    dir_names=("mmmu_pro", "MMMU_Pro", "mmmu-pro", "MMMU-Pro"),
)
