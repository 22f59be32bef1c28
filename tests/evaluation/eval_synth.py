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
                       type="Multiple Choice" if mc else "Open-ended",
                       context="A 3x3 grid is rotated by 90 degrees." if k == 3 else "")
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


# --------------------------------------------------------------------------- GitHub / JSON releases


def jpeg(color: tuple[int, int, int], size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="JPEG")
    return buf.getvalue()


def write_mathvista_github(repo: Path, n: int = 6, n_test: int = 3) -> list[dict[str, Any]]:
    """lupantech/MathVista as cloned, with images.zip unzipped into ``data/``::

        repo/data/testmini.json   pid -> record, "image": "images/<pid>.jpg" (relative to data/)
        repo/data/test.json       the test split (no answers): must never be read for testmini
        repo/data/images/<pid>.jpg

    Returns the testmini truth with each item's image ``bytes`` (as written).
    """
    rows, truth = mathvista_rows(n)
    images = repo / "data" / "images"
    images.mkdir(parents=True, exist_ok=True)
    data = {}
    for r, t in zip(rows, truth):
        r = {k: v for k, v in r.items() if k not in ("decoded_image", "query")}
        r["image"] = f"images/{r['pid']}.jpg"
        t["bytes"] = jpeg(t["colors"][0])
        (repo / "data" / r["image"]).write_bytes(t["bytes"])
        data[r["pid"]] = r
    (repo / "data" / "testmini.json").write_text(json.dumps(data, indent=4))
    test = {}
    for k in range(1000, 1000 + n_test):
        test[str(k)] = {"question": f"[mathvista-test-{k}] unanswered", "image": f"images/{k}.jpg", "choices": None,
                        "answer": None, "question_type": "free_form", "answer_type": "integer", "pid": str(k), "metadata": {}}
        (images / f"{k}.jpg").write_bytes(jpeg((1, 2, 3)))
    (repo / "data" / "test.json").write_text(json.dumps(test, indent=4))
    return truth


def write_mathvision_github(repo: Path) -> dict[str, list[dict[str, Any]]]:
    """mathllm/MATH-V as cloned::

        repo/data/test.jsonl       "image": "images/<id>.jpg", relative to the repository root
        repo/data/testmini.jsonl   a subset of test (ids 2 and 5 here)
        repo/images/<id>.jpg

    Returns {"test": truth, "testmini": truth}, each item with its image ``bytes``.
    """
    rows, truth = mathvision_rows(6)
    (repo / "images").mkdir(parents=True, exist_ok=True)
    (repo / "data").mkdir(parents=True, exist_ok=True)
    lines = {"test": [], "testmini": []}
    out: dict[str, list[dict[str, Any]]] = {"test": [], "testmini": []}
    for r, t in zip(rows, truth):
        r = {k: v for k, v in r.items() if k != "decoded_image"}
        t["bytes"] = jpeg(t["colors"][0])
        (repo / r["image"]).write_bytes(t["bytes"])
        for split in ("test", "testmini") if r["id"] in ("2", "5") else ("test",):
            lines[split].append(json.dumps(r))
            out[split].append(t)
    for split, ls in lines.items():
        (repo / "data" / f"{split}.jsonl").write_text("\n".join(ls) + "\n")
    return out


def write_mathverse_json(folder: Path, images_in_folder: bool) -> list[dict[str, Any]]:
    """The MathVerse JSON release: ``testmini.json``, a list of records whose ``image`` is a path under
    the release's image folders (``images_version_1-4/image_<problem>.png`` for Text Dominant, Text
    Lite and Vision Intensive, ``images_version_5/...`` for Vision Dominant, ``images_version_6/...``
    for Vision Only: the same file name in each folder, different pictures).  The folders sit in
    ``images/`` (``images_in_folder``: ``images.zip`` unzipped) or next to the json (the release's
    ``images_version_*`` folders as uploaded); plus ``testmini_text_only.json`` beside it, which the
    testmini split must not read."""
    folder.mkdir(parents=True, exist_ok=True)
    img_root = folder / "images" if images_in_folder else folder
    version_dir = {"Text Dominant": "images_version_1-4", "Text Lite": "images_version_1-4",
                   "Vision Intensive": "images_version_1-4", "Vision Dominant": "images_version_5",
                   "Vision Only": "images_version_6"}
    problem = "7"
    pictures = {d: png(color_for(int(problem), n)) for n, d in enumerate(sorted(set(version_dir.values())), 1)}
    for d, data in pictures.items():
        (img_root / d).mkdir(parents=True, exist_ok=True)
        (img_root / d / f"image_{problem}.png").write_bytes(data)
    records, truth = [], []
    for s in range(1, 6):
        mc = s % 2 == 1
        tag = f"[mathverse-json-{s}]"
        version = VERSIONS[s - 1]
        q = "" if version == "Vision Only" else (
            f"{tag} Find the angle.\nChoices:\nA:30°\nB:45°\nC:60°\nD:90°" if mc else f"{tag} Find the area.")
        image = f"{version_dir[version]}/image_{problem}.png"
        records.append(dict(sample_index=str(s), problem_index=problem, problem_version=version, question=q, image=image,
                            answer="B" if mc else "12", question_type="multi-choice" if mc else "free-form",
                            metadata=dict(split="testmini", source="synthetic", subject="plane geometry", subfield="angle"),
                            query_wo="...", query_cot="...", question_for_eval=q))
        truth.append(dict(id=str(s), gold="B" if mc else "12", question_type="multiple_choice" if mc else "free_form",
                          problem_version=version, bytes=pictures[version_dir[version]]))
    (folder / "testmini.json").write_text(json.dumps(records, indent=4, ensure_ascii=False))
    text_only = [dict(r, sample_index=str(100 + i), image="", problem_version="Text Only", question=f"[mathverse-text-{i}] Find x.")
                 for i, r in enumerate(records)]
    (folder / "testmini_text_only.json").write_text(json.dumps(text_only, indent=4, ensure_ascii=False))
    return truth


# --------------------------------------------------------------------------- image options


def write_emma_image_options(root: Path) -> dict[str, Any]:
    """EMMA ``Coding/test-*.parquet`` with one "Code Choose Vis"-style item whose options are images:
    the question shows ``<image_1>``, options A-D are ``<image_4>``, ``<image_2>``, ``<image_5>``,
    ``<image_3>`` (not in number order, so only placing each image at its option is right)."""
    imgs = {k: png(color_for(90, k)) for k in range(1, 6)}
    row = dict(pid="1", question="[emma-img] Which plot does the code in <image_1> draw?",
               options=["<image_4>", "<image_2>", "<image_5>", "<image_3>"], answer="C", solution="",
               subject="Coding", task="Code Choose Vis", category="Chart", source="synthetic",
               type="Multiple Choice", context="")
    for k in range(1, 6):
        row[f"image_{k}"] = {"bytes": imgs[k], "path": None}
    _write_parquet(root / "emma" / "Coding" / "test-00000-of-00001.parquet", [row], _emma_schema())
    return {"images": imgs, "option_images": [4, 2, 5, 3]}


# --------------------------------------------------------------------------- MMMU


def _mmmu_schema() -> pa.Schema:
    fields = [("id", pa.string()), ("question", pa.string()), ("options", pa.string()), ("explanation", pa.string())]
    fields += [(f"image_{k}", IMG_STRUCT) for k in range(1, 8)]
    fields += [(c, pa.string()) for c in ("img_type", "answer", "topic_difficulty", "question_type", "subfield")]
    return pa.schema(fields)


def write_mmmu(root: Path) -> dict[str, list[dict[str, Any]]]:
    """MMMU/MMMU's layout: one folder per subject with ``dev-*.parquet`` and ``validation-*.parquet``.

    validation items (truth in file order, ``Accounting`` before ``Art_Theory``):
    - ``validation_Accounting_1``: multiple choice, text options, ``<image 1>`` in the question;
    - ``validation_Accounting_2``: open, numeric answer ``12``;
    - ``validation_Art_Theory_1``: multiple choice whose options are ``<image 2>`` .. ``<image 4>``
      and whose question shows ``<image 1>``;
    - ``validation_Art_Theory_2``: open, answer list literal ``['Cubism', 'Cubist painting']``, no image
      placeholder (its image goes first).
    dev has one item per subject (never mixed into validation).
    """
    def img(k: int, n: int) -> dict[str, Any]:
        return {"bytes": png(color_for(k, n)), "path": None}

    def row(id_, question, options, answer, qtype, images, **kw):
        r = dict(id=id_, question=question, options=repr(options), explanation="", answer=answer, question_type=qtype,
                 img_type=kw.get("img_type", "['Diagrams']"), topic_difficulty=kw.get("difficulty", "Easy"),
                 subfield=kw.get("subfield", "sub"))
        for k in range(1, 8):
            r[f"image_{k}"] = images.get(k)
        return r

    val = {
        "Accounting": [
            row("validation_Accounting_1", "[mmmu-1] Given <image 1>, what is the net income?", ["$6", "$8", "$10"], "B",
                "multiple-choice", {1: img(1, 1)}, subfield="Financial Accounting", img_type="['Tables', 'Charts']"),
            row("validation_Accounting_2", "[mmmu-2] What is the ratio in <image 1>?", [], "12", "open",
                {1: img(2, 1)}, difficulty="Hard"),
        ],
        "Art_Theory": [
            row("validation_Art_Theory_1", "[mmmu-3] Which painting has the style of <image 1>?",
                ["<image 3>", "<image 2>", "<image 4>"], "A", "multiple-choice",
                {k: img(3, k) for k in range(1, 5)}, img_type="['Paintings']"),
            row("validation_Art_Theory_2", "[mmmu-4] Name the movement.", [], "['Cubism', 'Cubist painting']", "open", {1: img(4, 1)},
                difficulty="Medium"),
        ],
    }
    dev = {s: [row(f"dev_{s}_1", f"[mmmu-dev-{s}] dev question", ["a", "b"], "A", "multiple-choice", {})] for s in val}
    for subject in val:
        _write_parquet(root / "mmmu" / subject / "validation-00000-of-00001.parquet", val[subject], _mmmu_schema())
        _write_parquet(root / "mmmu" / subject / "dev-00000-of-00001.parquet", dev[subject], _mmmu_schema())
    truth = [
        dict(id="validation_Accounting_1", gold="B", question_type="multiple_choice", choices=["$6", "$8", "$10"],
             images=[(1, 1)], alternatives=[], subject="Accounting", discipline="Business"),
        dict(id="validation_Accounting_2", gold="12", question_type="free_form", choices=[], images=[(2, 1)],
             alternatives=[], subject="Accounting", discipline="Business"),
        dict(id="validation_Art_Theory_1", gold="A", question_type="multiple_choice", choices=["<image>"] * 3,
             images=[(3, 1), (3, 3), (3, 2), (3, 4)], alternatives=[], subject="Art_Theory", discipline="Art and Design"),
        dict(id="validation_Art_Theory_2", gold="Cubism", question_type="free_form", choices=[], images=[(4, 1)],
             alternatives=["Cubist painting"], subject="Art_Theory", discipline="Art and Design"),
    ]
    return {"validation": truth, "dev": [dict(id=f"dev_{s}_1") for s in val]}
