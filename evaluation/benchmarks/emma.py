"""EMMA (luckychao/EMMA; EMMA-mini has the same layout): Math, Physics, Chemistry, Coding.

Expected local layout (the Hugging Face release, one folder per subject config)::

    DATA_DIR/emma/Math/test-00000-of-00001.parquet
    DATA_DIR/emma/Physics/test-*.parquet
    DATA_DIR/emma/Chemistry/test-*.parquet
    DATA_DIR/emma/Coding/test-*.parquet

Variants: ``all`` (default: every subject folder present) or one subject (``emma:math``, ...).

Field mapping:

- ``<Subject>/<pid>`` -> id (pids are only unique within a subject); ``question`` -> question text,
  whose ``<image_k>`` placeholders become ``<image>`` tokens at the same place with ``image_1`` ..
  ``image_5`` in mention order (unmentioned images first);
- ``type == "Multiple Choice"``: ``options`` -> options A, B, ...; ``answer`` is the letter -> gold;
  ``Open-ended``: gold = ``answer`` (free form);
- categories: ``subject``, ``category``, ``task``; ``context`` and ``source`` are kept in meta.
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

NAME = "emma"
SUBJECTS = ("Math", "Physics", "Chemistry", "Coding")
PLACEHOLDER = r"<image\s*_?(\d+)>"
MAX_IMAGES = 5
TABLES = ["test-*.parquet", "data/test-*.parquet", "*.parquet", "test.jsonl", "*.jsonl", "test.json"]


def _subject_dirs(path: Path, variant: str) -> list[tuple[str, Path]]:
    if path.is_file():
        return [(variant.capitalize() if variant != "all" else "", path)]
    wanted = SUBJECTS if variant == "all" else tuple(s for s in SUBJECTS if s.lower() == variant)
    out = []
    for s in wanted:
        for name in (s, s.lower()):
            if (path / name).is_dir():
                out.append((s, path / name))
                break
    if not out:
        raise BenchmarkError(f"{NAME}: no subject folder under {path} (expected {', '.join(wanted)})")
    return out


def load(path: Path, variant: str | None = None) -> list[EvalItem]:
    variant = (variant or "all").lower()
    items = []
    for subject_dir, folder in _subject_dirs(path, variant):
        files = find_tables(folder, TABLES)
        if not files:
            raise BenchmarkError(f"{NAME}: no table under {folder} (tried {TABLES})")
        for f, i, row in iter_rows(files):
            pid = as_text(row.get("pid"))
            where = f"{folder.name}/{f.name} row {i} (pid {pid or '?'})"
            if not pid:
                raise BenchmarkError(f"{where}: missing field 'pid'")
            subject = as_text(row.get("subject")) or subject_dir
            answer = as_text(require(row, "answer", where))
            base = [f.parent, folder if folder.is_dir() else folder.parent]
            found = {}
            for k in range(1, MAX_IMAGES + 1):
                img = load_image(row.get(f"image_{k}"), base, where)
                if img is not None:
                    found[k] = img
            text, images = interleave_images(as_text(require(row, "question", where)), found, PLACEHOLDER)
            options = parse_options(row.get("options"), where)
            is_mc = as_text(row.get("type")).lower().startswith("multiple") or (
                bool(options) and not as_text(row.get("type"))
            )
            item = EvalItem(
                id=f"{subject_dir or subject}/{pid}",
                benchmark=NAME if variant == "all" else f"{NAME}:{variant}",
                question=text,
                images=images,
                gold=answer,
                question_type=FREE_FORM,
                answer_type="expression",
                categories={
                    "subject": subject,
                    "category": as_text(row.get("category")),
                    "task": as_text(row.get("task")),
                },
                meta={"context": as_text(row.get("context")), "source": as_text(row.get("source"))},
            )
            if is_mc:
                if not options:
                    raise BenchmarkError(f"{where}: multiple-choice question without 'options'")
                set_multiple_choice(item, answer, options, where)
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
