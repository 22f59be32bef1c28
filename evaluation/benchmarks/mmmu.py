"""MMMU (MMMU/MMMU), split ``validation`` (900 items, 30 subjects; variant ``dev``, 150 items).

The paper reports MMMU (val).  Accepted local layout (the Hugging Face release, one folder per
subject config; ``test`` has no public answers and is not offered)::

    DATA_DIR/mmmu/Accounting/validation-00000-of-00001.parquet
    DATA_DIR/mmmu/Art_Theory/validation-00000-of-00001.parquet
    ...                                                      # any subset of the 30 subject folders
    DATA_DIR/mmmu/<Subject>/dev-00000-of-00001.parquet       # variant ``dev``

(also ``validation.jsonl`` / ``validation.json`` with image paths; ``mmmu=FILE`` reads one table).

Field mapping:

- ``id`` ("validation_Accounting_1") -> id; ``question`` -> question text;
- ``options``: a list of strings, stored in the release as a Python list literal string
  (``"['$6', '$8']"``) -> options A, B, ...;
- images ``image_1`` .. ``image_7``: the ``<image n>`` placeholders of the question *and of the
  options* become ``<image>`` tokens at their place (``SourceRow.question_and_options``), so an
  option that is a picture (``"<image 2>"``) is rendered as ``A. <image>`` with image 2 there;
  images mentioned nowhere go first;
- ``question_type == "multiple-choice"``: ``answer`` is the option letter -> gold (an answer given
  as an option's text is mapped to its letter);
- ``open``: ``answer`` is the answer, or a list literal of acceptable answers (``"['24', '24.0']"``):
  gold = the first, ``alternatives`` = the rest (MMMU's scorer accepts any of them).  A numeric gold
  is graded with MMMU's number convention: values equal after rounding to 2 decimals
  (``answer_type`` "float", ``meta["precision"] = 2``, the judge's ``precision`` rule);
- categories: ``subject``, ``discipline`` (MMMU's six: Art and Design, Business, Science, Health
  and Medicine, Humanities and Social Science, Tech and Engineering), ``subfield``,
  ``topic_difficulty``, ``img_type`` (multi-label).

MMMU's scorer picks a random option when no letter can be parsed from a response; here such a
response is wrong (deterministic), so accuracy can be slightly below the official scorer's.
"""

from __future__ import annotations

import ast
from pathlib import Path

from evaluation.benchmarks.base import (
    FREE_FORM,
    BenchmarkError,
    BenchmarkSpec,
    EvalItem,
    SourceRow,
    as_text,
    iter_source_rows,
    require_split_tables,
    set_multiple_choice,
    subject_dirs,
)

NAME = "mmmu"
MAX_IMAGES = 7
SPLITS = ("validation", "dev")
NUMBER_PRECISION = 2  # MMMU's scorer compares numbers rounded to 2 decimals
DISCIPLINES: dict[str, tuple[str, ...]] = {
    "Art and Design": ("Art", "Art_Theory", "Design", "Music"),
    "Business": ("Accounting", "Economics", "Finance", "Manage", "Marketing"),
    "Science": ("Biology", "Chemistry", "Geography", "Math", "Physics"),
    "Health and Medicine": (
        "Basic_Medical_Science",
        "Clinical_Medicine",
        "Diagnostics_and_Laboratory_Medicine",
        "Pharmacy",
        "Public_Health",
    ),
    "Humanities and Social Science": ("History", "Literature", "Sociology", "Psychology"),
    "Tech and Engineering": (
        "Agriculture",
        "Architecture_and_Engineering",
        "Computer_Science",
        "Electronics",
        "Energy_and_Power",
        "Materials",
        "Mechanical_Engineering",
    ),
}
SUBJECTS: tuple[str, ...] = tuple(sorted(s for subjects in DISCIPLINES.values() for s in subjects))
DISCIPLINE_OF = {s: d for d, subjects in DISCIPLINES.items() for s in subjects}


def literal_list(answer: str) -> list[str]:
    """A list literal string as a list (``"['24', '24.0']"`` -> ["24", "24.0"]); any other text -> [text]."""
    text = answer.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return [text]
        if isinstance(value, (list, tuple)):
            out = [as_text(v) for v in value if as_text(v)]
            return out or [text]
    return [text]


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def _subject_of(row: SourceRow, folder_subject: str) -> str:
    if folder_subject:
        return folder_subject
    # "validation_Art_Theory_12" -> "Art_Theory"
    parts = row.id.split("_")
    return "_".join(parts[1:-1]) if len(parts) > 2 else ""


def _folders(path: Path) -> list[tuple[str, Path]]:
    if path.is_file():
        return [("", path)]
    return subject_dirs(NAME, path, SUBJECTS)


def load(path: Path, variant: str | None = None) -> list[EvalItem]:
    variant = variant or "validation"
    items = []
    for folder_subject, folder in _folders(path):
        prefix = f"{folder.name}/" if folder.is_dir() else ""
        for row in iter_source_rows(require_split_tables(NAME, folder, variant), folder, ("id",), prefix):
            subject = _subject_of(row, folder_subject)
            answer = row.required("answer")
            options = row.options()
            qtype = row.text("question_type") or ("multiple-choice" if options else "open")
            text, choices, images = row.question_and_options(options, MAX_IMAGES)
            img_type = row.data.get("img_type")
            item = EvalItem(
                id=row.id,
                benchmark=NAME if variant == "validation" else f"{NAME}:{variant}",
                question=text,
                images=images,
                gold=answer,
                question_type=FREE_FORM,
                answer_type="text",
                categories={
                    "subject": subject,
                    "discipline": DISCIPLINE_OF.get(subject, ""),
                    "subfield": row.text("subfield"),
                    "topic_difficulty": row.text("topic_difficulty"),
                    "img_type": literal_list(as_text(img_type)) if img_type else [],
                },
            )
            if qtype == "multiple-choice":
                if not choices:
                    raise BenchmarkError(f"{row.where}: multiple-choice question without 'options'")
                set_multiple_choice(item, answer, choices, row.where)
            elif qtype == "open":
                golds = literal_list(answer)
                item.gold, item.alternatives = golds[0], golds[1:]
                if all(_is_number(g) for g in golds):
                    item.answer_type = "float"
                    item.meta["precision"] = NUMBER_PRECISION
            else:
                raise BenchmarkError(f"{row.where}: field 'question_type' must be 'multiple-choice' or 'open', got {qtype!r}")
            items.append(item)
    return items


SPEC = BenchmarkSpec(
    name=NAME,
    description="MMMU validation (900 items, 30 subjects; multiple-choice and open; variant dev)",
    load=load,
    variants=SPLITS,
    default_variant="validation",
    dir_names=("mmmu", "MMMU"),
)
