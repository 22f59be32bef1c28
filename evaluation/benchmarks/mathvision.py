"""MATH-Vision (MathLLMs/MathVision), split ``test`` (3,040 items; variant ``testmini``, 304).

Expected local layout (either form of the public release)::

    DATA_DIR/mathvision/data/test-*.parquet           # Hugging Face parquet, ``decoded_image`` inline
    DATA_DIR/mathvision/test.jsonl + images/<id>.jpg  # GitHub release (``image`` is a relative path)
    DATA_DIR/mathvision/data/testmini-*.parquet | testmini.jsonl   # variant ``testmini``

Field mapping:

- ``id`` -> id; ``question`` -> question text, whose ``<image1>`` placeholders become ``<image>``
  tokens at the same place (an image the text does not mention goes first);
- ``decoded_image`` (inline) or else ``image`` (path) -> the image;
- ``options`` (list, possibly empty) -> options A, B, ...; with options the ``answer`` is a letter
  (an answer given as an option text is mapped to its letter) and gold is that letter; without
  options gold = ``answer`` (free form);
- categories: ``subject`` (16 subjects), ``level`` (1-5).
"""

from __future__ import annotations

from pathlib import Path

from evaluation.benchmarks.base import (
    FREE_FORM,
    BenchmarkError,
    BenchmarkSpec,
    EvalItem,
    as_text,
    find_tables,
    interleave_images,
    iter_rows,
    set_multiple_choice,
    load_image,
    parse_options,
    require,
)

NAME = "mathvision"
PLACEHOLDER = r"<image\s*_?(\d+)>"
PATTERNS = {
    "test": ["data/test-*.parquet", "test*.parquet", "test.jsonl", "test.json"],
    "testmini": ["data/testmini-*.parquet", "testmini*.parquet", "testmini.jsonl", "testmini.json"],
}


def load(path: Path, variant: str | None = None) -> list[EvalItem]:
    variant = variant or "test"
    files = find_tables(path, PATTERNS[variant])
    if not files:
        raise BenchmarkError(f"{NAME}: no {variant} table under {path} (tried {PATTERNS[variant]})")
    items = []
    for f, i, row in iter_rows(files):
        qid = as_text(row.get("id") or row.get("_key"))
        where = f"{f.name} row {i} (id {qid or '?'})"
        if not qid:
            raise BenchmarkError(f"{where}: missing field 'id'")
        question = as_text(require(row, "question", where))
        answer = as_text(require(row, "answer", where))
        base = [f.parent, path if path.is_dir() else path.parent]
        img = load_image(row.get("decoded_image"), base, where) or load_image(row.get("image"), base, where)
        text, images = interleave_images(question, {1: img} if img else {}, PLACEHOLDER)
        options = parse_options(row.get("options"), where)
        item = EvalItem(
            id=qid,
            benchmark=NAME if variant == "test" else f"{NAME}:{variant}",
            question=text,
            images=images,
            gold=answer,
            question_type=FREE_FORM,
            answer_type="expression",
            categories={"subject": as_text(row.get("subject")), "level": as_text(row.get("level"))},
        )
        if options:
            set_multiple_choice(item, answer, options, where)
        items.append(item)
    return items


SPEC = BenchmarkSpec(
    name=NAME,
    description="MATH-Vision test (3,040 items; variant testmini)",
    load=load,
    variants=tuple(PATTERNS),
    default_variant="test",
    dir_names=("mathvision", "MathVision", "math_vision"),
)
