"""Loading ViRL39K-format data: sources, field mapping, selection, prompt tasks and clear errors."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from common.config import DataConfig
from common.data.images import encode_png
from common.data.loader import (
    LoadReport,
    decode_row_images,
    drop_long_prompts,
    load_rows,
    load_split,
    prompt_token_count,
    to_prompt_task,
)
from common.data.schema import DataError, DataRow
from common.model_loading import build_prompt_inputs, load_processor
from common.schemas import PromptTask


def _png(color="red", size=(40, 30)) -> bytes:
    return encode_png(Image.new("RGB", size, color))


def _row(qid="q1", **over):
    row = {
        "question": "<image>What is it?",
        "answer": "\\boxed{A}",
        "PassRate_32BTrained": 0.5,
        "PassRate_7BBase": 0.25,
        "category": "Spatial Reasoning",
        "source": "unit",
        "qid": qid,
        "image": [_png()],
    }
    row.update(over)
    return row


def _write(tmp_path: Path, rows: list[dict], name="d.parquet") -> Path:
    p = tmp_path / name
    pq.write_table(pa.Table.from_pylist(rows), p)
    return p


def test_loads_synthetic_parquet_into_typed_rows(synth_data_dir):
    rows = load_rows(synth_data_dir / "train.parquet")
    assert len(rows) == 58
    r = rows[0]
    assert isinstance(r, DataRow) and r.qid == "synth-train-0-000000"
    assert r.question.startswith("<image>") and r.answer.startswith("\\boxed{")
    assert len(r.images) == 1 and isinstance(r.images[0], bytes) and r.images[0][:4] == b"\x89PNG"
    assert r.source == "synthetic-shapes"
    raw = pq.read_table(synth_data_dir / "train.parquet").to_pylist()
    for row, rec in zip(rows, raw):
        for field, col in (("pass_rate_7b_base", "PassRate_7BBase"), ("pass_rate_32b_trained", "PassRate_32BTrained")):
            want = None if rec[col] == -1 else rec[col]
            assert getattr(row, field) == want
    assert any(r.pass_rate_7b_base is None for r in rows)  # -1 -> None (not annotated)
    # a folder with <split>.parquet files
    assert [r.qid for r in load_rows(synth_data_dir, split="eval")] == [f"synth-eval-0-{i:06d}" for i in range(6)]


def test_category_filter_accepts_paper_names(synth_data_dir):
    report = LoadReport(source="")
    rows = load_rows(synth_data_dir / "train.parquet", categories=["spatial reasoning"], report=report)
    assert rows and {r.category for r in rows} == {"Spatial Reasoning"}
    assert report.total == 58 and report.kept == len(rows) and report.dropped_category == 58 - len(rows)
    both = load_rows(synth_data_dir / "train.parquet", categories=["Spatial Reasoning", "grade-school geometric math"])
    assert {r.category for r in both} == {"Spatial Reasoning", "(GradeSchool) Geometric"}
    with pytest.raises(DataError, match="unknown category 'maths'"):
        load_rows(synth_data_dir / "train.parquet", categories=["maths"])


def test_pass_rate_selection_is_exclusive_and_unannotated_explicit(tmp_path):
    rates = [-1.0, 0.0, 0.125, 0.5, 0.875, 1.0, None]
    p = _write(tmp_path, [_row(f"q{i}", PassRate_7BBase=r) for i, r in enumerate(rates)])
    keep = load_rows(p, min_pass_rate=0.0, max_pass_rate=1.0)
    assert [r.qid for r in keep] == ["q0", "q2", "q3", "q4", "q6"]  # 0 and 1 dropped; -1/null kept
    report = LoadReport(source="")
    drop = load_rows(p, min_pass_rate=0.0, max_pass_rate=1.0, unannotated_pass_rate="drop", report=report)
    assert [r.qid for r in drop] == ["q2", "q3", "q4"]
    assert (report.dropped_pass_rate, report.dropped_unannotated) == (2, 2)
    assert [r.qid for r in load_rows(p, min_pass_rate=0.125)] == ["q0", "q3", "q4", "q5", "q6"]
    assert [r.qid for r in load_rows(p, max_pass_rate=0.5, unannotated_pass_rate="drop")] == ["q1", "q2"]
    # the other pass-rate column
    p32 = _write(tmp_path, [_row("a", PassRate_32BTrained=1.0), _row("b", PassRate_32BTrained=0.5)], "p32.parquet")
    assert [r.qid for r in load_rows(p32, max_pass_rate=1.0, pass_rate_field="PassRate_32BTrained")] == ["b"]
    # no filter: every row, annotated or not
    assert len(load_rows(p, unannotated_pass_rate="drop")) == len(rates)


def test_load_split_uses_data_config(synth_data_dir):
    cfg = DataConfig(
        train_path=str(synth_data_dir / "train.parquet"),
        eval_path=str(synth_data_dir / "eval.parquet"),
        categories=["(GradeSchool) Non-Geo Math", "Spatial Reasoning"],
        min_pass_rate=0.0,
        max_pass_rate=1.0,
        unannotated_pass_rate="drop",
        eval_max_items=4,
    )
    train = load_split(cfg, "train")
    assert train and all(r.category in cfg.categories for r in train)
    assert all(r.pass_rate_7b_base is not None and 0 < r.pass_rate_7b_base < 1 for r in train)
    ev = load_split(cfg, "eval")
    assert len(ev) <= 4 and all(r.category in cfg.categories for r in ev)
    assert load_split(DataConfig(train_path=cfg.train_path, eval_path=None), "eval") == []


def test_image_reference_forms_and_relative_paths(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(_png("blue"))
    # ViRL39K's own form: paths relative to the folder of the parquet file
    got = load_rows(_write(tmp_path, [_row("path", image=["images/a.png"])], "paths.parquet"))
    assert got[0].images == (str((tmp_path / "images" / "a.png").resolve()),)
    assert got[0].image_bytes()[0] == (tmp_path / "images" / "a.png").read_bytes()
    # HF Image structs {"bytes", "path"}: bytes win; a null bytes field falls back to the path
    structs = [
        _row("hf-dict", image=[{"bytes": _png("green"), "path": "ignored.png"}]),
        _row("hf-dict-path", image=[{"bytes": None, "path": "images/a.png"}]),
    ]
    got = load_rows(_write(tmp_path, structs, "structs.parquet"))
    assert Image.open(io.BytesIO(got[0].image_bytes()[0])).getpixel((0, 0)) == (0, 128, 0)
    assert got[1].image_bytes()[0] == (tmp_path / "images" / "a.png").read_bytes()
    # a folder written by datasets.save_to_disk, with several images, none, bytes and paths
    import datasets

    feats = datasets.Features(
        {
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "PassRate_32BTrained": datasets.Value("float64"),
            "PassRate_7BBase": datasets.Value("float64"),
            "category": datasets.Value("string"),
            "source": datasets.Value("string"),
            "qid": datasets.Value("string"),
            "image": datasets.List(datasets.Image()),
        }
    )
    recs = [
        _row("bytes", image=[_png("red")]),
        _row("two", question="<image> and <image>?", image=[_png("red"), str(tmp_path / "images" / "a.png")]),
        _row("no-image", question="What is 1+1?", image=[]),
    ]
    datasets.Dataset.from_list(recs, features=feats).save_to_disk(str(tmp_path / "saved"))
    loaded = {r.qid: r for r in load_rows(tmp_path / "saved")}
    assert list(loaded) == ["bytes", "two", "no-image"]
    assert Image.open(io.BytesIO(loaded["bytes"].image_bytes()[0])).getpixel((0, 0)) == (255, 0, 0)
    assert [Image.open(io.BytesIO(b)).getpixel((0, 0)) for b in loaded["two"].image_bytes()] == [(255, 0, 0), (0, 0, 255)]
    assert loaded["no-image"].images == ()
    # a folder of parquet shards under data/, and an arrow stream file
    (tmp_path / "shards" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([_row("s1")]), tmp_path / "shards" / "data" / "train-00000.parquet")
    pq.write_table(pa.Table.from_pylist([_row("s2")]), tmp_path / "shards" / "data" / "train-00001.parquet")
    assert [r.qid for r in load_rows(tmp_path / "shards")] == ["s1", "s2"]
    t = pa.Table.from_pylist([_row("arrow")])
    with pa.OSFile(str(tmp_path / "x.arrow"), "wb") as sink, pa.ipc.new_stream(sink, t.schema) as w:
        w.write_table(t)
    assert [r.qid for r in load_rows(tmp_path / "x.arrow")] == ["arrow"]


@pytest.mark.parametrize(
    "over,match",
    [
        ({"answer": None}, r"qid 'bad': field 'answer' is missing"),
        ({"question": None}, r"qid 'bad': field 'question' is missing"),
        ({"category": "Astrology"}, r"qid 'bad': unknown category 'Astrology'"),
        ({"image": [b"not an image at all"]}, r"qid 'bad': image 0: not a readable image"),
        ({"image": ["images/missing.png"]}, r"qid 'bad': image 0: image file .*missing.png' does not exist"),
        ({"PassRate_7BBase": 1.5}, r"qid 'bad': PassRate_7BBase = 1.5 is outside \[0, 1\]"),
        ({"question": "<image><image>two?"}, r"qid 'bad': question has 2 <image> placeholders but only 1 images"),
        ({"answer": "  "}, r"qid 'bad': empty answer"),
    ],
)
def test_bad_rows_name_the_qid(tmp_path, over, match):
    good = _row("good")
    if isinstance(over.get("image", [None])[0], str):  # a column of paths (Arrow columns have one type)
        (tmp_path / "ok.png").write_bytes(_png())
        good["image"] = ["ok.png"]
    p = _write(tmp_path, [good, _row("bad", **over)])
    with pytest.raises(DataError, match=match):
        load_rows(p)


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_rows(tmp_path / "nope.parquet")
    p = _write(tmp_path, [{k: v for k, v in _row().items() if k != "answer"}])
    with pytest.raises(DataError, match=r"missing column\(s\) \['answer'\]"):
        load_rows(p)
    with pytest.raises(DataError, match="duplicate qid 'q1'"):
        load_rows(_write(tmp_path, [_row("q1"), _row("q1")], "dup.parquet"))
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(DataError, match="not a readable parquet file"):
        load_rows(tmp_path / "junk.parquet")
    with pytest.raises(DataError, match="no qid"):
        load_rows(_write(tmp_path, [_row(None)], "noqid.parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no parquet or arrow files"):
        load_rows(tmp_path / "empty")


def test_corrupt_image_found_late_names_qid(tmp_path):
    # a PNG whose header is fine but whose pixel data is cut: passes the header check, fails decoding
    data = _png(size=(64, 64))
    cut = data[: len(data) // 2]
    p = _write(tmp_path, [_row("trunc", image=[cut])])
    row = load_rows(p, verify_images="header")[0]
    with pytest.raises(DataError, match="qid 'trunc'"):
        decode_row_images(row, min_pixels=3136, max_pixels=12544)
    with pytest.raises(DataError, match="qid 'trunc': image 0"):
        load_rows(p, verify_images="full")


def test_to_prompt_task(synth_data_dir):
    row = load_rows(synth_data_dir / "train.parquet")[3]
    task = to_prompt_task(row, epoch=2, n=8, prompt_suffix="\n\nSuffix", policy_version=5)
    assert isinstance(task, PromptTask)
    assert task.task_id == f"{row.qid}:e2" and task.prompt_id == row.qid
    assert (task.question, task.answer, task.category, task.source) == (row.question, row.answer, row.category, row.source)
    assert task.images == list(row.images) and task.prompt_suffix == "\n\nSuffix"
    assert (task.epoch, task.n, task.policy_version) == (2, 8, 5)
    from common.codec import decode, encode  # it travels through the wire codec

    assert decode(encode(task)).images == task.images


def test_decoded_images_respect_pixel_limits(synth_data_dir):
    row = load_rows(synth_data_dir / "train.parquet")[0]
    (img,) = decode_row_images(row, min_pixels=3136, max_pixels=12544)
    assert img.size == (56, 56)
    (up,) = decode_row_images(row, min_pixels=28 * 28 * 16, max_pixels=28 * 28 * 64)
    assert up.size[0] % 28 == 0 and up.size[0] * up.size[1] >= 28 * 28 * 16


def test_prompt_token_count_matches_processor(tiny_model_dir, synth_data_dir, tmp_path):
    proc = load_processor(tiny_model_dir)
    rows = load_rows(synth_data_dir / "train.parquet")[:3]
    wide = DataRow(qid="wide", question="Look: <image> ok", answer="\\boxed{1}", images=(_png(size=(300, 90)),), category="Commonsense")
    for row, (lo, hi) in [(r, (3136, 12544)) for r in rows] + [(wide, (3136, 28 * 28 * 64))]:
        inputs = build_prompt_inputs(proc, row.question, list(row.image_bytes()), "\n\nSfx", lo, hi)
        assert prompt_token_count(row, proc, min_pixels=lo, max_pixels=hi, suffix="\n\nSfx") == inputs["input_ids"].shape[1]
    cfg = DataConfig(train_path="x", min_pixels=3136, max_pixels=12544, max_prompt_tokens=60)
    n = prompt_token_count(rows[0], proc, min_pixels=3136, max_pixels=12544, suffix=cfg.prompt_suffix)
    cfg.max_prompt_tokens = n
    kept, dropped = drop_long_prompts(rows + [wide], proc, cfg)
    assert rows[0] in kept and all(prompt_token_count(r, proc, min_pixels=3136, max_pixels=12544, suffix=cfg.prompt_suffix) > n for r in [x for x in rows + [wide] if x.qid in dropped])
