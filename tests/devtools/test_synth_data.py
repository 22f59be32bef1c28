"""The synthetic shapes set: ViRL39K schema, determinism, balance, and answers that need the image."""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
from collections import Counter, deque
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from common.data.schema import ALL_COLUMNS, CATEGORIES
from devtools.synth_data import COLORS, KINDS, make_rows, summarize, synth_dataset

ROOT = Path(__file__).resolve().parents[2]
OPTION = re.compile(r"^([ABCD])\. (.+)$", re.M)


def _options(question: str) -> dict[str, str]:
    return dict(OPTION.findall(question))


def _letter(answer: str) -> str:
    m = re.fullmatch(r"\\boxed\{([ABCD])\}", answer)
    assert m, answer
    return m.group(1)


def _kind(question: str) -> str:
    return next(k for k, (text, _) in KINDS.items() if text in question)


def _pixels_by_color(img: Image.Image) -> dict[str, list[tuple[int, int]]]:
    rgb = {v: k for k, v in COLORS.items()}
    out: dict[str, list[tuple[int, int]]] = {}
    w, h = img.size
    px = img.load()
    for y in range(h):
        for x in range(w):
            name = rgb.get(px[x, y])
            if name:
                out.setdefault(name, []).append((x, y))
    return out


def _components(img: Image.Image) -> int:
    w, h = img.size
    px = img.load()
    seen = set()
    n = 0
    for y in range(h):
        for x in range(w):
            if px[x, y] == (255, 255, 255) or (x, y) in seen:
                continue
            n += 1
            todo = deque([(x, y)])
            seen.add((x, y))
            while todo:
                cx, cy = todo.popleft()
                for nx, ny in ((cx + 1, cy), (cx - 1, cy), (cx, cy + 1), (cx, cy - 1)):
                    if 0 <= nx < w and 0 <= ny < h and (nx, ny) not in seen and px[nx, ny] != (255, 255, 255):
                        seen.add((nx, ny))
                        todo.append((nx, ny))
    return n


def test_schema_and_types(synth_data_dir):
    for split, n in (("train", 58), ("eval", 6)):
        t = pq.read_table(synth_data_dir / f"{split}.parquet")
        assert t.num_rows == n
        assert set(t.column_names) == set(ALL_COLUMNS)
        assert str(t.schema.field("image").type) == "list<element: struct<bytes: binary, path: string>>"
        assert b"huggingface" in t.schema.metadata
        for r in t.to_pylist():
            assert r["question"].startswith("<image>") and r["question"].count("<image>") == 1
            assert set(_options(r["question"])) == set("ABCD")
            _letter(r["answer"])
            assert r["category"] in CATEGORIES
            assert r["source"] == "synthetic-shapes"
            for col in ("PassRate_7BBase", "PassRate_32BTrained"):
                assert r[col] == -1.0 or 0.0 <= r[col] <= 1.0
            (img,) = r["image"]
            assert img["path"] == f"{r['qid']}-0.png"
            im = Image.open(io.BytesIO(img["bytes"]))
            assert im.format == "PNG" and im.size == (56, 56)
    qids = pq.read_table(synth_data_dir / "train.parquet").column("qid").to_pylist()
    qids += pq.read_table(synth_data_dir / "eval.parquet").column("qid").to_pylist()
    assert len(set(qids)) == len(qids)


def test_deterministic_for_a_seed(tmp_path):
    def digest(d: Path) -> dict[str, str]:
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.glob("*.parquet"))}

    synth_dataset(tmp_path / "a", n=40, seed=7)
    synth_dataset(tmp_path / "b", n=40, seed=7)
    synth_dataset(tmp_path / "c", n=40, seed=8)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a")["train.parquet"] != digest(tmp_path / "c")["train.parquet"]


def test_letters_balanced_and_text_says_nothing():
    rows = make_rows(2000, seed=0, kinds=list(KINDS))
    letters = Counter(_letter(r["answer"]) for r in rows)
    assert letters == {"A": 500, "B": 500, "C": 500, "D": 500}
    by_kind: dict[str, Counter] = {}
    for r in rows:
        by_kind.setdefault(_kind(r["question"]), Counter())[_letter(r["answer"])] += 1
    assert set(by_kind) == set(KINDS)
    for kind, c in by_kind.items():
        assert all(0.18 <= c[l] / sum(c.values()) <= 0.32 for l in "ABCD"), (kind, c)
    # blind strategies score chance: always the first option, a fixed favourite value, the first
    # option in alphabetical order
    def acc(pick) -> float:
        return sum(pick(r) == _letter(r["answer"]) for r in rows) / len(rows)

    fav = {"largest_color": "red", "leftmost_color": "red", "largest_type": "circle", "count": "4", "dominant_color": "red"}
    strategies = {
        "first": lambda r: "A",
        "favourite": lambda r: next((l for l, o in _options(r["question"]).items() if o == fav[_kind(r["question"])]), "A"),
        "alphabetical": lambda r: min(_options(r["question"]).items(), key=lambda kv: kv[1])[0],
    }
    for name, pick in strategies.items():
        assert 0.20 <= acc(pick) <= 0.30, name


def test_answer_is_readable_from_the_pixels():
    rows = make_rows(150, seed=1, kinds=list(KINDS))
    checked = Counter()
    for r in rows:
        kind = _kind(r["question"])
        img = Image.open(io.BytesIO(r["image"][0]["bytes"])).convert("RGB")
        gold = _options(r["question"])[_letter(r["answer"])]
        if kind == "count":
            assert _components(img) == int(gold)
        elif kind == "largest_color":
            pixels = _pixels_by_color(img)
            assert max(pixels, key=lambda c: len(pixels[c])) == gold
            assert set(pixels) == set(_options(r["question"]).values())  # the options are the shapes' colors
        elif kind == "dominant_color":
            pixels = _pixels_by_color(img)
            assert max(pixels, key=lambda c: len(pixels[c])) == gold
            assert len(pixels[gold]) >= 0.3 * img.width * img.height  # the answer fills much of the image
            assert list(_options(r["question"]).values()) == ["red", "green", "blue", "yellow"]  # fixed order
        elif kind == "leftmost_color":
            pixels = _pixels_by_color(img)
            centre = {c: (min(x for x, _ in p) + max(x for x, _ in p)) / 2 for c, p in pixels.items()}
            assert min(centre, key=centre.get) == gold
        else:  # largest_type: the biggest blob's fill ratio of its box tells square / circle / other
            pixels = _pixels_by_color(img)
            big = max(pixels.values(), key=len)
            xs, ys = [x for x, _ in big], [y for _, y in big]
            fill = len(big) / ((max(xs) - min(xs) + 1) * (max(ys) - min(ys) + 1))
            expected = "square" if fill > 0.95 else "circle" if fill > 0.7 else ("triangle", "diamond")
            assert gold == expected or gold in expected
        checked[kind] += 1
    assert all(checked[k] >= 15 for k in KINDS)


def test_kinds_and_image_size_options(tmp_path):
    rows = make_rows(8, seed=0, size=84, kinds=["count"])
    assert {r["category"] for r in rows} == {"(GradeSchool) Non-Geo Math"}
    assert Image.open(io.BytesIO(rows[0]["image"][0]["bytes"])).size == (84, 84)
    with pytest.raises(ValueError, match="unknown question kinds"):
        make_rows(4, kinds=["colour"])
    with pytest.raises(ValueError, match="eval_fraction"):
        synth_dataset(tmp_path, n=10, eval_fraction=1.0)


def test_hf_datasets_reads_it_back(synth_data_dir, tmp_path):
    import datasets

    ds = datasets.load_dataset(
        "parquet", data_files={"train": str(synth_data_dir / "train.parquet")}, split="train", cache_dir=str(tmp_path)
    )
    assert len(ds) == 58
    img = ds[0]["image"][0]
    assert isinstance(img, Image.Image) and img.size == (56, 56)
    assert ds.features["image"].feature.__class__.__name__ == "Image"


def test_cli_data_synth(tmp_path):
    out = tmp_path / "cli-synth"
    r = subprocess.run(
        [sys.executable, "-m", "rethinker.cli", "data", "synth", str(out), "--n", "40", "--seed", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"train: {out / 'train.parquet'} rows=36" in r.stdout
    assert f"eval: {out / 'eval.parquet'} rows=4" in r.stdout
    assert "Spatial Reasoning" in r.stdout
    assert summarize(out / "train.parquet")["rows"] == 36


def test_difficulty_levels_of_the_dominant_color_task():
    rows = make_rows(300, seed=3, kinds=["dominant_color"], levels=[0, 1, 2])
    by_source = Counter(r["source"] for r in rows)
    assert by_source == {"synthetic-shapes": 100, "synthetic-shapes-l1": 100, "synthetic-shapes-l2": 100}
    share_of_gold = {}
    for r in rows:
        img = Image.open(io.BytesIO(r["image"][0]["bytes"])).convert("RGB")
        pixels = _pixels_by_color(img)
        gold = _options(r["question"])[_letter(r["answer"])]
        assert max(pixels, key=lambda c: len(pixels[c])) == gold  # still readable from the pixels
        assert len(pixels) == {"synthetic-shapes": 2, "synthetic-shapes-l1": 3, "synthetic-shapes-l2": 4}[r["source"]]
        share_of_gold.setdefault(r["source"], []).append(len(pixels[gold]) / sum(len(p) for p in pixels.values()))
    mean = {k: sum(v) / len(v) for k, v in share_of_gold.items()}
    # harder levels: the answer's color dominates the shapes' pixels less
    assert mean["synthetic-shapes"] > mean["synthetic-shapes-l1"] > mean["synthetic-shapes-l2"] > 0.3
    with pytest.raises(ValueError, match="difficulty levels"):
        make_rows(4, kinds=["dominant_color"], levels=[3])
    with pytest.raises(ValueError, match="dominant_color"):
        make_rows(4, kinds=["count"], levels=[0, 1])
    # one level draws nothing extra: the default rows are unchanged
    assert make_rows(20, seed=3, kinds=["dominant_color"], levels=[0]) == make_rows(20, seed=3, kinds=["dominant_color"])
