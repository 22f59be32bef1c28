"""MathVista (AI4Math/MathVista), split ``testmini`` (1,000 items; ``test`` has no public answers).

Expected local layout (either form of the public release)::

    DATA_DIR/mathvista/data/testmini-00000-of-00001.parquet   # Hugging Face parquet, images inline
    DATA_DIR/mathvista/testmini.parquet | testmini.jsonl | testmini.json  (+ images/<pid>.jpg)

``testmini.json`` may be the original GitHub release's mapping ``pid -> record``.

Field mapping:

- ``pid`` -> id; ``question`` -> question text (the pre-rendered ``query`` with its answer-format
  hint is not used: the spec's prompt is question + options + the boxed suffix);
- ``decoded_image`` (inline bytes) or else ``image`` (a path such as ``images/1.jpg``, resolved
  against the benchmark folder) -> the single image, placed before the question;
- ``question_type == "multi_choice"``: ``choices`` -> options A, B, ...; ``answer`` is the option
  *text*, so gold = the letter of ``answer`` in ``choices`` and ``gold_text`` = the text;
- ``free_form``: gold = ``answer``; ``answer_type`` (integer / float / text / list), ``precision``
  and ``unit`` are kept (the judge rounds a float prediction to ``precision`` decimals as MathVista's
  own scorer does, see evaluation.judging);
- categories: ``metadata.task``, ``metadata.category``, ``metadata.context``, ``metadata.grade``,
  ``metadata.skills`` (multi-label); the report adds ``question_type`` for every benchmark.
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
    choice_index,
    find_tables,
    iter_rows,
    letter_of,
    load_image,
    prepend_images,
    require,
)

NAME = "mathvista"
PATTERNS = {
    "testmini": ["data/testmini-*.parquet", "testmini*.parquet", "testmini.jsonl", "testmini.json", "*.parquet"],
}


def load(path: Path, variant: str | None = None) -> list[EvalItem]:
    variant = variant or "testmini"
    files = find_tables(path, PATTERNS[variant])
    if not files:
        raise BenchmarkError(f"{NAME}: no {variant} table under {path} (tried {PATTERNS[variant]})")
    items = []
    for f, i, row in iter_rows(files):
        pid = as_text(row.get("pid") or row.get("_key") or row.get("id"))
        where = f"{f.name} row {i} (pid {pid or '?'})"
        if not pid:
            raise BenchmarkError(f"{where}: missing field 'pid'")
        question = as_text(require(row, "question", where))
        answer = as_text(require(row, "answer", where))
        base = [f.parent, path if path.is_dir() else path.parent]
        img = load_image(row.get("decoded_image"), base, where) or load_image(row.get("image"), base, where)
        text, images = prepend_images(question, [img] if img else [])
        meta_in = row.get("metadata") or {}
        choices = [as_text(c) for c in (row.get("choices") or [])]
        qtype = as_text(row.get("question_type")) or ("multi_choice" if choices else "free_form")
        item = EvalItem(
            id=pid,
            benchmark=NAME,
            question=text,
            images=images,
            gold=answer,
            answer_type=as_text(row.get("answer_type")) or "text",
            categories={
                "task": as_text(meta_in.get("task")),
                "category": as_text(meta_in.get("category")),
                "context": as_text(meta_in.get("context")),
                "grade": as_text(meta_in.get("grade")),
                "skills": [as_text(s) for s in (meta_in.get("skills") or [])],
            },
            meta={"unit": as_text(row.get("unit")), "precision": row.get("precision"), "source": as_text(meta_in.get("source"))},
        )
        if qtype == "multi_choice":
            if not choices:
                raise BenchmarkError(f"{where}: multi_choice question without 'choices'")
            idx = choice_index(answer, choices)
            if idx is None:
                raise BenchmarkError(f"{where}: answer {answer!r} is not one of the choices {choices}")
            item.question_type = MULTIPLE_CHOICE
            item.choices = choices
            item.gold = letter_of(idx, where)
            item.gold_text = answer
            item.answer_type = "letter"
        else:
            item.question_type = FREE_FORM
        items.append(item)
    return items


SPEC = BenchmarkSpec(
    name=NAME,
    description="MathVista testmini (1,000 items; options -> letters, free-form numbers)",
    load=load,
    variants=tuple(PATTERNS),
    default_variant="testmini",
    dir_names=("mathvista", "MathVista"),
)
