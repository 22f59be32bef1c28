"""What every benchmark loader shares: the ``EvalItem`` record and the file-reading helpers.

A loader reads the public release of its benchmark from local files (parquet, jsonl or json, plus
images stored inline as ``{"bytes": ..., "path": ...}`` structs or as files next to the table) and
returns ``EvalItem``s in one canonical shape:

- ``question``: the question text with one ``<image>`` placeholder per image, in the order of
  ``images`` (the same convention as ViRL39K, so prompts are built exactly as in training);
- ``choices``: option texts shown as ``A. ...``, ``B. ...`` (empty when the question text already
  lists its options, or for free-form questions);
- ``gold``: what the verifier grades against, an option letter for multiple choice.

Errors in the data raise ``BenchmarkError`` naming the file, the item and the field.
"""

from __future__ import annotations

import ast
import io
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

IMAGE_TOKEN = "<image>"
LETTERS = string.ascii_uppercase  # option letters; the verifier accepts A-K
MULTIPLE_CHOICE = "multiple_choice"
FREE_FORM = "free_form"


class BenchmarkError(ValueError):
    """Bad or missing benchmark data; the message names the file / item / field."""


@dataclass(slots=True)
class EvalItem:
    """One benchmark question in canonical form."""

    id: str  # unique within its benchmark; the resume key
    benchmark: str
    question: str  # with one "<image>" per entry of `images`, without the prompt suffix
    images: list[bytes]  # encoded image files (PNG/JPEG/...), in placeholder order
    gold: str  # graded against: an option letter for multiple choice, else the answer
    question_type: str = FREE_FORM  # MULTIPLE_CHOICE | FREE_FORM
    answer_type: str = "text"  # letter | integer | float | list | text | expression ...
    choices: list[str] = field(default_factory=list)  # option texts, rendered A., B., ... by the prompt
    gold_text: str | None = None  # the correct option's text (multiple choice), for reporting
    categories: dict[str, str | list[str]] = field(default_factory=dict)  # breakdown dim -> label(s)
    meta: dict[str, Any] = field(default_factory=dict)  # extra fields worth keeping in the results

    def to_record(self) -> dict[str, Any]:
        """The item's JSON-able description (without image bytes) for the per-item results."""
        return {
            "id": self.id,
            "benchmark": self.benchmark,
            "question": self.question,
            "n_images": len(self.images),
            "gold": self.gold,
            "gold_text": self.gold_text,
            "question_type": self.question_type,
            "answer_type": self.answer_type,
            "choices": list(self.choices),
            "categories": dict(self.categories),
            "meta": dict(self.meta),
        }


# --------------------------------------------------------------------------- reading tables


def read_records(path: Path) -> list[dict[str, Any]]:
    """Rows of one parquet / jsonl / json file as dicts (image structs stay ``{"bytes","path"}``).

    A ``.json`` file may hold a list of records or a mapping ``id -> record`` (MathVista's
    original ``testmini.json``); in the latter case a record without an id gets the key as ``_key``.
    """
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        if suffix == ".jsonl":
            rows = []
            with path.open(encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except json.JSONDecodeError as exc:
                            raise BenchmarkError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            return rows
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                return [{"_key": k, **v} for k, v in data.items() if isinstance(v, dict)]
            if isinstance(data, list):
                return list(data)
            raise BenchmarkError(f"{path}: expected a list of records or a mapping id -> record")
    except BenchmarkError:
        raise
    except (OSError, ValueError) as exc:
        raise BenchmarkError(f"{path}: cannot read ({exc})") from None
    raise BenchmarkError(f"{path}: unsupported file type {suffix!r} (use .parquet, .jsonl or .json)")


TABLE_SUFFIXES = (".parquet", ".jsonl", ".json")


def find_tables(root: Path, patterns: Sequence[str]) -> list[Path]:
    """The table files of a benchmark under ``root``: the first glob pattern that matches wins.

    ``root`` may also be a single table file.  Patterns are tried in order; the files of the first
    matching pattern are returned sorted (``test-00000-of-00002.parquet``, ``test-00001-...``).
    """
    if root.is_file():
        return [root]
    for pattern in patterns:
        hits = sorted(p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES)
        if hits:
            return hits
    return []


def locate(data_dir: Path, names: Sequence[str]) -> Path:
    """The benchmark's folder (or file) under ``data_dir``: the first of ``names`` that exists."""
    for name in names:
        p = data_dir / name
        if p.exists():
            return p
    raise BenchmarkError(
        f"no data for this benchmark under {str(data_dir)!r}: expected one of "
        + ", ".join(repr(str(data_dir / n)) for n in names)
    )


# --------------------------------------------------------------------------- fields


def require(row: dict[str, Any], name: str, where: str) -> Any:
    if name not in row or row[name] is None:
        raise BenchmarkError(f"{where}: missing field {name!r}")
    return row[name]


def as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def parse_options(value: Any, where: str) -> list[str]:
    """Options as a list of strings: a real list, or a Python/JSON list literal (MMMU-Pro)."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise BenchmarkError(f"{where}: field 'options' is not a list literal: {text[:80]!r}") from None
    if not isinstance(value, (list, tuple)):
        raise BenchmarkError(f"{where}: field 'options' must be a list, got {type(value).__name__}")
    return [as_text(v) for v in value]


def letter_of(index: int, where: str) -> str:
    if not 0 <= index < len(LETTERS):
        raise BenchmarkError(f"{where}: option index {index} has no letter")
    return LETTERS[index]


def index_of_letter(letter: str) -> int:
    return LETTERS.index(letter)


def normalize_letter(answer: str) -> str | None:
    """``"B"``, ``"(B)"``, ``"B."`` -> ``"B"``; anything else -> None."""
    m = re.fullmatch(r"\s*\(?([A-Za-z])\)?[.:]?\s*", answer or "")
    return m.group(1).upper() if m else None


def choice_index(answer: str, choices: Sequence[str]) -> int | None:
    """Index of ``answer`` among ``choices`` (exact, then whitespace/case-insensitive)."""
    if answer in choices:
        return list(choices).index(answer)
    norm = [re.sub(r"\s+", " ", c).strip().lower() for c in choices]
    key = re.sub(r"\s+", " ", answer).strip().lower()
    return norm.index(key) if key in norm else None


# --------------------------------------------------------------------------- images


def set_multiple_choice(item: "EvalItem", answer: str, options: list[str], where: str) -> None:
    """Make ``item`` a multiple-choice item whose gold is the option letter for ``answer`` (given as
    a letter or as an option's text); BenchmarkError when it is neither."""
    letter = normalize_letter(answer)
    if letter is None or index_of_letter(letter) >= len(options):
        idx = choice_index(answer, options)
        if idx is None:
            raise BenchmarkError(f"{where}: answer {answer!r} is neither an option letter nor an option")
        letter = letter_of(idx, where)
    item.question_type = MULTIPLE_CHOICE
    item.answer_type = "letter"
    item.choices = options
    item.gold = letter
    item.gold_text = options[index_of_letter(letter)]


def _png_bytes(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def load_image(value: Any, base_dirs: Sequence[Path], where: str) -> bytes | None:
    """Encoded image bytes from a parquet image struct, raw bytes, a PIL image or a file path.

    Relative paths are tried against each of ``base_dirs`` as given, then as ``images/<name>``.
    Returns None for an empty value; raises ``BenchmarkError`` for a path that does not exist.
    """
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value) or None
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        return load_image(value.get("path"), base_dirs, where)
    if hasattr(value, "save") and hasattr(value, "size"):  # a PIL image
        return _png_bytes(value)
    if isinstance(value, str):
        if not value.strip():
            return None
        p = Path(value)
        candidates = [p] if p.is_absolute() else []
        for base in base_dirs:
            candidates += [base / p, base / "images" / p.name]
        for c in candidates:
            if c.is_file():
                return c.read_bytes()
        raise BenchmarkError(
            f"{where}: image file {value!r} not found (looked in: {', '.join(str(c) for c in candidates)})"
        )
    raise BenchmarkError(f"{where}: unsupported image value of type {type(value).__name__}")


def interleave_images(
    text: str,
    images: dict[int, bytes],
    placeholder: str,
) -> tuple[str, list[bytes]]:
    """Rewrite a benchmark's numbered image placeholders into ``<image>`` tokens.

    ``placeholder`` is a regex with one group capturing the image number (``<image 1>`` in MMMU-Pro,
    ``<image1>`` in MathVision, ``<image_1>`` in EMMA).  The first mention of image k becomes an
    ``<image>`` token and image k is placed at that position; later mentions of the same image
    become the text ``[image k]``; images the text never mentions are put first, in number order;
    a mention of an image that does not exist is left as text.  Returns the new text and the images
    in token order.
    """
    order: list[int] = []

    def repl(m: re.Match[str]) -> str:
        k = int(m.group(1))
        if k not in images:
            return m.group(0)
        if k in order:
            return f"[image {k}]"
        order.append(k)
        return IMAGE_TOKEN

    body = re.sub(placeholder, repl, text)
    unmentioned = [k for k in sorted(images) if k not in order]
    head = "".join(IMAGE_TOKEN for _ in unmentioned)
    if head and body:
        head += "\n"
    return head + body, [images[k] for k in unmentioned + order]


def prepend_images(text: str, images: list[bytes]) -> tuple[str, list[bytes]]:
    """Questions without placeholders: all images first (Qwen-VL's usual single-image layout)."""
    existing = text.count(IMAGE_TOKEN)
    if existing == len(images):
        return text, images
    if existing:
        raise BenchmarkError(f"question has {existing} {IMAGE_TOKEN} tokens but {len(images)} images")
    head = IMAGE_TOKEN * len(images)
    return (head + "\n" + text if head and text else head + text), images


# --------------------------------------------------------------------------- loader registry


@dataclass(frozen=True, slots=True)
class BenchmarkSpec:
    """A registered benchmark: its name, variants and loader."""

    name: str
    description: str
    load: Callable[[Path, str | None], list[EvalItem]]  # (path, variant) -> items
    variants: tuple[str, ...] = ()
    default_variant: str | None = None
    dir_names: tuple[str, ...] = ()


def dedupe_ids(items: Iterable[EvalItem]) -> list[EvalItem]:
    """Make ids unique (``id``, ``id#2``, ...) so that resume keys never collide."""
    seen: dict[str, int] = {}
    out = []
    for it in items:
        n = seen.get(it.id, 0) + 1
        seen[it.id] = n
        if n > 1:
            it.id = f"{it.id}#{n}"
        out.append(it)
    return out


def iter_rows(files: Sequence[Path]) -> Iterator[tuple[Path, int, dict[str, Any]]]:
    for f in files:
        for i, row in enumerate(read_records(f)):
            if not isinstance(row, dict):
                raise BenchmarkError(f"{f}: row {i} is not a record")
            yield f, i, row
