"""A synthetic visual multiple-choice set in ViRL39K's schema, answerable only from the image.

Each image (56x56 by default: 4 merged vision tokens for Qwen2.5-VL, patch 14 / merge 2) shows a few
coloured shapes on white.  Question kinds (``kinds=``):

==================  ===============================================  ============================
kind                question                                         category
==================  ===============================================  ============================
``largest_color``   What is the color of the largest shape?          Spatial Reasoning
``leftmost_color``  What is the color of the leftmost shape?         Spatial Reasoning
``largest_type``    What type of shape is the largest one?           (GradeSchool) Geometric
``count``           How many shapes are there in the image?          (GradeSchool) Non-Geo Math
``dominant_color``  Which color has the largest shape?               Spatial Reasoning
==================  ===============================================  ============================

``dominant_color`` is the CPU demo's task: its options are always ``A. red B. green C. blue
D. yellow`` in that order and the largest shape has the answer's color (the small ones have other
colors), so the text still says nothing (25 % without the image) but the image-to-letter mapping is
direct enough for the tiny model to learn within minutes by RL.

Difficulty levels (``levels=``, ``dominant_color`` only) grade that task for the SSR ablation, where
some questions must be solved early and others late so that the share of groups with a non-zero
advantage falls as training proceeds:

=====  ============================================================  ==========================
level  scene                                                         ``source``
=====  ============================================================  ==========================
0      one big shape (80-85 % of the side) + 1 small distractor      ``synthetic-shapes``
1      one shape of 50-58 % of the side + 2 distractors of 20-26 %   ``synthetic-shapes-l1``
2      one shape of 36-42 % of the side + 3 distractors of 27-32 %   ``synthetic-shapes-l2``
=====  ============================================================  ==========================

Levels are dealt to the rows in equal shares (shuffled), like the kinds; with ``levels=(0,)`` (the
default) the rows are exactly those of earlier versions of this generator.

The four options A-D are listed in the question.  For the color kinds they are the colors of the four
shapes in the image, for ``largest_type`` the four shape types and for ``count`` the numbers 2-5, in
an order that puts the correct value at a letter drawn from an exactly balanced sequence.  So the
text says nothing about which option is right: a model that ignores the image scores 25 %.

Files: ``train.parquet`` and ``eval.parquet`` with ViRL39K's columns; ``image`` is a list of HF
``Image`` structs ``{"bytes": PNG bytes, "path": "<qid>-0.png"}`` and the parquet carries HF
``datasets`` feature metadata, so ``datasets.load_dataset("parquet", ...)`` decodes PIL images and
plain pyarrow reads dicts of bytes.  Everything is a deterministic function of ``seed``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from common.cli_args import UsageError
from common.data.images import encode_png
from common.data.schema import (
    COL_ANSWER,
    COL_CATEGORY,
    COL_IMAGE,
    COL_PASS_7B,
    COL_PASS_32B,
    COL_QID,
    COL_QUESTION,
    COL_SOURCE,
    IMAGE_PLACEHOLDER,
)

SOURCE = "synthetic-shapes"
LETTERS = ("A", "B", "C", "D")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 200, 20),
    "purple": (130, 50, 170),
    "orange": (245, 140, 20),
    "black": (20, 20, 20),
    "cyan": (20, 190, 200),
}
SHAPES = ("circle", "square", "triangle", "diamond")
COUNTS = ("2", "3", "4", "5")
KINDS: dict[str, tuple[str, str]] = {
    "largest_color": ("What is the color of the largest shape?", "Spatial Reasoning"),
    "leftmost_color": ("What is the color of the leftmost shape?", "Spatial Reasoning"),
    "largest_type": ("What type of shape is the largest one?", "(GradeSchool) Geometric"),
    "count": ("How many shapes are there in the image?", "(GradeSchool) Non-Geo Math"),
    "dominant_color": ("Which color has the largest shape?", "Spatial Reasoning"),
}
DEFAULT_KINDS = ("largest_color", "leftmost_color", "largest_type", "count")
# dominant_color difficulty: (big side, distractor side) as fractions of the image side, shapes in all
DOMINANT_LEVELS: dict[int, tuple[tuple[float, float], tuple[float, float], int]] = {
    0: ((0.80, 0.85), (0.13, 0.18), 2),
    1: ((0.50, 0.58), (0.20, 0.26), 3),
    2: ((0.36, 0.42), (0.27, 0.32), 4),
}
_AREA = {"circle": 0.785, "square": 1.0, "triangle": 0.5, "diamond": 0.5}  # area / side^2 of each shape
FIXED_COLORS = ("red", "green", "blue", "yellow")  # the fixed option order of ``dominant_color``
_BOXED = re.compile(r"^\\boxed\{(.*)\}$")
NOT_ANNOTATED_SHARE = 0.15  # share of rows whose pass rates are -1 (not annotated), like ViRL39K

# HF `datasets` feature metadata written into the parquet schema.
HF_FEATURES = {
    COL_QUESTION: {"dtype": "string", "_type": "Value"},
    COL_ANSWER: {"dtype": "string", "_type": "Value"},
    COL_PASS_32B: {"dtype": "float64", "_type": "Value"},
    COL_PASS_7B: {"dtype": "float64", "_type": "Value"},
    COL_CATEGORY: {"dtype": "string", "_type": "Value"},
    COL_SOURCE: {"dtype": "string", "_type": "Value"},
    COL_QID: {"dtype": "string", "_type": "Value"},
    COL_IMAGE: {"feature": {"_type": "Image"}, "_type": "List"},
}
ARROW_SCHEMA = pa.schema(
    [
        (COL_QUESTION, pa.string()),
        (COL_ANSWER, pa.string()),
        (COL_PASS_32B, pa.float64()),
        (COL_PASS_7B, pa.float64()),
        (COL_CATEGORY, pa.string()),
        (COL_SOURCE, pa.string()),
        (COL_QID, pa.string()),
        (COL_IMAGE, pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
    ],
    metadata={"huggingface": json.dumps({"info": {"features": HF_FEATURES}})},
)


@dataclass(frozen=True)
class Shape:
    kind: str  # one of SHAPES
    color: str  # one of COLORS
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (inclusive)

    @property
    def side(self) -> int:
        return self.box[2] - self.box[0] + 1

    @property
    def cx(self) -> float:
        return (self.box[0] + self.box[2]) / 2


def _draw(img: Image.Image, s: Shape) -> None:
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = s.box
    fill = COLORS[s.color]
    if s.kind == "circle":
        d.ellipse(s.box, fill=fill)
    elif s.kind == "square":
        d.rectangle(s.box, fill=fill)
    elif s.kind == "triangle":
        d.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:  # diamond
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        d.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)


def _place(rng: random.Random, sides: Sequence[int], size: int, *, min_gap_x: int = 0) -> list[tuple[int, int, int, int]] | None:
    """Non-overlapping boxes (1 px apart) for the given sides, or None if it did not fit."""
    boxes: list[tuple[int, int, int, int]] = []
    for side in sides:
        for _ in range(200):
            x0 = rng.randint(1, size - side - 1)
            y0 = rng.randint(1, size - side - 1)
            box = (x0, y0, x0 + side - 1, y0 + side - 1)
            if all(box[0] > b[2] + 1 or box[2] < b[0] - 1 or box[1] > b[3] + 1 or box[3] < b[1] - 1 for b in boxes):
                boxes.append(box)
                break
        else:
            return None
    if min_gap_x:
        cxs = sorted((b[0] + b[2]) / 2 for b in boxes)
        if cxs[1] - cxs[0] < min_gap_x:
            return None
    return boxes


def _scene(rng: random.Random, kind: str, size: int, target: str, level: int = 0) -> tuple[list[Shape], list[str]]:
    """Shapes whose answer to ``kind`` is ``target``, and the four option values (unordered)."""
    big_lo, big_hi = round(0.33 * size), round(0.42 * size)
    small_lo, small_hi = max(4, round(0.13 * size)), max(5, round(0.18 * size))
    n = int(target) if kind == "count" else 4
    if kind == "dominant_color":  # one big shape in the answer's color and smaller distractors
        (b0, b1), (s0, s1), n = DOMINANT_LEVELS[level]
        big_lo, big_hi = round(b0 * size), round(b1 * size)
        small_lo, small_hi = max(4, round(s0 * size)), max(5, round(s1 * size))
    mid_lo, mid_hi = max(5, round(0.16 * size)), max(6, round(0.24 * size))
    while True:
        if kind in ("largest_color", "largest_type", "dominant_color"):
            sides = [rng.randint(big_lo, big_hi)] + [rng.randint(small_lo, small_hi) for _ in range(n - 1)]
        else:
            sides = [rng.randint(mid_lo, mid_hi) for _ in range(n)]
        boxes = _place(rng, sides, size, min_gap_x=4 if kind == "leftmost_color" else 0)
        if boxes is not None:
            break
    colors = rng.sample(list(COLORS), n)
    kinds = [rng.choice(SHAPES) for _ in range(n)]
    if kind == "dominant_color" and level > 0:  # close sides: the answer must still cover the most pixels
        while min(_AREA[kinds[0]] * sides[0] ** 2 / (_AREA[k] * d**2) for k, d in zip(kinds[1:], sides[1:])) < 1.15:
            kinds = [rng.choice(SHAPES) for _ in range(n)]
    if kind == "dominant_color":
        colors = [target] + rng.sample([c for c in COLORS if c != target], n - 1)
    elif kind in ("largest_color", "leftmost_color"):
        # the shape that answers the question gets the target color (swap if another shape has it)
        at = 0 if kind == "largest_color" else min(range(n), key=lambda i: boxes[i][0] + boxes[i][2])
        if target in colors:
            j = colors.index(target)
            colors[at], colors[j] = colors[j], colors[at]
        else:
            colors[at] = target
    elif kind == "largest_type":
        kinds[0] = target
    shapes = [Shape(k, c, b) for k, c, b in zip(kinds, colors, boxes)]
    if kind == "dominant_color":
        options = list(FIXED_COLORS)
    elif kind in ("largest_color", "leftmost_color"):
        options = [s.color for s in shapes]
    elif kind == "largest_type":
        options = list(SHAPES)
    else:
        options = list(COUNTS)
    return shapes, options


def render(shapes: Iterable[Shape], size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), (255, 255, 255))
    for s in shapes:
        _draw(img, s)
    return img


def answer_of(kind: str, shapes: Sequence[Shape]) -> str:
    """The correct value for a scene, computed from the shapes (used to check generation)."""
    if kind == "count":
        return str(len(shapes))
    if kind == "leftmost_color":
        return min(shapes, key=lambda s: s.cx).color
    largest = max(shapes, key=lambda s: s.side)
    return largest.kind if kind == "largest_type" else largest.color


def _pass_rate(rng: random.Random) -> float:
    if rng.random() < NOT_ANNOTATED_SHARE:
        return -1.0
    return rng.randint(0, 8) / 8


def make_rows(
    n: int,
    *,
    seed: int = 0,
    size: int = 56,
    kinds: Sequence[str] = DEFAULT_KINDS,
    qid_prefix: str = "synth",
    levels: Sequence[int] = (0,),
) -> list[dict]:
    """``n`` rows in ViRL39K's schema (dicts), deterministic for ``seed``."""
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"unknown question kinds {bad}; choose from {list(KINDS)}")
    if size < 28:
        raise ValueError(f"image size must be >= 28, got {size}")
    bad_levels = [lv for lv in levels if lv not in DOMINANT_LEVELS]
    if bad_levels or not levels:
        raise ValueError(f"unknown difficulty levels {bad_levels}; choose from {list(DOMINANT_LEVELS)}")
    if tuple(levels) != (0,) and "dominant_color" not in kinds:
        raise ValueError("difficulty levels apply to the dominant_color kind only; add it to the kinds")
    rng = random.Random(f"synth-{seed}-{qid_prefix}")
    letters = [LETTERS[i % 4] for i in range(n)]
    rng.shuffle(letters)
    row_kinds = [kinds[i % len(kinds)] for i in range(n)]
    rng.shuffle(row_kinds)
    row_levels = [levels[i % len(levels)] for i in range(n)]
    if len(levels) > 1:  # (one level draws nothing: the default rows stay as they were)
        rng.shuffle(row_levels)
    rows = []
    for i in range(n):
        kind, letter = row_kinds[i], letters[i]
        level = row_levels[i] if kind == "dominant_color" else 0
        text, category = KINDS[kind]
        pool = list(COLORS) if kind.endswith("color") else list(SHAPES) if kind == "largest_type" else list(COUNTS)
        k = LETTERS.index(letter)
        target = FIXED_COLORS[k] if kind == "dominant_color" else rng.choice(pool)
        shapes, options = _scene(rng, kind, size, target, level)
        assert answer_of(kind, shapes) == target, (kind, target, shapes)
        if kind == "dominant_color":
            ordered = list(FIXED_COLORS)
        else:
            others = [o for o in options if o != target]
            rng.shuffle(others)
            ordered = others[:k] + [target] + others[k:]
        qid = f"{qid_prefix}-{seed}-{i:06d}"
        question = IMAGE_PLACEHOLDER + text + "\nChoices:\n" + "\n".join(f"{l}. {o}" for l, o in zip(LETTERS, ordered))
        rows.append(
            {
                COL_QUESTION: question,
                COL_ANSWER: f"\\boxed{{{letter}}}",
                COL_PASS_32B: _pass_rate(rng),
                COL_PASS_7B: _pass_rate(rng),
                COL_CATEGORY: category,
                COL_SOURCE: SOURCE if level == 0 else f"{SOURCE}-l{level}",
                COL_QID: qid,
                COL_IMAGE: [{"bytes": encode_png(render(shapes, size)), "path": f"{qid}-0.png"}],
            }
        )
    return rows


def write_parquet(rows: Sequence[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(list(rows), schema=ARROW_SCHEMA)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def synth_dataset(
    out_dir: str | Path,
    n: int = 2000,
    seed: int = 0,
    eval_fraction: float = 0.1,
    *,
    image_size: int = 56,
    kinds: Sequence[str] = DEFAULT_KINDS,
    levels: Sequence[int] = (0,),
) -> dict[str, Path]:
    """Write ``train.parquet`` and ``eval.parquet`` (``round(n * eval_fraction)`` eval rows) into
    ``out_dir``; returns ``{"train": path, "eval": path}``.  Each split's letters are balanced."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    n_eval = round(n * eval_fraction)
    out = Path(out_dir)
    train = make_rows(n - n_eval, seed=seed, size=image_size, kinds=kinds, qid_prefix="synth-train", levels=levels)
    evals = make_rows(n_eval, seed=seed, size=image_size, kinds=kinds, qid_prefix="synth-eval", levels=levels)
    return {"train": write_parquet(train, out / "train.parquet"), "eval": write_parquet(evals, out / "eval.parquet")}


def summarize(path: str | Path) -> dict:
    """Rows, category, source and answer-letter counts of one written split."""
    t = pq.read_table(path, columns=[COL_CATEGORY, COL_ANSWER, COL_SOURCE])
    cats = Counter(t.column(COL_CATEGORY).to_pylist())
    sources = Counter(t.column(COL_SOURCE).to_pylist())
    letters = Counter(_BOXED.sub(r"\1", a) for a in t.column(COL_ANSWER).to_pylist())
    return {"rows": t.num_rows, "categories": dict(sorted(cats.items())), "sources": dict(sorted(sources.items())),
            "answers": dict(sorted(letters.items()))}


def cmd_synth(args: argparse.Namespace) -> int:
    """``rethinker data synth OUT [--n 2000] [--seed 0]``."""
    kinds = getattr(args, "kinds", None) or DEFAULT_KINDS
    if isinstance(kinds, str):
        kinds = [k.strip() for k in kinds.split(",") if k.strip()]
    levels = getattr(args, "levels", None) or "0"
    try:
        levels = [int(x) for x in str(levels).split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"data synth: --levels must be comma-separated integers, got {args.levels!r}") from None
    try:
        paths = synth_dataset(
            args.out,
            n=args.n,
            seed=args.seed,
            eval_fraction=getattr(args, "eval_fraction", 0.1),
            image_size=getattr(args, "image_size", 56),
            kinds=kinds,
            levels=levels,
        )
    except (ValueError, OSError) as exc:
        raise UsageError(f"data synth: {exc}") from None
    for split, path in paths.items():
        s = summarize(path)
        print(f"{split}: {path} rows={s['rows']}")
        print(f"  categories: {json.dumps(s['categories'])}")
        print(f"  sources: {json.dumps(s['sources'])}")
        print(f"  answers: {json.dumps(s['answers'])}")
    return 0
