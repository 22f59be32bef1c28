"""The runner end to end with a scripted ENGINE (known answers) and the real decoder adapter,
verifier, runner, store and report: parsing -> prompts -> judging -> aggregation -> resume."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

import eval_synth
from eval_scripted import ScriptedEngine, is_correct_by_plan, make_script, planned, wrong_answer
from evaluation.benchmarks import load_benchmark
from evaluation.generation import EngineDecoder
from evaluation.judging import Judge
from evaluation.runner import EvalRunner, RunMismatchError, RunSettings
from evaluation.store import ResultStore, ResultsFileError

SUFFIX = "\n\nPlease reason step by step, and put your final answer within \\boxed{}."
BENCHES = ["mathvista", "mathverse", "mathvision", "mmmu_pro", "mmmu_pro:vision", "emma"]


def settings(**kw) -> RunSettings:
    base = dict(model="scripted", max_new_tokens=400, batch_size=3)
    base.update(kw)
    return RunSettings(**base)


def load(root: Path, benches=BENCHES) -> dict:
    return {b: load_benchmark(b, root) for b in benches}


def run(engine, root, out, benches=BENCHES, judge=None, **kw):
    runner = EvalRunner(EngineDecoder(engine), settings(**kw), judge=judge or Judge(workers=0), out_dir=out, progress=False)
    return asyncio.run(runner.run(load(root, benches)))


class CountingJudge(Judge):
    """The real judge, counting how many responses it grades."""

    def __init__(self) -> None:
        super().__init__(workers=0)
        self.graded = 0

    def grade_raw(self, triples):
        self.graded += len(triples)
        return super().grade_raw(triples)


def test_accuracy_per_benchmark_and_category_matches_the_plan(bench_root, tmp_path):
    root, truth = bench_root
    engine = ScriptedEngine(make_script(truth, planned))
    summary = run(engine, root, tmp_path / "out")
    for b in BENCHES:
        n = len(truth[b])
        expect = sum(1 for i in range(n) if is_correct_by_plan(i))
        s = summary["benchmarks"][b]
        assert (s["n"], s["correct"]) == (n, expect), b
        assert s["accuracy"] == pytest.approx(expect / n)
        assert s["truncated"] == 0 and s["stopped"] == n and s["no_answer"] == 0
    # per-category: MathVerse by problem version (2 problems x 5 versions; problem k's items at i = 5(k-1)+v)
    pv = summary["benchmarks"]["mathverse"]["categories"]["problem_version"]
    for v, name in enumerate(eval_synth.VERSIONS):
        idx = [v, 5 + v]
        assert pv[name]["n"] == 2
        assert pv[name]["correct"] == sum(is_correct_by_plan(i) for i in idx), name
    # question_type is always a dimension; EMMA by subject
    qt = summary["benchmarks"]["emma"]["categories"]["question_type"]
    ts = truth["emma"]
    for q in ("multiple_choice", "free_form"):
        idx = [i for i, t in enumerate(ts) if t["question_type"] == q]
        assert qt[q] == {"n": len(idx), "correct": sum(is_correct_by_plan(i) for i in idx), "accuracy": pytest.approx(sum(is_correct_by_plan(i) for i in idx) / len(idx))}
    subj = summary["benchmarks"]["emma"]["categories"]["subject"]
    assert subj["Math"]["n"] == subj["Physics"]["n"] == 3
    # MathVista skills are multi-label: an item counts under each of its skills
    skills = summary["benchmarks"]["mathvista"]["categories"]["skills"]
    assert skills["arithmetic reasoning"]["n"] == 6 and skills["algebraic reasoning"]["n"] == 3
    ov = summary["overall"]
    assert ov["macro_accuracy"] == pytest.approx(sum(summary["benchmarks"][b]["accuracy"] for b in BENCHES) / len(BENCHES))


def test_engine_sees_the_spec_prompt_greedy_and_images_in_order(bench_root, tmp_path):
    root, truth = bench_root
    engine = ScriptedEngine(make_script(truth, planned))
    run(engine, root, tmp_path / "out", benches=["mmmu_pro", "mathvista"], max_new_tokens=321)
    assert len(engine.calls) == len(truth["mmmu_pro"]) + len(truth["mathvista"])
    assert all(c.temperature == 0.0 and c.max_new_tokens == 321 and c.prefix_text is None for c in engine.calls)
    assert all(c.prompt_text.endswith(SUFFIX) for c in engine.calls)
    by_tag = {re.search(r"\[[a-z_]+-\d+\]", c.prompt_text).group(0): c for c in engine.calls}
    for t in truth["mmmu_pro"] + truth["mathvista"]:
        c = by_tag[t["tag"]]
        assert [eval_synth.pixel_of(b) for b in c.images] == t["colors"]
    c = by_tag["[mmmu_pro-1]"]
    assert c.prompt_text.startswith("[mmmu_pro-1] Compare <image> with <image>.")
    assert "\nChoices:\nA. option 1-0\nB. option 1-1\n" in c.prompt_text and "J. option 1-9" in c.prompt_text


def test_files_written_per_item_summary_and_markdown(bench_root, tmp_path):
    root, truth = bench_root
    out = tmp_path / "out"
    summary = run(ScriptedEngine(make_script(truth, planned)), root, out)
    for b in BENCHES:
        lines = (out / "results" / (b.replace(":", "-") + ".jsonl")).read_text().splitlines()
        recs = [json.loads(x) for x in lines]
        assert len(recs) == len(truth[b])
        by_id = {r["id"]: r for r in recs}
        for i, t in enumerate(truth[b]):
            r = by_id[t["id"]]
            assert r["correct"] is is_correct_by_plan(i)
            assert r["gold"] == t["gold"] and r["finish_reason"] == "stop" and r["prompt"].endswith(SUFFIX)
            assert r["extracted"] == (t["gold"] if is_correct_by_plan(i) else wrong_answer(t))
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["benchmarks"] == json.loads(json.dumps(summary["benchmarks"]))
    md = (out / "summary.md").read_text()
    header = "| model | " + " | ".join(BENCHES) + " | avg |"
    assert header in md
    row = next(line for line in md.splitlines() if line.startswith("| scripted |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:-1] == [f"{100 * summary['benchmarks'][b]['accuracy']:.1f}" for b in BENCHES]
    assert "## mathverse by category" in md and "| problem_version | Vision Only | 2 |" in md


def test_option_text_answers_and_stated_precision_count(bench_root, tmp_path):
    root, truth = bench_root

    def respond(bench, i, t):
        if t["question_type"] == "multiple_choice":
            return f"\\boxed{{{t['gold_text']}}}"  # the option's text instead of its letter
        if t.get("answer_type") == "float":
            return f"\\boxed{{{t['gold']}2}}"  # 2.52 for gold 2.5 at precision 1
        return f"\\boxed{{{t['gold']}}}"

    summary = run(ScriptedEngine(make_script({"mathvista": truth["mathvista"]}, respond)), root, tmp_path / "o", benches=["mathvista"])
    assert summary["benchmarks"]["mathvista"]["accuracy"] == 1.0
    # without the two conventions the option-text answers... are still read by the verifier via the
    # listed options; a wrong option text is never credited
    def respond_wrong(bench, i, t):
        if t["question_type"] == "multiple_choice":
            other = next(c for c in t["choices"] if c != t["gold_text"])
            return f"\\boxed{{{other}}}"
        return f"\\boxed{{{t['gold']}}}"

    s2 = run(ScriptedEngine(make_script({"mathvista": truth["mathvista"]}, respond_wrong)), root, tmp_path / "o2", benches=["mathvista"])
    n_mc = sum(t["question_type"] == "multiple_choice" for t in truth["mathvista"])
    assert s2["benchmarks"]["mathvista"]["correct"] == len(truth["mathvista"]) - n_mc


def test_forced_rethinking_reports_before_and_after(bench_root, tmp_path):
    root, truth = bench_root
    ts = truth["mathvision"]

    def respond(bench, i, t):
        good, bad = f"\\boxed{{{t['gold']}}}", f"\\boxed{{{wrong_answer(t)}}}"
        if i == 0:
            return (f"First try {bad}.", f", let me recheck. Actually {good}.")  # wrong -> right
        if i == 1:
            return (f"First try {good}.", f", hmm. Then {bad}.")  # right -> wrong
        if i == 2:
            return ("x" * 500, "unused")  # no EOS: not continued
        return (f"First {good}.", f", yes, {good}.")  # right -> right

    engine = ScriptedEngine(make_script({"mathvision": ts}, respond))
    summary = run(engine, root, tmp_path / "o", benches=["mathvision"], force_rethink=True, max_new_tokens=200)
    s = summary["benchmarks"]["mathvision"]
    n = len(ts)
    assert s["correct"] == n - 2  # items 0 (wrong first) and 2 (truncated) are wrong
    assert s["correct_rethink"] == n - 2  # 0 fixed, 1 broken, 2 still wrong
    assert (s["wrong_to_right"], s["right_to_wrong"]) == (1, 1)
    assert s["rethink_triggered"] == n - 1 and s["truncated"] == 1
    conts = [c for c in engine.calls if c.prefix_text is not None]
    assert len(conts) == n - 1
    first0 = respond("mathvision", 0, ts[0])[0]
    assert any(c.prefix_text == first0 + "\n\nWait" for c in conts)  # y1 without EOS + the eval trigger
    recs = {r["id"]: r for r in map(json.loads, (tmp_path / "o/results/mathvision.jsonl").read_text().splitlines())}
    r0 = recs[ts[0]["id"]]
    assert r0["correct"] is False and r0["correct_rethink"] is True
    assert r0["rethink"]["response"] == first0 + "\n\nWait" + respond("mathvision", 0, ts[0])[1]
    assert recs[ts[2]["id"]]["rethink"] == {"triggered": False, "why": "no_eos"}
    md = (tmp_path / "o/summary.md").read_text()
    assert "| scripted + rethinking |" in md


def test_resume_after_a_crash_does_not_redo_finished_items(bench_root, tmp_path):
    root, truth = bench_root
    benches = ["mathverse"]
    n = len(truth["mathverse"])
    out = tmp_path / "out"
    crashing = ScriptedEngine(make_script(truth, planned), fail_after_calls=2)
    with pytest.raises(ConnectionError):
        run(crashing, root, out, benches=benches, batch_size=2)
    done = ResultStore(out / "results" / "mathverse.jsonl").load()
    assert len(done) == 4  # two batches of two finished before the crash
    engine, judge = ScriptedEngine(make_script(truth, planned)), CountingJudge()
    resumed = run(engine, root, out, benches=benches, batch_size=2, judge=judge)
    assert len(engine.calls) == n - 4 and judge.graded == n - 4
    fresh = run(ScriptedEngine(make_script(truth, planned)), root, tmp_path / "fresh", benches=benches, batch_size=2)
    assert resumed["benchmarks"] == fresh["benchmarks"]
    # a third run finds everything done: nothing decoded, nothing judged, same summary
    engine3, judge3 = ScriptedEngine(make_script(truth, planned)), CountingJudge()
    again = run(engine3, root, out, benches=benches, batch_size=2, judge=judge3)
    assert engine3.calls == [] and judge3.graded == 0 and again["benchmarks"] == fresh["benchmarks"]


def test_torn_last_line_is_repaired_and_its_item_redone(bench_root, tmp_path):
    root, truth = bench_root
    out = tmp_path / "out"
    run(ScriptedEngine(make_script(truth, planned)), root, out, benches=["emma"])
    f = out / "results" / "emma.jsonl"
    data = f.read_bytes()
    lines = data.splitlines(keepends=True)
    torn_id = json.loads(lines[-1])["id"]
    f.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # died mid-write
    engine = ScriptedEngine(make_script(truth, planned))
    summary = run(engine, root, out, benches=["emma"])
    torn_tag = next(t["tag"] for t in truth["emma"] if t["id"] == torn_id)
    assert len(engine.calls) == 1 and torn_tag in engine.calls[0].prompt_text
    recs = [json.loads(x) for x in f.read_text().splitlines()]
    assert sorted(r["id"] for r in recs) == sorted(t["id"] for t in truth["emma"])
    assert summary["benchmarks"]["emma"]["n"] == len(truth["emma"])
    # a corrupt line in the middle is not guessed at
    f.write_text("not json\n" + f.read_text())
    with pytest.raises(ResultsFileError, match=r"emma.jsonl:1: corrupt record"):
        run(ScriptedEngine(make_script(truth, planned)), root, out, benches=["emma"])


def test_other_settings_are_refused_unless_overwrite(bench_root, tmp_path):
    root, truth = bench_root
    out = tmp_path / "out"
    run(ScriptedEngine(make_script(truth, planned)), root, out, benches=["emma"])
    with pytest.raises(RunMismatchError, match=r"max_new_tokens: 400 -> 64"):
        run(ScriptedEngine(make_script(truth, planned)), root, out, benches=["emma"], max_new_tokens=64)
    engine = ScriptedEngine(make_script(truth, planned))
    runner = EvalRunner(EngineDecoder(engine), settings(max_new_tokens=64), judge=Judge(workers=0), out_dir=out, overwrite=True, progress=False)
    asyncio.run(runner.run(load(root, ["emma"])))
    assert len(engine.calls) == len(truth["emma"])  # started over


def test_a_failing_item_is_recorded_and_retried_on_resume(bench_root, tmp_path):
    root, truth = bench_root
    ts = truth["mathvision"]

    def broken(bench, i, t):
        return ValueError("cannot decode this image") if i == 3 else planned(bench, i, t)

    out = tmp_path / "out"
    s = run(ScriptedEngine(make_script({"mathvision": ts}, broken)), root, out, benches=["mathvision"])
    rec = {r["id"]: r for r in map(json.loads, (out / "results/mathvision.jsonl").read_text().splitlines())}
    assert rec[ts[3]["id"]]["error"] == "ValueError: cannot decode this image"
    assert s["benchmarks"]["mathvision"]["errors"] == 1
    assert s["benchmarks"]["mathvision"]["correct"] == sum(is_correct_by_plan(i) for i in range(len(ts)) if i != 3)
    engine = ScriptedEngine(make_script({"mathvision": ts}, planned))
    s2 = run(engine, root, out, benches=["mathvision"])
    assert len(engine.calls) == 1 and "[mathvision-4]" in engine.calls[0].prompt_text
    assert s2["benchmarks"]["mathvision"]["errors"] == 0
    assert s2["benchmarks"]["mathvision"]["correct"] == sum(is_correct_by_plan(i) for i in range(len(ts)))
    engine3 = ScriptedEngine(make_script({"mathvision": ts}, planned))
    s3 = run(engine3, root, out, benches=["mathvision"])  # the retried record replaced the error record
    assert engine3.calls == [] and s3["benchmarks"] == s2["benchmarks"]


def test_judging_in_verifier_worker_processes(bench_root, tmp_path):
    root, truth = bench_root
    judge = Judge(workers=1, timeout_s=30.0)
    s = run(ScriptedEngine(make_script(truth, planned)), root, tmp_path / "o", benches=["mathvision"], judge=judge)
    n = len(truth["mathvision"])
    assert s["benchmarks"]["mathvision"]["correct"] == sum(is_correct_by_plan(i) for i in range(n))
