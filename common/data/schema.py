"""ViRL39K's row schema: column names, the eight categories, the typed ``DataRow`` and ``DataError``.

A ViRL39K row (and a row of our synthetic set) has these columns:

========================  ==================================================================
``question``              text with ``<image>`` placeholders (one per image, usually first)
``answer``                gold answer, usually boxed: ``\\boxed{B}``
``image``                 list of images: encoded bytes, ``{"bytes", "path"}`` dicts (the
                          HF ``Image`` feature) or file paths relative to the dataset folder
``category``              one of the eight categories below
``source``                where the question came from (``"MMK12"``, ``"synthetic-shapes"``...)
``qid``                   unique id of the question
``PassRate_7BBase``       share of a 7B base model's samples that solved it; ``-1`` = not annotated
``PassRate_32BTrained``   the same for a trained 32B model; ``-1`` = not annotated
========================  ==================================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from common.errors import CommonError

# The column names of ViRL39K (and of our synthetic set).
COL_QUESTION = "question"
COL_ANSWER = "answer"
COL_IMAGE = "image"
COL_CATEGORY = "category"
COL_SOURCE = "source"
COL_QID = "qid"
COL_PASS_7B = "PassRate_7BBase"
COL_PASS_32B = "PassRate_32BTrained"
REQUIRED_COLUMNS = (COL_QUESTION, COL_ANSWER, COL_IMAGE, COL_CATEGORY, COL_QID)
OPTIONAL_COLUMNS = (COL_SOURCE, COL_PASS_7B, COL_PASS_32B)
ALL_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS

IMAGE_PLACEHOLDER = "<image>"
NOT_ANNOTATED = -1.0

# ViRL39K's eight categories, spelled as in the released parquet.
CATEGORIES: tuple[str, ...] = (
    "(GradeSchool) Geometric",
    "(GradeSchool) Non-Geo Math",
    "(GradeSchool) Science",
    "Broader STEM Topics",
    "Social Science",
    "Spatial Reasoning",
    "Tables/Diagrams/Charts",
    "Commonsense",
)

# Other spellings accepted in data files and in ``data.categories`` filters (the paper's names).
_ALIASES: dict[str, str] = {
    "grade-school geometric math": "(GradeSchool) Geometric",
    "grade school geometric math": "(GradeSchool) Geometric",
    "gradeschool geometric": "(GradeSchool) Geometric",
    "grade-school non-geometric math": "(GradeSchool) Non-Geo Math",
    "grade school non-geometric math": "(GradeSchool) Non-Geo Math",
    "gradeschool non-geo math": "(GradeSchool) Non-Geo Math",
    "grade-school science": "(GradeSchool) Science",
    "grade school science": "(GradeSchool) Science",
    "gradeschool science": "(GradeSchool) Science",
    "broader stem": "Broader STEM Topics",
    "broader stem topics": "Broader STEM Topics",
    "social science": "Social Science",
    "spatial reasoning": "Spatial Reasoning",
    "tables/diagrams/charts": "Tables/Diagrams/Charts",
    "tables, diagrams, charts": "Tables/Diagrams/Charts",
    "charts": "Tables/Diagrams/Charts",
    "commonsense": "Commonsense",
}


def _norm(name: str) -> str:
    return re.sub(r"\s+", " ", name.strip().lower().replace("(", "").replace(")", ""))


_LOOKUP: dict[str, str] = {_norm(c): c for c in CATEGORIES}
_LOOKUP.update({_norm(k): v for k, v in _ALIASES.items()})


class DataError(CommonError, ValueError):
    """Bad data: a missing column or field, a corrupt image, an unknown category, a bad pass rate.

    The message names the file and, for a row problem, the row's ``qid``.
    """


def canonical_category(name: str) -> str | None:
    """ViRL39K's spelling of a category name (case/spacing/parentheses-insensitive), or None."""
    if not isinstance(name, str):
        return None
    return _LOOKUP.get(_norm(name))


@dataclass(frozen=True, slots=True)
class DataRow:
    """One question, typed.  ``images`` are encoded image files (bytes) or absolute file paths.

    ``pass_rate_7b_base`` / ``pass_rate_32b_trained`` are None where the file says -1 (or null):
    not annotated.
    """

    qid: str
    question: str
    answer: str
    images: tuple[bytes | str, ...]
    category: str
    source: str = ""
    pass_rate_7b_base: float | None = None
    pass_rate_32b_trained: float | None = None

    def pass_rate(self, field_name: str) -> float | None:
        """The pass rate named by its column name (``PassRate_7BBase`` / ``PassRate_32BTrained``)."""
        if field_name == COL_PASS_7B:
            return self.pass_rate_7b_base
        if field_name == COL_PASS_32B:
            return self.pass_rate_32b_trained
        raise ValueError(f"unknown pass-rate field {field_name!r}; expected {COL_PASS_7B} or {COL_PASS_32B}")

    def image_bytes(self) -> list[bytes]:
        """The images as encoded bytes (files are read now); DataError names the qid on failure."""
        out = []
        for i, ref in enumerate(self.images):
            if isinstance(ref, bytes):
                out.append(ref)
                continue
            try:
                out.append(Path(ref).read_bytes())
            except OSError as exc:
                raise DataError(f"qid {self.qid!r}: image {i} ({ref}) cannot be read: {exc}") from None
        return out
