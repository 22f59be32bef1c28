"""MMMU-Pro (MMMU/MMMU_Pro): ``standard (10 options)`` (default), ``standard (4 options)``, ``vision``.

Expected local layout (the Hugging Face release, one folder per config)::

    DATA_DIR/mmmu_pro/standard (10 options)/test-0000X-of-0000N.parquet   # variant standard10
    DATA_DIR/mmmu_pro/standard (4 options)/test-*.parquet                 # variant standard4
    DATA_DIR/mmmu_pro/vision/test-*.parquet                               # variant vision

(``standard_10``, ``standard10`` ... are accepted as folder names too; jsonl/json tables with image
paths relative to the folder work as well.)

Field mapping, standard configs:

- ``id`` -> id; ``question`` -> question text, whose ``<image k>`` placeholders become ``<image>``
  tokens at the same place, with ``image_1`` .. ``image_7`` put in mention order (an image the text
  does not mention goes first; a second mention of the same image becomes the text "[image k]");
- ``options``: a Python list literal stored as a string (``"['6', '8', ...]"``) -> options A..J;
  ``answer`` is the option letter -> gold;
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
    as_text,
    find_tables,
    index_of_letter,
    interleave_images,
    iter_rows,
    load_image,
    normalize_letter,
    parse_options,
    prepend_images,
    require,
)

NAME = "mmmu_pro"
PLACEHOLDER = r"<image\s*_?(\d+)>"
MAX_IMAGES = 7
VISION_QUESTION = "Answer the multiple-choice question shown in the image."
FOLDERS = {
    "standard10": ["standard (10 options)", "standard_10", "standard10", "standard_10_options"],
    "standard4": ["standard (4 options)", "standard_4", "standard4", "standard_4_options"],
    "vision": ["vision"],
}
TABLES = ["test-*.parquet", "*.parquet", "test.jsonl", "*.jsonl", "test.json"]


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
    files = find_tables(root, TABLES)
    if not files:
        raise BenchmarkError(f"{NAME}: no table under {root} (tried {TABLES})")
    bench = NAME if variant == "standard10" else f"{NAME}:{variant}"
    items = []
    for f, i, row in iter_rows(files):
        qid = as_text(row.get("id"))
        where = f"{f.name} row {i} (id {qid or '?'})"
        if not qid:
            raise BenchmarkError(f"{where}: missing field 'id'")
        answer = as_text(require(row, "answer", where))
        letter = normalize_letter(answer)
        if letter is None:
            raise BenchmarkError(f"{where}: field 'answer' must be an option letter, got {answer!r}")
        base = [f.parent, root if root.is_dir() else root.parent]
        options = parse_options(row.get("options"), where)
        if options and index_of_letter(letter) >= len(options):
            raise BenchmarkError(f"{where}: answer {letter} but only {len(options)} options")
        if variant == "vision":
            img = load_image(require(row, "image", where), base, where)
            text, images = prepend_images(VISION_QUESTION, [img] if img else [])
            choices: list[str] = []
            categories = {"subject": as_text(row.get("subject"))}
        else:
            found = {}
            for k in range(1, MAX_IMAGES + 1):
                img = load_image(row.get(f"image_{k}"), base, where)
                if img is not None:
                    found[k] = img
            text, images = interleave_images(as_text(require(row, "question", where)), found, PLACEHOLDER)
            if not options:
                raise BenchmarkError(f"{where}: missing field 'options'")
            choices = options
            categories = {"subject": as_text(row.get("subject")), "topic_difficulty": as_text(row.get("topic_difficulty"))}
        items.append(
            EvalItem(
                id=qid,
                benchmark=bench,
                question=text,
                images=images,
                gold=letter,
                question_type=MULTIPLE_CHOICE,
                answer_type="letter",
                choices=choices,
                gold_text=options[index_of_letter(letter)] if options else None,
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
