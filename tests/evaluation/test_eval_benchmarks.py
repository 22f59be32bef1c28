"""Benchmark loaders: each public layout parses into the right questions, golds, options and images."""

from __future__ import annotations

import json
import shutil

import pytest

import eval_synth
from evaluation.benchmarks import REGISTRY, BenchmarkError, load_benchmark, parse_bench
from evaluation.benchmarks.base import IMAGE_TOKEN, interleave_images, parse_options
from evaluation.prompts import build_prompt, render_question


def _by_id(items):
    return {it.id: it for it in items}


@pytest.mark.parametrize("bench", ["mathvista", "mathverse", "mathvision", "mmmu_pro", "mmmu_pro:vision", "emma"])
def test_each_suite_parses_to_its_truth(bench_root, bench):
    root, truth = bench_root
    items = load_benchmark(bench, root)
    assert [it.id for it in items] == [t["id"] for t in truth[bench]]
    for it, t in zip(items, truth[bench]):
        assert it.benchmark == bench
        assert it.gold == t["gold"], it.id
        assert it.question_type == t["question_type"], it.id
        # one <image> token per image, and the images in the order the text mentions them
        assert it.question.count(IMAGE_TOKEN) == len(it.images)
        assert [eval_synth.pixel_of(b) for b in it.images] == t["colors"], it.id
        if t.get("tag"):
            assert t["tag"] in it.question
        if "choices" in t and t["question_type"] == "multiple_choice" and t["choices"]:
            assert it.choices == t["choices"]
            assert it.gold_text == t["choices"][ord(it.gold) - 65]


def test_mathvista_maps_option_text_to_letter_and_keeps_metadata(bench_root):
    root, truth = bench_root
    items = _by_id(load_benchmark("mathvista", root))
    mc = items["3"]  # kind 0: multi_choice, answer is the option text "33 cm"
    assert mc.choices == ["30 cm", "31 cm", "32 cm", "33 cm"] and mc.gold == "D" and mc.gold_text == "33 cm"
    assert mc.answer_type == "letter" and mc.categories["task"] == "geometry problem solving"
    fl = items["2"]
    assert fl.question_type == "free_form" and fl.answer_type == "float" and fl.meta["precision"] == 1.0
    assert fl.categories["skills"] == ["arithmetic reasoning"]
    # the prompt: image first, question, options in the training format, then the spec's suffix
    p = build_prompt(mc)
    assert p.text == (
        "<image>\n[mathvista-3] What is the length of side AB?\nChoices:\nA. 30 cm\nB. 31 cm\nC. 32 cm\nD. 33 cm"
        "\n\nPlease reason step by step, and put your final answer within \\boxed{}."
    )
    assert render_question(fl) == fl.question  # free form: no options block


def test_mathvista_original_json_release_with_image_files(tmp_path):
    truth = eval_synth.write_mathvista_json(tmp_path)
    items = load_benchmark("mathvista", tmp_path)
    assert [it.id for it in items] == [t["id"] for t in truth]
    assert [eval_synth.pixel_of(it.images[0]) for it in items] == [t["colors"][0] for t in truth]
    assert [it.gold for it in items] == [t["gold"] for t in truth]


def test_mathvision_jsonl_release_and_placeholders(tmp_path):
    truth = eval_synth.write_mathvision_jsonl(tmp_path)
    items = _by_id(load_benchmark("mathvision", tmp_path))
    assert len(items) == len(truth)
    assert items["1"].question == "[mathvision-1] Which number is missing?\n<image>"  # <image1> at its place
    assert items["3"].question.startswith("<image>\n[mathvision-3]")
    assert items["2"].gold == "\\frac{2}{2}" and items["2"].question_type == "free_form"
    assert items["1"].choices == ["1", "2", "3", "4", "5"] and items["1"].gold == "B"
    assert items["1"].categories == {"subject": "counting", "level": "2"}


def test_mathverse_versions_and_vision_only(bench_root):
    root, truth = bench_root
    items = load_benchmark("mathverse", root)
    versions = [it.categories["problem_version"] for it in items]
    assert versions[:5] == list(eval_synth.VERSIONS)
    vo = [it for it, t in zip(items, truth["mathverse"]) if t["vision_only"]]
    assert vo and all(it.question == "<image>\nAnswer the question shown in the image." for it in vo)
    mc = items[0]
    assert mc.choices == [] and "Choices:\nA:30°" in mc.question  # options stay in MathVerse's own text
    assert render_question(mc) == mc.question


def test_mmmu_pro_placeholders_follow_mention_order(bench_root):
    root, truth = bench_root
    items = load_benchmark("mmmu_pro", root)
    for it, t in zip(items, truth["mmmu_pro"]):
        assert it.question == t["expect_question"]
        assert len(it.choices) == 10
    vis = load_benchmark("mmmu_pro:vision", root)
    assert all(it.choices == [] and it.question.startswith("<image>\nAnswer the multiple-choice") for it in vis)
    assert [it.benchmark for it in vis] == ["mmmu_pro:vision"] * len(vis)


def test_emma_subjects_variants_and_unique_ids(bench_root):
    root, truth = bench_root
    items = load_benchmark("emma", root)
    assert [it.id for it in items] == ["Math/1", "Math/2", "Math/3", "Physics/1", "Physics/2", "Physics/3"]
    math_only = load_benchmark("emma:math", root)
    assert [it.id for it in math_only] == ["Math/1", "Math/2", "Math/3"]
    assert math_only[0].benchmark == "emma:math"
    assert items[1].question_type == "free_form" and items[1].gold == "4"


def test_emma_context_goes_before_the_question(bench_root):
    root, _ = bench_root
    items = {it.id: it for it in load_benchmark("emma", root)}
    assert items["Math/3"].question.startswith("A 3x3 grid is rotated by 90 degrees.\n[emma-3] Look at <image>.")
    assert items["Math/1"].question.startswith("[emma-1] Look at <image>.")  # no context: the question alone


def test_virl_synthetic_eval_set_via_training_loader(synth_data_dir):
    items = load_benchmark(f"synthetic={synth_data_dir / 'eval.parquet'}")
    assert len(items) == 6
    for it in items:
        assert it.benchmark == "virl" and it.question_type == "multiple_choice"
        assert it.gold.startswith("\\boxed{") and it.question.count("<image>") == len(it.images) == 1
        assert it.categories["category"] and "Choices:" in it.question
    # the folder form picks the eval split
    assert [it.id for it in load_benchmark(f"virl={synth_data_dir}")] == [it.id for it in items]


def test_max_items_and_explicit_paths(bench_root):
    root, _ = bench_root
    assert len(load_benchmark("mathverse", root, max_items=3)) == 3
    items = load_benchmark(f"mathvista={root / 'mathvista'}")
    assert len(items) == 6


def test_parse_bench_errors_name_the_problem():
    assert parse_bench("MMMU-Pro:Vision").key == "mmmu_pro:vision"
    assert parse_bench("synthetic=x.parquet").name == "virl"
    with pytest.raises(BenchmarkError, match="unknown benchmark 'mathvoodoo'"):
        parse_bench("mathvoodoo")
    with pytest.raises(BenchmarkError, match="unknown variant 'hard' of mmmu_pro"):
        parse_bench("mmmu_pro:hard")
    assert set(REGISTRY) == {"mathvista", "mathverse", "mathvision", "mmmu_pro", "mmmu", "emma", "virl"}


def test_missing_data_and_bad_rows_are_clear_errors(tmp_path):
    with pytest.raises(BenchmarkError, match="no data for this benchmark.*mathvista"):
        load_benchmark("mathvista", tmp_path)
    # an answer that is not among the choices
    rows, _ = eval_synth.mathvista_rows(3)
    rows[2]["answer"] = "99 cm"
    folder = tmp_path / "mathvista"
    folder.mkdir()
    data = {r["pid"]: {k: v for k, v in r.items() if k != "decoded_image"} for r in rows}
    (folder / "images").mkdir()
    for r in rows:
        (folder / r["image"]).write_bytes(r["decoded_image"]["bytes"])
    (folder / "testmini.json").write_text(json.dumps(data))
    with pytest.raises(BenchmarkError, match=r"pid 3.*answer '99 cm' is not one of the choices"):
        load_benchmark("mathvista", tmp_path)
    # a missing image file names the file
    rows[2]["answer"] = rows[2]["choices"][0]
    data = {r["pid"]: {k: v for k, v in r.items() if k != "decoded_image"} for r in rows}
    (folder / "testmini.json").write_text(json.dumps(data))
    shutil.rmtree(folder / "images")
    with pytest.raises(BenchmarkError, match=r"image file 'images/1.png' not found"):
        load_benchmark("mathvista", tmp_path)


def test_mmmu_pro_bad_options_and_answer(tmp_path):
    eval_synth.write_mmmu_pro(tmp_path, n=2)
    import pyarrow.parquet as pq

    f = tmp_path / "mmmu_pro" / "standard (10 options)" / "test-00000-of-00001.parquet"
    t = pq.read_table(f).to_pylist()
    t[1]["answer"] = "the first"
    pq.write_table(__import__("pyarrow").Table.from_pylist(t, schema=pq.read_schema(f)), f)
    with pytest.raises(BenchmarkError, match=r"validation_Math_2.*'answer' must be an option letter"):
        load_benchmark("mmmu_pro", tmp_path)
    assert parse_options("['a', \"b's\"]", "x") == ["a", "b's"]
    with pytest.raises(BenchmarkError, match="not a list literal"):
        parse_options("[unclosed", "row 3")


def test_interleave_images_rules():
    imgs = {1: b"one", 2: b"two", 3: b"three"}
    text, order = interleave_images("See <image 3> and <image 1>, again <image 3>; <image 9>.", imgs, r"<image\s*_?(\d+)>")
    assert text == "<image>\nSee <image> and <image>, again [image 3]; <image 9>."
    assert order == [b"two", b"three", b"one"]  # unmentioned image 2 first, then mention order
