"""Rollout generation benchmark; prints ONE JSON line.

Figures (same run, same machine):

- ``hf_tokens_per_s``: generated tokens per second of the transformers engine on CPU, for the
  ``tiny`` (~0.26M) and the ``small`` (~25M) model: ``prompts`` prompts with one image each,
  ``n`` samples per prompt, up to ``new_tokens`` tokens each (random weights: EOS is rare; the
  tokens counted are the tokens actually generated), median of ``repeats`` timed batches after one
  warm-up.
- ``rethink_overhead``: median wall time of building groups (generate + score + Forced Rethinking)
  with rethinking on, over the same with rethinking off (baseline), for a tiny model fine-tuned
  for a few seconds to end its answers with EOS (rethinking only triggers on EOS-ended
  responses); the recipe's probabilities (skip 0.35, truncate 0.5, ...) are used; scoring is
  in-process (``LocalScorer``) so that verifier HTTP latency does not blur the ratio.  Both
  builders are warmed up, then on and off alternate repeat by repeat; ``ratio_rounds`` gives the
  ratio of each repeat.
- ``batching_tiny``: tokens/s of the same workload as one engine call (prompts x n rows) vs one
  call per prompt (tiny model), alternated, median over repeats.
- On a machine with a GPU and vLLM installed: ``vllm_tokens_per_s`` (same workload, small model)
  and ``vllm_over_hf`` (over the hf engine on the same GPU); otherwise ``null`` with a reason.

Usage: python benchmarks/rollout.py [--prompts 4] [--n 8] [--new-tokens 32] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def png(color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (56, 56), color).save(buf, format="PNG")
    return buf.getvalue()


def config(model_dir: Path, *overrides: str):
    from common.config import load_config

    return load_config(str(REPO / "configs" / "tiny-cpu.yaml"), [f"model.path={model_dir}", "model.build_tiny_if_missing=false", *overrides])


def hf_tokens_per_s(model_dir: Path, args: argparse.Namespace, engine_name: str = "hf") -> float:
    from services.rollout.engines import GenerationRequest, SamplingParams, make_engine

    cfg = config(model_dir, f"rollout.engine={engine_name}")

    async def run() -> float:
        engine = make_engine(cfg)
        await engine.start()
        try:
            prompts = [engine.encode_question("<image>How many shapes are there?", [png((40 * i, 0, 200))], cfg.data.prompt_suffix)
                       for i in range(args.prompts)]
            times = []
            for rep in range(args.repeats + 1):
                reqs = [GenerationRequest(f"r{rep}-{i}", p, SamplingParams(n=args.n, max_new_tokens=args.new_tokens, seed=rep))
                        for i, p in enumerate(prompts)]
                t0 = time.perf_counter()
                res = await engine.generate(reqs)
                dt = time.perf_counter() - t0
                tokens = sum(len(c.token_ids) for r in res for c in r.completions)
                if rep > 0:
                    times.append(tokens / dt)
            return statistics.median(times)
        finally:
            await engine.close()

    return asyncio.run(run())


def teach_eos(src: Path, out: Path, steps: int = 100) -> Path:
    """Fine-tune the tiny model for a few seconds so that it answers with a boxed number and EOS."""
    import shutil

    import torch

    from common.config import PROMPT_SUFFIX, RETHINK_TRIGGERS
    from common.model_loading import build_prompt_inputs, load_model, load_processor, teacher_forced_logprobs_batch

    torch.manual_seed(0)
    model = load_model(src)
    model.train()
    proc = load_processor(src, min_pixels=3136, max_pixels=12544)
    tok = proc.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    prompt = build_prompt_inputs(proc, "<image>How many shapes are there?", [png((255, 0, 0))], PROMPT_SUFFIX, 3136, 12544)
    y1 = tok.encode("There are 3 shapes.\n\nSo the answer is \\boxed{3}.", add_special_tokens=False)
    y2 = tok.encode(" Let me recount: one, two, three. Yes, the answer is \\boxed{3}.", add_special_tokens=False)
    items = [(prompt, y1 + [eos])] + [(prompt, y1 + tok.encode(t, add_special_tokens=False) + y2 + [eos]) for t in RETHINK_TRIGGERS]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = -sum(lp.mean() for lp in teacher_forced_logprobs_batch(model, items)) / len(items)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(out)
    proc.save_pretrained(out)
    shutil.copy(src / "generation_config.json", out / "generation_config.json")
    return out


def batching(model_dir: Path, args: argparse.Namespace) -> dict:
    """Tokens/s of the workload as one engine call (prompts x n rows) vs one call per prompt, same
    engine, alternated call by call (even repeats batched first), median over repeats after one
    warm-up of each."""
    from services.rollout.engines import GenerationRequest, SamplingParams, make_engine

    cfg = config(model_dir, "rollout.engine=hf")

    async def run() -> dict:
        engine = make_engine(cfg)
        await engine.start()
        try:
            prompts = [engine.encode_question("<image>How many shapes are there?", [png((40 * i, 0, 200))], cfg.data.prompt_suffix)
                       for i in range(args.prompts)]

            def reqs(rep: int, tag: str) -> list:
                return [GenerationRequest(f"{tag}{rep}-{i}", p, SamplingParams(n=args.n, max_new_tokens=args.new_tokens, seed=rep))
                        for i, p in enumerate(prompts)]

            async def one_call(rep: int) -> float:
                t0 = time.perf_counter()
                res = await engine.generate(reqs(rep, "b"))
                return sum(len(c.token_ids) for r in res for c in r.completions) / (time.perf_counter() - t0)

            async def per_prompt(rep: int) -> float:
                t0 = time.perf_counter()
                tokens = 0
                for r_ in reqs(rep, "s"):
                    res = await engine.generate([r_])
                    tokens += sum(len(c.token_ids) for r in res for c in r.completions)
                return tokens / (time.perf_counter() - t0)

            batched, single = [], []
            for rep in range(args.repeats + 1):
                if rep % 2 == 0:
                    b, s_ = await one_call(rep), await per_prompt(rep)
                else:
                    s_, b = await per_prompt(rep), await one_call(rep)
                if rep > 0:
                    batched.append(b)
                    single.append(s_)
            return {"batched_tokens_per_s": round(statistics.median(batched), 1),
                    "per_prompt_tokens_per_s": round(statistics.median(single), 1),
                    "ratio": round(statistics.median(batched) / statistics.median(single), 3),
                    "ratio_rounds": [round(a / b, 3) for a, b in zip(batched, single)]}
        finally:
            await engine.close()

    return asyncio.run(run())


def rethink_overhead(model_dir: Path, args: argparse.Namespace) -> dict:
    """Group building with rethinking on vs off: two builders (one engine each) warmed up, then
    alternated repeat by repeat (even repeats off first), the same tasks for both in a repeat."""
    from common.config import PROMPT_SUFFIX
    from common.schemas import PromptTask
    from services.rollout.actor import GroupBuilder
    from services.rollout.engines import make_engine
    from services.rollout.scoring import LocalScorer

    def tasks(rep: int, tag: str) -> list[PromptTask]:
        return [PromptTask(task_id=f"{tag}{rep}-{i}", prompt_id=f"b{i}", question="<image>How many shapes are there?",
                           answer="3" if i % 2 == 0 else "4", images=[png((255, 0, 0))], prompt_suffix=PROMPT_SUFFIX)
                for i in range(args.prompts)]

    async def run() -> dict:
        builders, engines = {}, []
        for enabled in (False, True):
            cfg = config(model_dir, f"algorithm.rethink.enabled={str(enabled).lower()}", "algorithm.rethink.start_version=0",
                         f"algorithm.sampling.n={args.n}", "algorithm.sampling.max_new_tokens=48")
            engine = make_engine(cfg)
            await engine.start()
            engines.append(engine)
            builders[enabled] = GroupBuilder(cfg, engine, LocalScorer(cfg), "bench")
        times: dict[bool, list[float]] = {False: [], True: []}
        try:
            for rep in range(args.repeats + 1):
                for enabled in ((False, True) if rep % 2 == 0 else (True, False)):
                    t0 = time.perf_counter()
                    await builders[enabled].build(tasks(rep, "on" if enabled else "off"))
                    if rep > 0:
                        times[enabled].append(time.perf_counter() - t0)
        finally:
            for engine in engines:
                await engine.close()
        stats = builders[True].stats.rethink.as_dict()
        if not stats["triggered"]:
            raise SystemExit(f"benchmarks/rollout.py: rethinking never triggered ({stats}), so its overhead is not measured")
        on, off = statistics.median(times[True]), statistics.median(times[False])
        return {"with_s": round(on, 4), "without_s": round(off, 4), "ratio": round(on / off, 3),
                "ratio_rounds": [round(a / b, 3) for a, b in zip(times[True], times[False])],
                "with_s_range": [round(min(times[True]), 4), round(max(times[True]), 4)],
                "without_s_range": [round(min(times[False]), 4), round(max(times[False]), 4)],
                "stats": stats}

    return asyncio.run(run())


def vllm_figures(model_dir: Path, args: argparse.Namespace) -> tuple[float | None, float | None, str]:
    try:
        import torch

        if not torch.cuda.is_available():
            return None, None, "no GPU on this machine"
        import vllm  # noqa: F401
    except ImportError:
        return None, None, "vllm not installed"
    v = hf_tokens_per_s(model_dir, args, engine_name="vllm")
    h = hf_tokens_per_s(model_dir, args, engine_name="hf")  # same GPU (rollout.device=auto)
    return v, v / h, "same workload, small model, hf baseline on the same GPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    import torch

    from devtools.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp_p = Path(tmp)
        tiny = build_tiny_model(tmp_p / "tiny", seed=0, size="tiny")
        small = build_tiny_model(tmp_p / "small", seed=0, size="small")
        tiny_tps = hf_tokens_per_s(tiny, args)
        small_tps = hf_tokens_per_s(small, args)
        eos_model = teach_eos(Path(tiny), tmp_p / "tiny-eos")
        overhead = rethink_overhead(eos_model, args)
        batch = batching(tiny, args)
        vllm_tps, vllm_ratio, vllm_note = vllm_figures(small, args)
    print(json.dumps({
        "benchmark": "rollout",
        "date": datetime.date.today().isoformat(),
        "torch_threads": torch.get_num_threads(),
        "workload": {"prompts": args.prompts, "n": args.n, "new_tokens": args.new_tokens, "repeats": args.repeats},
        "hf_tokens_per_s": {"tiny": round(tiny_tps, 1), "small": round(small_tps, 1)},
        "rethink_overhead": overhead["ratio"],
        "rethink": overhead,
        "batching_tiny": batch,
        "vllm_tokens_per_s": vllm_tps,
        "vllm_over_hf": vllm_ratio,
        "vllm_note": vllm_note,
    }))


if __name__ == "__main__":
    main()
