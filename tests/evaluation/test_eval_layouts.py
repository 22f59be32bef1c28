"""Public release layouts as they ship (GitHub clones, JSON releases, MMMU's subject folders), split
separation, image options placed at their option, and the errors for a folder in no known layout."""

from __future__ import annotations

import asyncio
import json
import re
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import eval_synth
from eval_scripted import ScriptedEngine
from common.data.prompts import split_question
from evaluation.benchmarks import BenchmarkError, load_benchmark
from evaluation.benchmarks.base import IMAGE_TOKEN
from evaluation.generation import EngineDecoder
from evaluation.judging import Judge
from evaluation.prompts import build_prompt, render_question
from evaluation.runner import EvalRunner, RunSettings


def _check(items, truth):
    """Items in truth order with the same ids, golds, question types and image bytes."""
    assert [it.id for it in items] == [t["id"] for t in truth]
    for it, t in zip(items, truth):
        assert it.gold == t["gold"], it.id
        assert it.question_type == t["question_type"], it.id
        assert it.images == [t["bytes"]], it.id  # the very bytes of the source file
        assert render_question(it).count(IMAGE_TOKEN) == len(it.images)


@pytest.fixture(params=["root", "data"])
def clone(request, tmp_path):
    """(write, folder name) -> (the folder given to the loader, truth): a GitHub clone written by
    ``write``, given as its root or as its ``data/`` folder."""

    def make(write, name):
        truth = write(tmp_path / name)
        return (tmp_path / name if request.param == "root" else tmp_path / name / "data"), truth

    return make


# --------------------------------------------------------------------------- MathVista (GitHub)


def test_mathvista_github_release_from_root_or_data(clone):
    path, truth = clone(eval_synth.write_mathvista_github, "MathVista")
    items = load_benchmark(f"mathvista={path}")
    _check(items, truth)  # test.json next to testmini.json is not read
    mc = {it.id: it for it in items}["3"]
    assert mc.choices == ["30 cm", "31 cm", "32 cm", "33 cm"] and mc.gold == "D" and mc.gold_text == "33 cm"
    assert {it.id: it for it in items}["2"].meta["precision"] == 1.0


def test_mathvista_github_release_under_data_dir(tmp_path):
    truth = eval_synth.write_mathvista_github(tmp_path / "data" / "MathVista")
    _check(load_benchmark("mathvista", tmp_path / "data"), truth)


def test_mathvista_option_texts_that_are_letters_map_by_text(tmp_path):
    repo = tmp_path / "mv"
    eval_synth.write_mathvista_github(repo, n=3)
    f = repo / "data" / "testmini.json"
    data = json.loads(f.read_text())
    data["3"]["choices"], data["3"]["answer"] = ["B", "A", "C"], "A"  # the answer is the text "A": option B
    f.write_text(json.dumps(data))
    item = {it.id: it for it in load_benchmark(f"mathvista={repo}")}["3"]
    assert item.gold == "B" and item.gold_text == "A"


# --------------------------------------------------------------------------- MATH-Vision (GitHub)


def test_mathvision_github_release_from_root_or_data(clone):
    path, truth = clone(eval_synth.write_mathvision_github, "MATH-V")
    test = load_benchmark(f"mathvision={path}")
    _check(test, truth["test"])  # testmini.jsonl beside test.jsonl is not mixed in
    mini = load_benchmark(f"mathvision:testmini={path}")
    _check(mini, truth["testmini"])
    assert [it.benchmark for it in mini] == ["mathvision:testmini"] * 2
    one = {it.id: it for it in test}["1"]
    assert one.choices == ["1", "2", "3", "4", "5"] and one.gold == "B" and one.question.endswith("\n<image>")


def test_hf_parquet_splits_in_one_folder_are_not_mixed(tmp_path):
    rows, truth = eval_synth.mathvision_rows(4)
    folder = tmp_path / "mathvision"
    eval_synth._write_parquet(folder / "test.parquet", rows, eval_synth.MATHVISION_SCHEMA)
    eval_synth._write_parquet(folder / "testmini.parquet", rows[:1], eval_synth.MATHVISION_SCHEMA)
    assert len(load_benchmark("mathvision", tmp_path)) == 4
    assert len(load_benchmark("mathvision:testmini", tmp_path)) == 1


# --------------------------------------------------------------------------- MathVerse (JSON)


@pytest.mark.parametrize("images_in_folder", [True, False], ids=["images-folder", "next-to-json"])
def test_mathverse_json_release(tmp_path, images_in_folder):
    truth = eval_synth.write_mathverse_json(tmp_path / "mathverse", images_in_folder)
    items = load_benchmark("mathverse", tmp_path)
    assert len({t["bytes"] for t in truth}) == 3  # one file name, a different picture in each version folder
    _check(items, truth)  # each version's own picture; testmini_text_only.json beside it is a separate variant
    assert [it.categories["problem_version"] for it in items] == [t["problem_version"] for t in truth]
    assert items[4].question == "<image>\nAnswer the question shown in the image."
    text_only = load_benchmark("mathverse:text_only", tmp_path)
    assert [it.id for it in text_only] == ["100", "101", "102", "103", "104"] and all(not it.images for it in text_only)


# --------------------------------------------------------------------------- errors


def test_unrecognized_folder_names_what_was_looked_for(tmp_path):
    folder = tmp_path / "mathvista"
    folder.mkdir()
    (folder / "readme.txt").write_text("not a table")
    with pytest.raises(BenchmarkError) as e:
        load_benchmark("mathvista", tmp_path)
    msg = str(e.value)
    for looked in ("testmini.parquet", "testmini.json", "testmini-NNNNN-of-NNNNN.parquet", str(folder / "data" / "testmini.jsonl")):
        assert looked in msg
    with pytest.raises(BenchmarkError, match=r"mmmu: no subject folder .*Accounting.*Art_Theory"):
        load_benchmark(f"mmmu={folder}")
    with pytest.raises(BenchmarkError, match=r"emma: no subject folder .*Math, Physics, Chemistry, Coding"):
        load_benchmark(f"emma={folder}")


def test_missing_image_names_the_field_and_places(tmp_path):
    repo = tmp_path / "MATH-V"
    eval_synth.write_mathvision_github(repo)
    shutil.rmtree(repo / "images")
    with pytest.raises(BenchmarkError, match=r"test.jsonl row 0 \(id 1\) field 'image': image file 'images/1.jpg' not found"):
        load_benchmark(f"mathvision={repo}")


# --------------------------------------------------------------------------- image options


def _image_sequence(item):
    """(text before each image, image bytes) in prompt order, from the chat-message split."""
    pieces = split_question(render_question(item), len(item.images))
    out, text = [], ""
    for p in pieces:
        if isinstance(p, int):
            out.append((text, item.images[p]))
            text = ""
        else:
            text += p
    return out


def test_emma_image_options_sit_at_their_option(tmp_path):
    spec = eval_synth.write_emma_image_options(tmp_path)
    (item,) = load_benchmark("emma:coding", tmp_path)
    imgs = spec["images"]
    assert item.question_type == "multiple_choice" and item.gold == "C" and item.choices == [IMAGE_TOKEN] * 4
    seq = _image_sequence(item)
    # the question's own figure first, then the picture of option A, B, C, D in option order
    assert [b for _, b in seq] == [imgs[1]] + [imgs[k] for k in spec["option_images"]]
    assert seq[0][0] == "[emma-img] Which plot does the code in "
    assert [t.strip().splitlines()[-1] for t, _ in seq[1:]] == ["A.", "B.", "C.", "D."]
    assert build_prompt(item).text.count(IMAGE_TOKEN) == 5


def test_mmmu_pro_image_options_sit_at_their_option(tmp_path):
    eval_synth.write_mmmu_pro(tmp_path, n=1)
    f = tmp_path / "mmmu_pro" / "standard (10 options)" / "test-00000-of-00001.parquet"
    rows = pq.read_table(f).to_pylist()
    rows[0]["question"] = "[p] Which is like <image 1>?"
    rows[0]["options"] = repr(["<image 2>"] + [f"text {j}" for j in range(9)])
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(f)), f)
    (item,) = load_benchmark("mmmu_pro", tmp_path)
    assert item.question == "[p] Which is like <image>?" and item.choices[0] == IMAGE_TOKEN
    seq = _image_sequence(item)
    assert [b for _, b in seq] == [rows[0]["image_1"]["bytes"], rows[0]["image_2"]["bytes"]]
    assert seq[1][0].endswith("Choices:\nA. ")


# --------------------------------------------------------------------------- MMMU (val)


def test_mmmu_validation_items_images_golds_and_categories(tmp_path):
    truth = eval_synth.write_mmmu(tmp_path)
    items = load_benchmark("mmmu", tmp_path)
    assert [it.id for it in items] == [t["id"] for t in truth["validation"]]  # dev is not mixed in
    for it, t in zip(items, truth["validation"]):
        assert (it.gold, it.question_type, it.alternatives) == (t["gold"], t["question_type"], t["alternatives"]), it.id
        assert it.choices == t["choices"], it.id
        assert it.images == [eval_synth.png(eval_synth.color_for(*kn)) for kn in t["images"]], it.id
        assert render_question(it).count(IMAGE_TOKEN) == len(it.images)
        assert (it.categories["subject"], it.categories["discipline"]) == (t["subject"], t["discipline"])
        assert it.benchmark == "mmmu"
    acc1, acc2, art1, art2 = items
    assert acc1.question == "[mmmu-1] Given <image>, what is the net income?" and acc1.gold_text == "$8"
    assert acc1.categories["img_type"] == ["Tables", "Charts"]
    assert acc2.answer_type == "float" and acc2.meta["precision"] == 2
    assert art1.question == "[mmmu-3] Which painting has the style of <image>?"
    assert art2.question == "<image>\n[mmmu-4] Name the movement." and art2.answer_type == "text"
    dev = load_benchmark("mmmu:dev", tmp_path)
    assert [it.id for it in dev] == [t["id"] for t in truth["dev"]] and dev[0].benchmark == "mmmu:dev"
    one = load_benchmark(f"mmmu={tmp_path / 'mmmu' / 'Art_Theory' / 'validation-00000-of-00001.parquet'}")
    assert [it.categories["subject"] for it in one] == ["Art_Theory", "Art_Theory"]


def test_mmmu_scoring_conventions(tmp_path):
    eval_synth.write_mmmu(tmp_path)
    items = {it.id: it for it in load_benchmark("mmmu", tmp_path)}
    judge = Judge(workers=0)
    cases = [
        ("validation_Accounting_1", "The answer is \\boxed{B}", True, "verifier"),
        ("validation_Accounting_1", "The answer is \\boxed{$8}", True, "verifier"),  # the option's text selects it
        ("validation_Accounting_1", "The answer is \\boxed{A}", False, "verifier"),
        ("validation_Accounting_2", "\\boxed{12}", True, "verifier"),
        ("validation_Accounting_2", "\\boxed{12.004}", True, "precision"),  # MMMU rounds numbers to 2 decimals
        ("validation_Accounting_2", "\\boxed{12.02}", False, "verifier"),
        ("validation_Art_Theory_1", "\\boxed{A}", True, "verifier"),
        ("validation_Art_Theory_2", "\\boxed{Cubism}", True, "verifier"),
        ("validation_Art_Theory_2", "\\boxed{Surrealism}", False, "verifier"),
    ]
    got = judge.judge([items[i] for i, *_ in cases], [r for _, r, *_ in cases])
    assert [(j.correct, j.rule) for j in got] == [(c, rule) for *_, c, rule in cases]


def test_alternative_answers_are_accepted(tmp_path):
    eval_synth.write_mmmu(tmp_path)
    item = {it.id: it for it in load_benchmark("mmmu", tmp_path)}["validation_Art_Theory_2"]
    assert (item.gold, item.alternatives) == ("Cubism", ["Cubist painting"])  # from "['Cubism', 'Cubist painting']"
    j1, j2 = Judge(workers=0).judge([item, item], ["\\boxed{Cubist painting}", "\\boxed{Fauvism}"])
    assert (j1.correct, j1.rule) == (True, "alternative") and not j2.correct
    assert item.to_record()["alternatives"] == ["Cubist painting"]


def test_mmmu_through_the_runner_with_picture_options_and_its_conventions(tmp_path):
    eval_synth.write_mmmu(tmp_path / "data")
    answers = {"[mmmu-1]": "$8", "[mmmu-2]": "12.004", "[mmmu-3]": "B", "[mmmu-4]": "Cubist painting"}
    tag = re.compile(r"\[mmmu-\d\]")
    engine = ScriptedEngine(lambda prompt, images, prefix: "\\boxed{" + answers[tag.search(prompt).group(0)] + "}")
    runner = EvalRunner(EngineDecoder(engine), RunSettings(model="scripted", max_new_tokens=400, batch_size=3),
                        judge=Judge(workers=0), out_dir=tmp_path / "out", progress=False)
    summary = asyncio.run(runner.run({"mmmu": load_benchmark("mmmu", tmp_path / "data")}))
    s = summary["benchmarks"]["mmmu"]
    assert (s["n"], s["correct"]) == (4, 3)  # mmmu-3 answers B, gold A
    assert {k: (v["n"], v["correct"]) for k, v in s["categories"]["discipline"].items()} == {
        "Art and Design": (2, 1), "Business": (2, 2)}
    recs = {r["id"]: r for r in map(json.loads, (tmp_path / "out" / "results" / "mmmu.jsonl").read_text().splitlines())}
    assert recs["validation_Accounting_2"]["judge_rule"] == "precision"
    assert recs["validation_Art_Theory_2"]["judge_rule"] == "alternative"
    call = next(c for c in engine.calls if "[mmmu-3]" in c.prompt_text)  # what reached the model
    assert call.images == [eval_synth.png(eval_synth.color_for(3, k)) for k in (1, 3, 2, 4)]
    assert "Choices:\nA. <image>\nB. <image>\nC. <image>" in call.prompt_text
    assert "| mmmu | 75.0 | 54.3 | 56.7 |" in (tmp_path / "out" / "summary.md").read_text()
