"""Where one step of the CPU demo spends its time, component by component; prints ONE JSON line.

The demo's step on this task (``configs/tiny-cpu.yaml``: 32 prompts x 8 responses, answers of ~8
tokens after the format warm-up, one torch thread per process as the launcher sets), measured in one
process on the format-warmed tiny model:

- ``encode_s``: chat-formatting + image processing of the step's 32 prompts (rollout side);
- ``generate_s`` / ``generate_plain_s``: first-pass generation of the 256 responses with the shared
  prefill (``rollout.hf_shared_prefill``, one prefill per prompt) and without it (every row
  prefilled), alternated over ``--repeats``, median; ``prefill_share_plain``: the share of the plain
  generation spent with ``max_new_tokens=1`` (the prefill), ``shared_prefill_speedup`` the ratio;
- ``generate_by_batch_s``: the same 256 responses (shared prefill) generated in calls of
  ``--batch-prompts`` prompts each (a rollout server generates one claimed batch of
  ``rollout.batch_prompts`` prompts per call), so the cost of many small calls shows;
- ``continue_s`` / ``continue_plain_s``: Forced Rethinking's second generation call for the same
  256 responses (each continued from its first half plus a trigger, as ``rollout.rethink`` plans
  them) with one prefill per prompt (the prefix appended to the shared prompt cache, its log-probs
  taken from that forward) and without it (every row prefilled, plus a teacher-forced forward for
  the prefix log-probs), alternated, median; ``continuation_speedup`` the ratio;
- ``learner_step_s``: one DeepSpeed (ZeRO-2, fp32) GRPO step on ``--rows`` rows of the same shape
  (the demo trains half the rollout volume, 128 rows), median; ``learner_s_per_row``.

The whole demo's split between these parts, and its idle share, come from ``rethinker demo``'s own
``summary.json`` / ``learner_metrics.jsonl``; this script isolates the parts.

Usage: python benchmarks/demo_profile.py [--repeats 3] [--rows 128] [--batch-prompts 4,8,16,32] [--model DIR] [--data DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, default=128, help="rows of the learner step")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--model", default=None, help="a format-warmed model folder (default: warm one up here)")
    ap.add_argument("--data", default=None, help="folder with train.parquet (default: generate the demo data)")
    ap.add_argument("--warmup-steps", type=int, default=50)
    ap.add_argument("--batch-prompts", default="4,8,16,32", help="prompts per generation call for generate_by_batch_s")
    return ap.parse_args(argv)


def med(xs: list[float]) -> float:
    return round(statistics.median(xs), 4)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(1)  # as the launcher runs every child (launcher.child_threads)
    import numpy as np

    from common.config import RETHINK_TRIGGERS, load_config
    from common.data.loader import load_rows, to_prompt_task
    from rethinker.demo import prepare_data, warm_up
    from services.rollout.engines import GenerationRequest, SamplingParams, make_engine

    work = Path(tempfile.mkdtemp(prefix="demo-profile-"))
    data = Path(args.data) if args.data else work / "data"
    cfg = load_config(str(REPO / "configs" / "tiny-cpu.yaml"), [
        f"run.run_dir={work / 'run'}", f"data.train_path={data / 'train.parquet'}", f"data.eval_path={data / 'eval.parquet'}",
        f"launcher.warmup_sft_steps={args.warmup_steps}", f"model.path={work / 'tiny'}",
    ])
    prepare_data(cfg)
    if args.model:
        model = args.model
    else:
        from devtools.tiny_model import ensure_model

        ensure_model(cfg.model)
        model = warm_up(cfg, work / "run").model.path
    rows = load_rows(str(data / "train.parquet"))[: args.prompts]

    out: dict[str, object] = {}
    gen = {True: [], False: []}
    cont = {True: [], False: []}
    sizes = [int(x) for x in str(args.batch_prompts).split(",") if x.strip()]
    by_batch: dict[int, list[float]] = {b: [] for b in sizes}
    prefill_plain: list[float] = []
    encode: list[float] = []

    async def rollout() -> None:
        engines = {}
        for shared in (True, False):
            c = cfg.model_copy(deep=True)
            c.model.path, c.model.build_tiny_if_missing = model, False
            c.rollout.hf_shared_prefill = shared
            engines[shared] = make_engine(c)
            await engines[shared].start()
        tasks = [to_prompt_task(r, n=cfg.algorithm.sampling.n, prompt_suffix=cfg.data.prompt_suffix) for r in rows]
        e0 = engines[True]
        e0.encode_prompt(tasks[0])  # first call loads the image processor's lazies
        for rep in range(args.repeats):
            t = time.perf_counter()
            prompts = [e0.encode_prompt(task) for task in tasks]
            encode.append(time.perf_counter() - t)
            for shared in ((True, False) if rep % 2 == 0 else (False, True)):
                eng = engines[shared]
                reqs = [GenerationRequest(f"r{i}", p, SamplingParams.from_config(cfg.algorithm.sampling, seed=i))
                        for i, p in enumerate(prompts)]
                t = time.perf_counter()
                first = eng._generate_sync(reqs, 0)
                gen[shared].append(time.perf_counter() - t)
            trigger = np.asarray(e0.tokenizer.encode(RETHINK_TRIGGERS[2], add_special_tokens=False), dtype=np.int32)
            creqs = [
                GenerationRequest(f"c{i}:{j}", p, SamplingParams(n=1, max_new_tokens=cfg.algorithm.rethink.max_continuation_tokens, seed=i),
                                  prefix_token_ids=np.concatenate([c.token_ids[: len(c.token_ids) // 2], trigger]))
                for i, (p, res) in enumerate(zip(prompts, first)) for j, c in enumerate(res.completions)
            ]
            for shared in ((True, False) if rep % 2 == 0 else (False, True)):
                t = time.perf_counter()
                engines[shared]._generate_sync(creqs, 0)
                cont[shared].append(time.perf_counter() - t)
            for b in (sizes if rep % 2 == 0 else sizes[::-1]):
                reqs = [GenerationRequest(f"b{i}", p, SamplingParams.from_config(cfg.algorithm.sampling, seed=i))
                        for i, p in enumerate(prompts)]
                t = time.perf_counter()
                for k in range(0, len(reqs), b):
                    e0._generate_sync(reqs[k : k + b], 0)
                by_batch[b].append(time.perf_counter() - t)
            one = cfg.algorithm.sampling.model_copy(update={"max_new_tokens": 1})
            reqs = [GenerationRequest(f"p{i}", p, SamplingParams.from_config(one, seed=i)) for i, p in enumerate(prompts)]
            t = time.perf_counter()
            engines[False]._generate_sync(reqs, 0)
            prefill_plain.append(time.perf_counter() - t)
        for eng in engines.values():
            if eng.shared_prefill != (eng is engines[True]):
                raise RuntimeError("the shared-prefill engine fell back to the plain path")
            await eng.close()

    asyncio.run(rollout())
    out["encode_s"] = med(encode)
    out["generate_s"] = med(gen[True])
    out["generate_plain_s"] = med(gen[False])
    out["shared_prefill_speedup"] = round(out["generate_plain_s"] / out["generate_s"], 3)
    out["prefill_share_plain"] = round(med(prefill_plain) / out["generate_plain_s"], 3)
    out["continue_s"] = med(cont[True])
    out["continue_plain_s"] = med(cont[False])
    out["continuation_speedup"] = round(out["continue_plain_s"] / out["continue_s"], 3)
    out["generate_by_batch_s"] = {str(b): med(v) for b, v in by_batch.items()}

    from common.model_loading import load_processor
    from learner.batching import PromptCache, build_items
    from learner.policy_model import PolicyModel
    from learner.loss import LossConfig
    from learner.step import train_step
    from learner.synthetic import synthetic_batch

    lcfg = cfg.model_copy(deep=True)
    lcfg.model.path, lcfg.model.build_tiny_if_missing = model, False
    per_prompt = cfg.algorithm.sampling.n
    lcfg.learner.prompts_per_step = max(1, args.rows // per_prompt)
    lcfg.algorithm.ssr.train_fraction = 1.0
    lcfg.learner.micro_batch_size = min(lcfg.learner.micro_batch_size, args.rows)
    policy = PolicyModel(lcfg)
    proc = load_processor(model, min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels)
    samples, tasks = synthetic_batch(policy.module, proc, load_rows(str(data / "train.parquet")), n_prompts=lcfg.learner.prompts_per_step,
                                     n=per_prompt, response_len=(6, 10), min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels)
    items, errors = build_items(samples, tasks, PromptCache(proc, min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels))
    if errors:
        raise RuntimeError(errors[0])
    loss_cfg = LossConfig.from_grpo(lcfg.algorithm.grpo)
    train_step(policy, items, loss_cfg)  # warm
    steps = [train_step(policy, items, loss_cfg)["seconds"] for _ in range(args.repeats)]
    out["learner_rows"] = len(items)
    out["learner_step_s"] = med(steps)
    out["learner_s_per_row"] = round(out["learner_step_s"] / len(items), 5)

    line = {
        "benchmark": "demo_profile",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "prompts": len(rows),
        "n": cfg.algorithm.sampling.n,
        **out,
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
