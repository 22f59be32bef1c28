"""Small synthetic benchmark suites written in each benchmark's public layout, with known truth.

Every generator writes files the way the public release lays them out (Hugging Face parquet with
inline image structs, or json/jsonl plus an ``images/`` folder) and returns the truth per item:
id, gold, question type, categories, and the colours of its images in prompt order (each image is a
small solid-colour PNG, so a test can tell which image reached the model at which place).
Every question carries a tag ``[b-k]`` that the scripted engine uses to look up its answer.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

IMG_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def color_for(tag_num: int, image_no: int) -> tuple[int, int, int]:
    return ((37 * tag_num + 11) % 256, (60 * image_no + 5) % 256, 200)


def png(color: tuple[int, int, int], size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def pixel_of(data: bytes) -> tuple[int, int, int]:
    with Image.open(io.BytesIO(data)) as im:
        return tuple(im.convert("RGB").getpixel((0, 0)))


def _write_parquet(path: Path, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


# --------------------------------------------------------------------------- MathVista


MATHVISTA_SCHEMA = pa.schema(
    [
        ("pid", pa.string()),
        ("question", pa.string()),
        ("image", pa.string()),
        ("decoded_image", IMG_STRUCT),
        ("choices", pa.list_(pa.string())),
        ("unit", pa.string()),
        ("precision", pa.float64()),
        ("answer", pa.string()),
        ("question_type", pa.string()),
        ("answer_type", pa.string()),
        (
            "metadata",
            pa.struct(
                [
                    ("category", pa.string()),
                    ("context", pa.string()),
                    ("grade", pa.string()),
                    ("img_height", pa.int64()),
                    ("img_width", pa.int64()),
                    ("language", pa.string()),
                    ("skills", pa.list_(pa.string())),
                    ("source", pa.string()),
                    ("split", pa.string()),
                    ("task", pa.string()),
                ]
            ),
        ),
        ("query", pa.string()),
    ]
)


def mathvista_rows(n: int = 6) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows, truth = [], []
    for k in range(1, n + 1):
        pid = str(k)
        tag = f"[mathvista-{k}]"
        color = color_for(k, 1)
        kind = k % 3  # 0: multi_choice, 1: integer, 2: float with precision 1
        meta = {
            "category": "math-targeted-vqa" if k % 2 else "general-vqa",
            "context": "geometry diagram" if kind == 0 else "bar chart",
            "grade": "high school",
            "img_height": 8,
            "img_width": 8,
            "language": "english",
            "skills": ["algebraic reasoning", "arithmetic reasoning"] if k % 2 else ["arithmetic reasoning"],
            "source": "synthetic",
            "split": "testmini",
            "task": ["geometry problem solving", "figure question answering", "math word problem"][kind],
        }
        if kind == 0:
            choices = [f"{10 * k + j} cm" for j in range(4)]
            answer = choices[k % 4]
            row = dict(question=f"{tag} What is the length of side AB?", choices=choices, answer=answer,
                       question_type="multi_choice", answer_type="text", precision=None, unit="")
            gold, gold_text = "ABCD"[k % 4], answer
        elif kind == 1:
            answer = str(k + 3)
            row = dict(question=f"{tag} How many bars are there?", choices=None, answer=answer,
                       question_type="free_form", answer_type="integer", precision=None, unit="")
            gold, gold_text = answer, None
        else:
            answer = f"{k}.5"
            row = dict(question=f"{tag} What is the value of the highest bar?", choices=None, answer=answer,
                       question_type="free_form", answer_type="float", precision=1.0, unit="")
            gold, gold_text = answer, None
        row.update(pid=pid, image=f"images/{pid}.png", decoded_image={"bytes": png(color), "path": f"{pid}.png"},
                   metadata=meta, query="Hint: ...\n" + row["question"])
        rows.append(row)
        truth.append(dict(id=pid, tag=tag, gold=gold, gold_text=gold_text, choices=row["choices"] or [],
                          question_type="multiple_choice" if kind == 0 else "free_form",
                          answer_type=row["answer_type"] if kind else "letter",
                          task=meta["task"], skills=meta["skills"], colors=[color]))
    return rows, truth


def write_mathvista(root: Path, n: int = 6) -> list[dict[str, Any]]:
    """HF layout: ``mathvista/data/testmini-00000-of-00001.parquet`` with inline images."""
    rows, truth = mathvista_rows(n)
    _write_parquet(root / "mathvista" / "data" / "testmini-00000-of-00001.parquet", rows, MATHVISTA_SCHEMA)
    return truth


def write_mathvista_json(root: Path, n: int = 6) -> list[dict[str, Any]]:
    """Original GitHub layout: ``testmini.json`` mapping pid -> record, images in ``images/``."""
    rows, truth = mathvista_rows(n)
    folder = root / "mathvista"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    data = {}
    for r in rows:
        (folder / r["image"]).write_bytes(r["decoded_image"]["bytes"])
        rec = {k: v for k, v in r.items() if k not in ("decoded_image",)}
        data[r["pid"]] = rec
    (folder / "testmini.json").write_text(json.dumps(data))
    return truth


# --------------------------------------------------------------------------- MathVerse


MATHVERSE_SCHEMA = pa.schema(
    [
        ("sample_index", pa.string()),
        ("problem_index", pa.string()),
        ("problem_version", pa.string()),
        ("question", pa.string()),
        ("image", IMG_STRUCT),
        ("answer", pa.string()),
        ("question_type", pa.string()),
        ("metadata", pa.struct([("split", pa.string()), ("source", pa.string()), ("subject", pa.string()), ("subfield", pa.string())])),
        ("query_wo", pa.string()),
        ("query_cot", pa.string()),
        ("question_for_eval", pa.string()),
    ]
)
VERSIONS = ("Text Dominant", "Text Lite", "Vision Intensive", "Vision Dominant", "Vision Only")


def write_mathverse(root: Path, n_problems: int = 2) -> list[dict[str, Any]]:
    """HF layout: ``mathverse/testmini.parquet``; each problem in the 5 versions."""
    rows, truth = [], []
    s = 0
    for p in range(1, n_problems + 1):
        mc = p % 2 == 1
        for v in VERSIONS:
            s += 1
            tag = f"[mathverse-{s}]"
            color = color_for(s, 1)
            if mc:
                q = f"{tag} As shown in the figure, find the angle.\nChoices:\nA:30°\nB:45°\nC:60°\nD:90°"
                answer = "C"
            else:
                q = f"{tag} Find the area of the triangle."
                answer = "12"
            if v == "Vision Only":
                q = ""  # the question is only in the diagram
            rows.append(dict(sample_index=str(s), problem_index=str(p), problem_version=v, question=q,
                             image={"bytes": png(color), "path": f"{s}.png"}, answer=answer,
                             question_type="multi-choice" if mc else "free-form",
                             metadata=dict(split="testmini", source="synthetic", subject="plane geometry" if mc else "functions", subfield="angle" if mc else "area"),
                             query_wo="...", query_cot="...", question_for_eval=q))
            truth.append(dict(id=str(s), tag=None if v == "Vision Only" else tag, gold=answer, question_type="multiple_choice" if mc else "free_form",
                              problem_version=v, colors=[color], vision_only=v == "Vision Only"))
    _write_parquet(root / "mathverse" / "testmini.parquet", rows, MATHVERSE_SCHEMA)
    return truth


# --------------------------------------------------------------------------- MathVision


MATHVISION_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("question", pa.string()),
        ("options", pa.list_(pa.string())),
        ("image", pa.string()),
        ("decoded_image", IMG_STRUCT),
        ("answer", pa.string()),
        ("solution", pa.string()),
        ("level", pa.int64()),
        ("subject", pa.string()),
    ]
)


def mathvision_rows(n: int = 6) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows, truth = [], []
    for k in range(1, n + 1):
        tag = f"[mathvision-{k}]"
        color = color_for(k, 1)
        mc = k % 2 == 1
        options = [str(k + j) for j in range(5)] if mc else []
        answer = "ABCDE"[k % 5] if mc else f"\\frac{{{k}}}{{2}}"
        question = f"{tag} Which number is missing?\n<image1>" if k != 3 else f"<image1>\n{tag} How many squares?"
        rows.append(dict(id=str(k), question=question, options=options, image=f"images/{k}.jpg",
                         decoded_image={"bytes": png(color), "path": f"{k}.jpg"}, answer=answer, solution=None,
                         level=1 + k % 5, subject="counting" if mc else "algebra"))
        truth.append(dict(id=str(k), tag=tag, gold=answer, question_type="multiple_choice" if mc else "free_form",
                          subject="counting" if mc else "algebra", level=str(1 + k % 5), colors=[color],
                          choices=options))
    return rows, truth


def write_mathvision(root: Path, n: int = 6) -> list[dict[str, Any]]:
    """HF layout: ``mathvision/data/test-00000-of-00001.parquet`` with ``decoded_image`` inline."""
    rows, truth = mathvision_rows(n)
    _write_parquet(root / "mathvision" / "data" / "test-00000-of-00001.parquet", rows, MATHVISION_SCHEMA)
    return truth


def write_mathvision_jsonl(root: Path, n: int = 6) -> list[dict[str, Any]]:
    """GitHub layout: ``mathvision/test.jsonl`` + ``images/<id>.jpg`` (``image`` is the relative path)."""
    rows, truth = mathvision_rows(n)
    folder = root / "mathvision"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    with (folder / "test.jsonl").open("w") as fh:
        for r in rows:
            (folder / r["image"]).write_bytes(r["decoded_image"]["bytes"])
            fh.write(json.dumps({k: v for k, v in r.items() if k != "decoded_image"}) + "\n")
    return truth


# --------------------------------------------------------------------------- MMMU-Pro


def _mmmu_standard_schema() -> pa.Schema:
    fields = [("id", pa.string()), ("question", pa.string()), ("options", pa.string()), ("explanation", pa.string())]
    fields += [(f"image_{k}", IMG_STRUCT) for k in range(1, 8)]
    fields += [("img_type", pa.string()), ("answer", pa.string()), ("topic_difficulty", pa.string()), ("subject", pa.string())]
    return pa.schema(fields)


MMMU_VISION_SCHEMA = pa.schema(
    [("id", pa.string()), ("image", IMG_STRUCT), ("options", pa.string()), ("answer", pa.string()), ("subject", pa.string())]
)


def write_mmmu_pro(root: Path, n: int = 4) -> dict[str, list[dict[str, Any]]]:
    """HF layout: ``mmmu_pro/standard (10 options)/test-*.parquet`` and ``mmmu_pro/vision/test-*.parquet``.

    Item 1 mentions ``<image 2>`` before ``<image 1>`` (mention order decides image order) and
    mentions ``<image 2>`` twice; item 2 has an image the question never mentions.
    """
    std_rows, std_truth, vis_rows, vis_truth = [], [], [], []
    for k in range(1, n + 1):
        tag = f"[mmmu_pro-{k}]"
        options = [f"option {k}-{j}" for j in range(10)]
        answer = "ABCDEFGHIJ"[(3 * k) % 10]
        imgs = {1: png(color_for(k, 1)), 2: png(color_for(k, 2))}
        if k == 1:
            q = f"{tag} Compare <image 2> with <image 1>. Which one is larger than <image 2>?"
            colors = [color_for(k, 2), color_for(k, 1)]
            expect_q = f"{tag} Compare <image> with <image>. Which one is larger than [image 2]?"
        elif k == 2:
            q = f"{tag} What does <image 2> show?"
            colors = [color_for(k, 1), color_for(k, 2)]  # unmentioned image 1 goes first
            expect_q = f"<image>\n{tag} What does <image> show?"
        else:
            q = f"<image 1> {tag} Which option fits <image 2>?"
            colors = [color_for(k, 1), color_for(k, 2)]
            expect_q = f"<image> {tag} Which option fits <image>?"
        row = dict(id=f"validation_Math_{k}", question=q, options=repr(options), explanation="", img_type="['Diagrams']",
                   answer=answer, topic_difficulty=["Easy", "Medium", "Hard"][k % 3], subject="Math" if k % 2 else "Physics")
        for i in range(1, 8):
            row[f"image_{i}"] = {"bytes": imgs[i], "path": None} if i in imgs else None
        std_rows.append(row)
        std_truth.append(dict(id=row["id"], tag=tag, gold=answer, question_type="multiple_choice", subject=row["subject"],
                              colors=colors, expect_question=expect_q, choices=options, topic_difficulty=row["topic_difficulty"]))
        vcolor = color_for(k, 5)
        vis_rows.append(dict(id=row["id"], image={"bytes": png(vcolor), "path": None}, options=repr(options), answer=answer, subject=row["subject"]))
        vis_truth.append(dict(id=row["id"], tag=None, gold=answer, question_type="multiple_choice", subject=row["subject"], colors=[vcolor]))
    _write_parquet(root / "mmmu_pro" / "standard (10 options)" / "test-00000-of-00001.parquet", std_rows, _mmmu_standard_schema())
    _write_parquet(root / "mmmu_pro" / "vision" / "test-00000-of-00001.parquet", vis_rows, MMMU_VISION_SCHEMA)
    return {"standard10": std_truth, "vision": vis_truth}


# --------------------------------------------------------------------------- EMMA


def _emma_schema() -> pa.Schema:
    fields = [("pid", pa.string()), ("question", pa.string()), ("options", pa.list_(pa.string())), ("answer", pa.string())]
    fields += [(f"image_{k}", IMG_STRUCT) for k in range(1, 6)]
    fields += [(c, pa.string()) for c in ("solution", "subject", "task", "category", "source", "type", "context")]
    return pa.schema(fields)


def write_emma(root: Path, per_subject: int = 3) -> list[dict[str, Any]]:
    """HF layout: ``emma/Math/test-00000-of-00001.parquet`` and ``emma/Physics/...`` (pids repeat across subjects)."""
    truth = []
    num = 0
    for subject in ("Math", "Physics"):
        rows = []
        for k in range(1, per_subject + 1):
            num += 1
            tag = f"[emma-{num}]"
            mc = k != 2
            options = ["red", "green", "blue", "yellow"] if mc else []
            answer = "ABCD"[(k + num) % 4] if mc else str(2 * num)
            row = dict(pid=str(k), question=f"{tag} Look at <image_1>. What is the result?", options=options or None,
                       answer=answer, solution="", subject=subject, task=f"{subject.lower()}-task-{k % 2}",
                       category="2D Transformation" if k % 2 else "Path Tracing", source="synthetic",
                       type="Multiple Choice" if mc else "Open-ended", context="")
            row["image_1"] = {"bytes": png(color_for(num, 1)), "path": None}
            for i in range(2, 6):
                row[f"image_{i}"] = None
            rows.append(row)
            truth.append(dict(id=f"{subject}/{k}", tag=tag, gold=answer, question_type="multiple_choice" if mc else "free_form",
                              subject=subject, colors=[color_for(num, 1)], choices=options))
        _write_parquet(root / "emma" / subject / "test-00000-of-00001.parquet", rows, _emma_schema())
    return truth


def write_all(root: Path) -> dict[str, list[dict[str, Any]]]:
    mm = write_mmmu_pro(root)
    return {
        "mathvista": write_mathvista(root),
        "mathverse": write_mathverse(root),
        "mathvision": write_mathvision(root),
        "mmmu_pro": mm["standard10"],
        "mmmu_pro:vision": mm["vision"],
        "emma": write_emma(root),
    }
