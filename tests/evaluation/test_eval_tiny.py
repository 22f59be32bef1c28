"""Real runs with the tiny Qwen2.5-VL: the CLI through the hf engine, chat, and the learner hook."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import eval_synth

ROOT = Path(__file__).resolve().parents[2]
PIXELS = ["--set", "data.min_pixels=3136", "--set", "data.max_pixels=12544"]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", "rethinker.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )


def _regrade(rec: dict) -> bool:
    from services.verifier import grade

    return grade(rec["response"], rec["gold"], question=rec["prompt"][: len(rec["prompt"]) - len(SUFFIX)]).correct


SUFFIX = "\n\nPlease reason step by step, and put your final answer within \\boxed{}."


@pytest.mark.slow
def test_cli_eval_tiny_model_hf_engine_then_resume(tiny_model_dir, synth_data_dir, tmp_path):
    data = tmp_path / "data"
    eval_synth.write_mathvision(data, n=4)
    out = tmp_path / "out"
    args = [
        "eval", "--model", str(tiny_model_dir), "--data-dir", str(data),
        "--bench", f"mathvision,synthetic={synth_data_dir / 'eval.parquet'}",
        "--out", str(out), "--max-new-tokens", "12", "--batch-size", "4", "--judge-workers", "0", *PIXELS,
    ]
    r = cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mathvision:" in r.stdout and "virl:" in r.stdout and "report:" in r.stdout
    assert "[virl] 6/6 items" in r.stderr and "items/s" in r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == str(tiny_model_dir)
    for bench, n in (("mathvision", 4), ("virl", 6)):
        recs = [json.loads(x) for x in (out / "results" / f"{bench}.jsonl").read_text().splitlines()]
        assert len(recs) == n
        s = summary["benchmarks"][bench]
        assert s["n"] == n and s["correct"] == sum(r["correct"] for r in recs)
        for rec in recs:
            assert rec["finish_reason"] in ("stop", "length") and 0 < rec["n_tokens"] <= 12
            assert rec["prompt"].endswith(SUFFIX)
            assert rec["correct"] == _regrade(rec)  # the stored verdict is the verifier's
    before = {p.name: p.read_bytes() for p in (out / "results").iterdir()}
    # the same command again: everything is resumed, nothing decoded or judged again
    r2 = cli(*args)
    assert r2.returncode == 0, r2.stderr[-3000:]
    starts = [json.loads(x) for x in r2.stderr.splitlines() if '"eval_benchmark_start"' in x]
    assert {(e["benchmark"], e["todo"], e["resumed"]) for e in starts} == {("mathvision", 0, 4), ("virl", 0, 6)}
    assert {p.name: p.read_bytes() for p in (out / "results").iterdir()} == before
    # other settings into the same folder: refused with a readable message
    r3 = cli(*[a if a != "12" else "16" for a in args])
    assert r3.returncode == 2 and "max_new_tokens: 12 -> 16" in r3.stderr and "Traceback" not in r3.stderr


@pytest.mark.slow
def test_cli_chat_prints_response_and_extracted_answer(tiny_model_dir, tmp_path):
    img = tmp_path / "shape.png"
    img.write_bytes(eval_synth.png((200, 30, 30), size=56))
    r = cli("chat", "--model", str(tiny_model_dir), "--image", str(img), "What color is the shape?",
            "--max-new-tokens", "10", "--gold", "red", "--json", *PIXELS)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    # the same prompt decoded here (image first, the spec's suffix, the same pixel limits, greedy)
    from common.model_loading import load_model, load_processor
    from evaluation.generation import ModelDecoder
    from evaluation.prompts import EvalPrompt
    from services.verifier import grade

    md = ModelDecoder(load_model(tiny_model_dir, dtype="float32"), load_processor(tiny_model_dir),
                      min_pixels=3136, max_pixels=12544)
    prompt = EvalPrompt("<image>\nWhat color is the shape?", [img.read_bytes()], SUFFIX)
    [d] = asyncio.run(md.decode([prompt], max_new_tokens=10))
    assert (out["response"], out["finish_reason"]) == (d.first.text, d.first.finish_reason)
    v = grade(d.first.text, "red", question=prompt.question)
    assert (out["extracted"], out["correct"], out["gold"]) == (v.extracted, v.correct, "red")
    r3 = cli("chat", "--model", str(tiny_model_dir), "--image", str(tmp_path / "nope.png"), "q")
    assert r3.returncode == 2 and "nope.png" in r3.stderr


def _eos_after(model, trigger_token: int, eos: int):
    """Make greedy decoding stop right after ``trigger_token`` (so some answers end with EOS)."""

    def hook(module, args, kwargs, output):
        ids = kwargs.get("input_ids")
        if ids is not None and output.logits is not None:
            hit = ids[:, -1] == trigger_token
            output.logits[hit, -1, eos] = 1e4
        return output

    return model.register_forward_hook(hook, with_kwargs=True)


def test_model_decoder_matches_hf_engine_incl_rethinking(tiny_model_dir, synth_data_dir):
    """The learner-hook decoder (model object) and the rollout hf engine give the same greedy text."""
    from common.config import load_config
    from common.model_loading import load_model, load_processor
    from evaluation.benchmarks import load_benchmark
    from evaluation.generation import EngineDecoder, ModelDecoder
    from evaluation.prompts import build_prompt
    from services.rollout.engines import make_engine

    cfg = load_config(None, [f"model.path={tiny_model_dir}", "model.dtype=float32", "rollout.device=cpu",
                             "data.min_pixels=3136", "data.max_pixels=12544"])
    prompts = [build_prompt(it) for it in load_benchmark(f"virl={synth_data_dir / 'eval.parquet'}")]
    model = load_model(tiny_model_dir, dtype="float32")
    processor = load_processor(tiny_model_dir, min_pixels=3136, max_pixels=12544)
    md = ModelDecoder(model, processor, min_pixels=3136, max_pixels=12544, max_batch=8)

    async def with_engine():
        engine = make_engine(cfg)
        await engine.start()
        try:
            plain = await md.decode(prompts, max_new_tokens=10)
            ref = await EngineDecoder(engine).decode(prompts, max_new_tokens=10)
            # pick a token the greedy answers produce early and stop after it, in both models
            tok = processor.tokenizer.encode(plain[0].first.text, add_special_tokens=False)[1]
            eos = min(md.eos)
            h1, h2 = _eos_after(model, tok, eos), _eos_after(engine.model, tok, eos)
            try:
                a = await md.decode(prompts, max_new_tokens=10, rethink_trigger="\n\nWait")
                b = await EngineDecoder(engine).decode(prompts, max_new_tokens=10, rethink_trigger="\n\nWait")
            finally:
                h1.remove()
                h2.remove()
            return plain, ref, a, b
        finally:
            await engine.close()

    plain, ref, a, b = asyncio.run(with_engine())
    assert [d.first.text for d in plain] == [d.first.text for d in ref]
    assert [d.first.finish_reason for d in plain] == [d.first.finish_reason for d in ref]
    stopped = [i for i, d in enumerate(a) if d.first.finish_reason == "stop"]
    assert stopped, "the EOS hook should end at least one answer"
    for x, y in zip(a, b):
        assert (x.first.text, x.first.finish_reason) == (y.first.text, y.first.finish_reason)
        assert (x.rethink is None) == (y.rethink is None) == (x.first.finish_reason != "stop")
        if x.rethink is not None:
            assert x.rethink.text == y.rethink.text and x.rethink.continuation == y.rethink.continuation
            assert "Wait" in x.rethink.text and x.rethink.text.startswith(x.first.text)


def test_periodic_eval_fn_on_the_learner_model(tiny_model_dir, synth_data_dir, tmp_path):
    from common.config import load_config
    from common.model_loading import load_model
    from evaluation.periodic import make_eval_fn

    cfg = load_config(None, [f"model.path={tiny_model_dir}", "model.dtype=float32",
                             f"data.eval_path={synth_data_dir / 'eval.parquet'}", "data.eval_max_items=4",
                             "data.min_pixels=3136", "data.max_pixels=12544", "algorithm.sampling.max_new_tokens=8",
                             "eval.judge_workers=0", f"run.run_dir={tmp_path / 'run'}"])
    model = load_model(tiny_model_dir, dtype="float32")
    model.train()
    eval_fn = make_eval_fn(cfg, model)
    m = eval_fn(20)
    assert model.training  # back in training mode
    assert m["virl/n"] == 4.0 and 0.0 <= m["accuracy"] <= 1.0 and m["seconds"] > 0
    assert m["virl/mean_response_tokens"] <= 8
    recs = [json.loads(x) for x in (tmp_path / "run/eval/step-000020/results/virl.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and m["accuracy"] == sum(r["correct"] for r in recs) / 4
    assert all(r["n_tokens"] <= 8 for r in recs)

    async def inside_a_loop():  # the learner may call it from async code
        return eval_fn(40)

    m2 = asyncio.run(inside_a_loop())
    assert m2["virl/accuracy"] == m["virl/accuracy"]  # same weights, greedy: same answers
    assert (tmp_path / "run/eval/step-000040/summary.md").exists()
