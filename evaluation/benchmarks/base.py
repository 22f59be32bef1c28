"""What every benchmark loader shares: the ``EvalItem`` record and the file-reading helpers.

A loader reads the public release of its benchmark from local files (parquet, jsonl or json, plus
images stored inline as ``{"bytes": ..., "path": ...}`` structs or as files next to the table) and
returns ``EvalItem``s in one canonical shape:

- ``question`` and ``choices``: the question text and the option texts (shown as ``A. ...``,
  ``B. ...``; empty when the question text already lists its options, or for free-form questions).
  Together, question first then the options in order, they hold one ``<image>`` placeholder per
  image, in the order of ``images`` (the same convention as ViRL39K, so prompts are built exactly as
  in training); an option that is a picture is the option text ``<image>``;
- ``gold``: what the verifier grades against, an option letter for multiple choice;
  ``alternatives``: other acceptable answers (MMMU's open questions list several).

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

from common.errors import EvaluationError

IMAGE_TOKEN = "<image>"
NUMBERED_IMAGE = r"<image\s*_?(\d+)>"  # a release's numbered placeholder: <image 1>, <image1>, <image_1>
LETTERS = string.ascii_uppercase  # option letters; the verifier accepts A-K
MULTIPLE_CHOICE = "multiple_choice"
FREE_FORM = "free_form"


class BenchmarkError(EvaluationError, ValueError):
    """Bad or missing benchmark data; the message names the file / item / field."""


@dataclass(slots=True)
class EvalItem:
    """One benchmark question in canonical form."""

    id: str  # unique within its benchmark; the resume key
    benchmark: str
    question: str  # with the choices: one "<image>" per entry of `images`; without the prompt suffix
    images: list[bytes]  # encoded image files (PNG/JPEG/...), in placeholder order (question, then choices)
    gold: str  # graded against: an option letter for multiple choice, else the answer
    question_type: str = FREE_FORM  # MULTIPLE_CHOICE | FREE_FORM
    answer_type: str = "text"  # letter | integer | float | list | text | expression ...
    choices: list[str] = field(default_factory=list)  # option texts, rendered A., B., ... by the prompt
    gold_text: str | None = None  # the correct option's text (multiple choice), for reporting
    alternatives: list[str] = field(default_factory=list)  # other acceptable golds (graded like gold)
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
            "alternatives": list(self.alternatives),
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
SPLIT_FOLDERS = ("", "data")  # a release's tables sit at its root or in its data/ folder


def _split_names(splits: str | Sequence[str]) -> list[str]:
    return [splits] if isinstance(splits, str) else list(splits)


def _split_stem(split: str) -> re.Pattern[str]:
    # ``test`` or a Hugging Face shard ``test-00000-of-00002[-hash]``, never ``testmini``
    return re.compile(re.escape(split) + r"(?:-\d+-of-\d+(?:-[0-9a-f]+)?)?", re.IGNORECASE)


def split_tables(root: Path, splits: str | Sequence[str], folders: Sequence[str] = SPLIT_FOLDERS) -> list[Path]:
    """The table files holding exactly one split under ``root`` (or ``root`` itself when it is a file).

    A file belongs to split ``s`` when its stem is ``s`` or a Hugging Face shard ``s-00000-of-0000N``,
    so ``test`` never picks up ``testmini`` (nor ``testmini`` its ``testmini_text_only`` sibling).
    ``folders`` are searched in order (the root, then ``data/``), and in each folder the first
    format present wins (parquet, then jsonl, then json), so two copies of a split in different
    formats are never mixed.  ``splits`` lists accepted spellings of the split's name.  Returns [] when
    nothing matches; ``require_split_tables`` turns that into an error naming what was looked for.
    """
    if root.is_file():
        return [root]
    names = _split_names(splits)
    for folder in folders:
        d = root / folder if folder else root
        if not d.is_dir():
            continue
        for suffix in TABLE_SUFFIXES:
            hits = sorted(
                p
                for p in d.iterdir()
                if p.is_file() and p.suffix.lower() == suffix and any(_split_stem(n).fullmatch(p.stem) for n in names)
            )
            if hits:
                return hits
    return []


def split_candidates(root: Path, splits: str | Sequence[str], folders: Sequence[str] = SPLIT_FOLDERS) -> list[str]:
    """What ``split_tables`` looks for, as paths for error messages."""
    out = []
    for folder in folders:
        d = root / folder if folder else root
        for n in _split_names(splits):
            out += [str(d / f"{n}{s}") for s in TABLE_SUFFIXES] + [str(d / f"{n}-NNNNN-of-NNNNN.parquet")]
    return out


def require_split_tables(
    bench: str, root: Path, splits: str | Sequence[str], folders: Sequence[str] = SPLIT_FOLDERS
) -> list[Path]:
    """``split_tables`` or a BenchmarkError that lists every file name it looked for."""
    files = split_tables(root, splits, folders)
    if not files:
        raise BenchmarkError(
            f"{bench}: no table of split {' / '.join(_split_names(splits))} under {str(root)!r}; "
            f"looked for: {', '.join(split_candidates(root, splits, folders))}"
        )
    return files


def subject_dirs(bench: str, root: Path, subjects: Sequence[str]) -> list[tuple[str, Path]]:
    """``(subject, folder)`` for each of ``subjects`` that has a folder under ``root`` (the Hugging Face
    layout of a benchmark with one config per subject: ``Math/``, ``Art_Theory/``...; a lower-case
    folder name is accepted too).  BenchmarkError naming the folders looked for when there is none."""
    out = []
    for s in subjects:
        for name in (s, s.lower()):
            if (root / name).is_dir():
                out.append((s, root / name))
                break
    if not out:
        raise BenchmarkError(f"{bench}: no subject folder under {str(root)!r} (looked for {', '.join(subjects)})")
    return out


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


def set_multiple_choice(item: "EvalItem", answer: str, options: list[str], where: str, *, by_text_only: bool = False) -> None:
    """Make ``item`` a multiple-choice item whose gold is the option letter for ``answer``.

    ``answer`` is an option letter or an option's text; with ``by_text_only`` (MathVista, whose
    answer is always the option text, and whose options may themselves be letters) only the text is
    looked up.  BenchmarkError when ``answer`` is neither.
    """
    letter = None if by_text_only else normalize_letter(answer)
    if letter is None or index_of_letter(letter) >= len(options):
        idx = choice_index(answer, options)
        if idx is None:
            what = "one of the choices" if by_text_only else "an option letter or one of the options"
            raise BenchmarkError(f"{where}: answer {answer!r} is not {what} {options}")
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

    A relative path ``p`` is tried against each of ``base_dirs`` as ``p``, ``images/p``,
    ``images/<file name>`` and ``<file name>`` (releases ship the images next to the table or in an
    ``images/`` folder, and the path in the table may or may not include that folder).  Returns None
    for an empty value; raises ``BenchmarkError`` naming every place tried when none exists.
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
        candidates: list[Path] = [p] if p.is_absolute() else []
        for base in base_dirs:
            for c in (base / p, base / "images" / p, base / "images" / p.name, base / p.name):
                if c not in candidates:
                    candidates.append(c)
        for c in candidates:
            if c.is_file():
                return c.read_bytes()
        raise BenchmarkError(
            f"{where}: image file {value!r} not found (looked in: {', '.join(str(c) for c in candidates)})"
        )
    raise BenchmarkError(f"{where}: unsupported image value of type {type(value).__name__}")


def interleave_parts(
    parts: Sequence[str],
    images: dict[int, bytes],
    placeholder: str,
) -> tuple[list[str], list[bytes]]:
    """Rewrite a benchmark's numbered image placeholders into ``<image>`` tokens across several texts.

    ``parts`` are the texts in prompt order: the question, then each option (an option may be an
    image, e.g. ``"<image 2>"`` in MMMU or ``"<image_3>"`` in EMMA).  ``placeholder`` is a regex with
    one group capturing the image number (``<image 1>`` in MMMU, ``<image1>`` in MathVision,
    ``<image_1>`` in EMMA).  The first mention of image k becomes an ``<image>`` token and image k is
    placed at that position, so an option's image sits at its option; later mentions of the same
    image become the text ``[image k]``; images no text mentions are put first (before the question:
    the question's own figure), in number order; a mention of an image that does not exist is left
    as text.  Returns the rewritten parts and the images in token order.
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

    out = [re.sub(placeholder, repl, text) for text in parts]
    unmentioned = [k for k in sorted(images) if k not in order]
    head = "".join(IMAGE_TOKEN for _ in unmentioned)
    if out:
        out[0] = head + ("\n" if head and out[0] else "") + out[0]
    return out, [images[k] for k in unmentioned + order]


def interleave_images(text: str, images: dict[int, bytes], placeholder: str) -> tuple[str, list[bytes]]:
    """``interleave_parts`` for a question without options: the new text and the images in token order."""
    (body,), ordered = interleave_parts([text], images, placeholder)
    return body, ordered


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


@dataclass(slots=True)
class SourceRow:
    """One record of a benchmark table, with what every loader needs to read it.

    ``where`` ("test.jsonl row 3 (id 17)") starts every error message about the row; ``image_dirs``
    are the folders a relative image path is resolved against: the table's folder, its parent (a
    release whose table sits in ``data/`` with paths relative to the release root) and the folder the
    benchmark was given as.
    """

    data: dict[str, Any]
    file: Path
    index: int
    id: str
    where: str
    image_dirs: tuple[Path, ...]

    def text(self, name: str) -> str:
        """Field ``name`` as stripped text ("" when absent)."""
        return as_text(self.data.get(name))

    def required(self, name: str) -> str:
        """Field ``name`` as text; BenchmarkError naming the row and field when it is absent."""
        return as_text(require(self.data, name, self.where))

    def image(self, *names: str) -> bytes | None:
        """The first non-empty image among fields ``names`` (inline struct, bytes or relative path)."""
        for name in names:
            img = load_image(self.data.get(name), self.image_dirs, f"{self.where} field {name!r}")
            if img is not None:
                return img
        return None

    def numbered_images(self, prefix: str, count: int) -> dict[int, bytes]:
        """Images ``<prefix>1`` .. ``<prefix><count>`` that are present, keyed by their number."""
        found = {}
        for k in range(1, count + 1):
            img = self.image(f"{prefix}{k}")
            if img is not None:
                found[k] = img
        return found

    def options(self) -> list[str]:
        """Field ``options`` as a list of strings (a list, or a list literal in a string)."""
        return parse_options(self.data.get("options"), self.where)

    def question_and_options(self, options: list[str], max_images: int) -> tuple[str, list[str], list[bytes]]:
        """Field ``question`` and ``options`` with images ``image_1`` .. ``image_<max_images>``
        interleaved at their numbered placeholders (``interleave_parts``: question first, then the
        options in order, so an option that is a picture gets its image at its letter); returns
        (question, options, images in token order).  EMMA, MMMU and MMMU-Pro."""
        (text, *choices), images = interleave_parts(
            [self.required("question"), *options], self.numbered_images("image_", max_images), NUMBERED_IMAGE
        )
        return text, choices, images


def iter_source_rows(
    files: Sequence[Path], root: Path, id_fields: Sequence[str], prefix: str = ""
) -> Iterator[SourceRow]:
    """The rows of ``files`` as ``SourceRow``s; the id is the first non-empty of ``id_fields``.

    ``where`` starts with ``prefix`` (e.g. the subject folder) and the file's name.  A row that is
    not a record, or that has no id, is a BenchmarkError naming the file, the row and the id field.
    """
    root_dir = root if root.is_dir() else root.parent
    for f in files:
        dirs: list[Path] = []
        for d in (f.parent, f.parent.parent, root_dir):
            if d not in dirs:
                dirs.append(d)
        name = prefix + f.name
        for i, row in enumerate(read_records(f)):
            if not isinstance(row, dict):
                raise BenchmarkError(f"{f}: row {i} is not a record")
            rid = next((as_text(row.get(k)) for k in id_fields if as_text(row.get(k))), "")
            where = f"{name} row {i} ({id_fields[0]} {rid or '?'})"
            if not rid:
                raise BenchmarkError(f"{where}: missing field {id_fields[0]!r}")
            yield SourceRow(data=row, file=f, index=i, id=rid, where=where, image_dirs=tuple(dirs))
