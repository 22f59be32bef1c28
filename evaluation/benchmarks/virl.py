"""ViRL39K-format sets (ViRL39K itself, and the synthetic set of the CPU demo): ``virl`` / ``synthetic``.

Expected local layout: whatever ``common.data.loader.read_table`` reads (the training loader, so the
held-out set is parsed exactly like the training data)::

    DATA_DIR/virl/eval.parquet                 # a parquet file of ViRL39K's schema (+ images/ for paths)
    DATA_DIR/virl/                             # or a folder: <split>.parquet, data/*.parquet, saved dataset
    virl=.cache/data/synth/eval.parquet        # or an explicit path (what the learner's periodic eval uses)

Variants: ``eval`` (default; with a folder, the ``eval`` split if there is one, else ``test``, else
the folder's tables), ``test``, ``train``.

Field mapping: ``qid`` -> id; ``question`` (with ``<image>`` placeholders, options already in the
text) -> question; ``image`` (list) -> images; ``answer`` (usually ``\\boxed{B}``) -> gold as is
(the verifier unboxes it); an answer that is an option letter makes the item multiple choice;
categories: ``category``, ``source``.
"""

from __future__ import annotations

from pathlib import Path

from evaluation.benchmarks.base import FREE_FORM, MULTIPLE_CHOICE, BenchmarkError, BenchmarkSpec, EvalItem, normalize_letter

NAME = "virl"
VARIANTS = ("eval", "test", "train")


def _unbox(answer: str) -> str:
    a = answer.strip()
    if a.startswith("\\boxed{") and a.endswith("}"):
        return a[len("\\boxed{") : -1].strip()
    return a


def _split_for(path: Path, variant: str) -> str | None:
    if not path.is_dir():
        return None
    candidates = [variant] + (["test"] if variant == "eval" else [])
    for split in candidates:
        if (path / f"{split}.parquet").is_file() or (path / f"{split}.arrow").is_file() or (path / split).is_dir():
            return split
    return None


def load(path: Path, variant: str | None = None) -> list[EvalItem]:
    from common.data.loader import load_rows
    from common.data.schema import DataError

    variant = variant or "eval"
    try:
        rows = load_rows(path, split=_split_for(path, variant))
    except DataError as exc:
        raise BenchmarkError(f"{NAME}: {exc}") from None
    items = []
    for row in rows:
        try:
            images = row.image_bytes()
        except DataError as exc:
            raise BenchmarkError(f"{NAME}: {exc}") from None
        letter = normalize_letter(_unbox(row.answer))
        items.append(
            EvalItem(
                id=row.qid,
                benchmark=NAME,
                question=row.question,
                images=images,
                gold=row.answer,
                question_type=MULTIPLE_CHOICE if letter else FREE_FORM,
                answer_type="letter" if letter else "expression",
                categories={"category": row.category, "source": row.source},
            )
        )
    return items


SPEC = BenchmarkSpec(
    name=NAME,
    description="a ViRL39K-format set (ViRL39K, or the synthetic held-out set; alias: synthetic)",
    load=load,
    variants=VARIANTS,
    default_variant="eval",
    dir_names=("virl", "virl39k", "ViRL39K", "synthetic"),
)
