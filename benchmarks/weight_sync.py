"""Weight broadcast and learner step benchmark; prints ONE JSON line.

Figures (same run, same machine, same processes' count):

- ``bytes``: model-like tensors (fp32 + bf16, ~500 MB by default) sent to ``receivers`` processes.
- ``sync_s``: median wall time of ``WeightSender.sync`` (membership read, rendezvous, process group,
  bucketing, broadcast, confirmation) until every receiver holds every tensor.
- ``raw_broadcast_s``: median time of ONE gloo broadcast of a flat buffer of the same bytes to the
  same number of receiver processes (the baseline: what the wire can do).
- ``efficiency`` = ``raw_broadcast_s / sync_s`` (target >= 0.85); ``efficiency_rounds``: the
  ratio of each round (raw and protocol of the same round), ``efficiency_range`` its min and max.
- ``per_tensor_s``: the naive way, one broadcast per parameter (warm, like the others);
  ``efficiency_vs_best_baseline`` = the faster of the two baselines / ``sync_s``.
- ``*_range``: min and max over the rounds.
- The receivers of both sides live side by side for the whole run.  Round 0 warms up every side
  (connections, allocator, page faults of reused buffers) and is not reported; then each round
  runs the raw broadcast, the per-tensor broadcasts and a protocol sync, the raw side first in even
  rounds and the protocol first in odd ones, so both see the same machine load.
- ``learner_step_s``: median seconds of one learner step (8 responses, ZeRO-2, fp32, 1 rank) for the
  ``tiny`` and the ``small`` (~25M) model, after one warm-up step.

Usage: python benchmarks/weight_sync.py [--mb 500] [--receivers 2] [--bucket-mb 64] [--repeats 5]
Needs Redis (REDIS_URL, default redis://127.0.0.1:6379/0); uses a private namespace.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))


def model_like_tensors(total_mb: float, seed: int = 0):
    """~total_mb of named tensors shaped like transformer layers (80 % bf16 matrices, fp32 norms/bias)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {}
    hidden = 1024
    budget = int(total_mb * 1024 * 1024)
    i = 0
    while budget > 0:
        rows = 4 * hidden if i % 3 == 2 else hidden
        t = torch.empty(rows, hidden, dtype=torch.bfloat16).normal_(generator=g)
        out[f"layers.{i}.proj.weight"] = t
        budget -= t.numel() * 2
        b = torch.empty(rows, dtype=torch.float32).normal_(generator=g)
        out[f"layers.{i}.proj.bias"] = b
        budget -= b.numel() * 4
        i += 1
    return out


# --------------------------------------------------------------------------- helper processes


def role_raw(addr: str, port: int, rank: int, world: int, nbytes: int, rounds: int, names_file: str) -> None:
    """Receiver of the raw and the per-tensor baselines: ``rounds`` times one flat broadcast, then
    one broadcast per tensor (buffers allocated once and reused, as the protocol's are)."""
    import torch
    import torch.distributed as dist

    store = dist.TCPStore(addr, port, None, False, timeout=datetime.timedelta(seconds=300))
    pg = dist.ProcessGroupGloo(dist.PrefixStore("raw", store), rank, world, datetime.timedelta(seconds=300))
    buf = torch.empty(nbytes, dtype=torch.uint8)
    shapes = json.loads(Path(names_file).read_text())
    tensors = [torch.empty(s, dtype=getattr(torch, d)) for s, d in shapes]
    for _ in range(rounds):
        pg.broadcast(buf, 0).wait()
        for t in tensors:
            pg.broadcast(t, 0).wait()


def role_receiver(cfg_json: str, server_id: str) -> None:
    from common.config import config_from_json
    from weight_transport import make_receiver

    cfg = config_from_json(Path(cfg_json).read_text())
    seen = []
    rx = make_receiver(cfg, server_id=server_id, on_weights=lambda w, v: seen.append((v, len(w))), initial_version=0)
    rx.start()
    print("ready", flush=True)
    sys.stdin.readline()  # until the parent closes stdin
    rx.stop()


# --------------------------------------------------------------------------- measurements


def spread(xs: list[float]) -> list[float]:
    return [round(min(xs), 4), round(max(xs), 4)]


def bench_transport(args) -> dict:
    import torch
    import torch.distributed as dist

    from common.config import config_to_json, load_config
    from weight_transport import TensorSpec, make_sender

    weights = model_like_tensors(args.mb)
    specs = [TensorSpec.of(n, t) for n, t in weights.items()]
    nbytes = sum(s.nbytes for s in specs)
    world = args.receivers + 1
    rounds = args.repeats + 1  # the first round of each side warms it up and is not reported
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"wsync-bench-{uuid.uuid4().hex[:6]}"
    tmp.mkdir(parents=True)
    procs: list[subprocess.Popen] = []
    rxs: list[subprocess.Popen] = []
    cfg = load_config(None, [
        f"redis.url={os.environ.get('REDIS_URL', 'redis://127.0.0.1:6379/0')}",
        f"redis.namespace=bench-wsync-{uuid.uuid4().hex[:6]}",
        "learner.weight_sync.master_port=0",
        f"learner.weight_sync.bucket_mb={args.bucket_mb}",
        "learner.weight_sync.token=bench",
        "learner.weight_sync.poll_s=0.05",
        "learner.weight_sync.timeout_s=120",
    ])
    try:
        # ---- baselines' receivers: one raw broadcast of the same bytes, and one broadcast per tensor
        names_file = tmp / "shapes.json"
        names_file.write_text(json.dumps([[list(t.shape), str(t.dtype).replace("torch.", "")] for t in weights.values()]))
        store = dist.TCPStore("127.0.0.1", 0, None, True, timeout=datetime.timedelta(seconds=300), wait_for_workers=False)
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--role", "raw", "--port", str(store.port), "--rank", str(r), "--world", str(world),
                 "--nbytes", str(nbytes), "--repeats", str(rounds), "--names", str(names_file)],
                env=env,
            )
            for r in range(1, world)
        ]
        pg = dist.ProcessGroupGloo(dist.PrefixStore("raw", store), 0, world, datetime.timedelta(seconds=300))
        flat = torch.empty(nbytes, dtype=torch.uint8).random_(0, 255)

        # ---- the transport's receivers, in their own processes, alive at the same time
        cfg_json = tmp / "cfg.json"
        cfg_json.write_text(config_to_json(cfg, reveal_secrets=True))
        rxs = [
            subprocess.Popen([sys.executable, __file__, "--role", "receiver", "--cfg", str(cfg_json), "--server-id", f"bench-{r}"],
                             env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for r in range(args.receivers)
        ]
        for p in rxs:
            assert p.stdout.readline().strip() == "ready"
        tx = make_sender(cfg)
        deadline = time.monotonic() + 60
        while len(tx.members()) < args.receivers and time.monotonic() < deadline:
            time.sleep(0.05)

        def raw_round() -> tuple[float, float]:
            t0 = time.perf_counter()
            pg.broadcast(flat, 0).wait()
            t1 = time.perf_counter()
            for t in weights.values():
                pg.broadcast(t, 0).wait()
            return t1 - t0, time.perf_counter() - t1

        def sync_round(v: int):
            t0 = time.perf_counter()
            rep = tx.sync(specs, iter(weights.values()), version=v, step=v)
            wall = time.perf_counter() - t0
            if not rep.ok or len(rep.joined) != args.receivers:
                raise SystemExit(f"sync failed: {rep}")
            return wall, rep

        # Rounds alternate the two sides: even rounds raw first, odd rounds the protocol first.
        raw, per_tensor, syncs, transfers, joins = [], [], [], [], []
        for k in range(rounds):
            if k % 2 == 0:
                r_s, pt_s = raw_round()
                s_s, rep = sync_round(k + 1)
            else:
                s_s, rep = sync_round(k + 1)
                r_s, pt_s = raw_round()
            if k > 0:
                raw.append(r_s)
                per_tensor.append(pt_s)
                syncs.append(s_s)
                transfers.append(rep.transfer_s)
                joins.append(rep.join_s)
        for p in procs:
            p.wait(timeout=120)
        del pg, store, flat
    finally:
        for p in rxs:
            if p.stdin and not p.stdin.closed:
                p.stdin.close()
        for p in rxs + procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        import shutil

        import redis

        r = redis.Redis.from_url(cfg.redis.url)
        for key in r.scan_iter(f"{cfg.redis.namespace}:*"):
            r.delete(key)
        shutil.rmtree(tmp, ignore_errors=True)
    raw_s = statistics.median(raw)
    sync_s = statistics.median(syncs)
    paired = [a / b for a, b in zip(raw, syncs)]
    return {
        "bytes": nbytes,
        "receivers": args.receivers,
        "bucket_mb": args.bucket_mb,
        "tensors": len(specs),
        "rounds": len(syncs),
        "sync_s": round(sync_s, 4),
        "sync_s_range": spread(syncs),
        "sync_transfer_s": round(statistics.median(transfers), 4),
        "sync_join_s": round(statistics.median(joins), 4),
        "raw_broadcast_s": round(raw_s, 4),
        "raw_broadcast_s_range": spread(raw),
        "efficiency": round(raw_s / sync_s, 3),
        "efficiency_rounds": [round(x, 3) for x in paired],
        "efficiency_range": spread(paired),
        "per_tensor_s": round(statistics.median(per_tensor), 4),
        "per_tensor_s_range": spread(per_tensor),
        "efficiency_vs_best_baseline": round(min(raw_s, statistics.median(per_tensor)) / sync_s, 3),
        "sync_GBps": round(nbytes / sync_s / 1e9, 3),
        "raw_GBps": round(nbytes / raw_s / 1e9, 3),
        "target_efficiency": 0.85,
        "target_met": raw_s / sync_s >= 0.85,
    }


def bench_learner_step(repeats: int) -> dict:
    import torch

    from common.config import load_config
    from common.data.loader import load_rows
    from devtools.synth_data import synth_dataset
    from common.model_loading import load_processor
    from devtools.tiny_model import ensure_tiny_model
    from learner.batching import PromptCache, build_items
    from learner.policy_model import PolicyModel
    from learner.loss import LossConfig
    from learner.step import train_step
    from learner.synthetic import synthetic_batch

    cache = REPO / ".cache"
    data = cache / "bench-synth"
    if not (data / "train.parquet").exists():
        synth_dataset(data, n=32, seed=0)
    rows = load_rows(data / "train.parquet")
    pix = dict(min_pixels=3136, max_pixels=12544)
    out = {}
    for size in ("tiny", "small"):
        path = ensure_tiny_model(cache / f"tiny-model-seed0{'' if size == 'tiny' else '-small'}", seed=0, size=size)
        cfg = load_config(None, [f"model.path={path}", "learner.zero_stage=2", "learner.precision=fp32", "learner.lr=1e-5",
                                 "learner.prompts_per_step=2", "algorithm.sampling.n=8", "learner.micro_batch_size=4",
                                 "data.min_pixels=3136", "data.max_pixels=12544"])
        policy = PolicyModel(cfg)
        proc = load_processor(path, **pix)
        samples, tasks = synthetic_batch(policy.module, proc, rows, n_prompts=1, n=8, seed=0, response_len=(24, 48), **pix)
        items, _ = build_items(samples, tasks, PromptCache(proc, **pix), replayed=[True] * 8)
        lcfg = LossConfig.from_grpo(cfg.algorithm.grpo)
        train_step(policy, items, lcfg)  # warm-up
        times = [train_step(policy, items, lcfg)["seconds"] for _ in range(repeats)]
        out[size] = {
            "learner_step_s": round(statistics.median(times), 4),
            "params": int(sum(p.numel() for p in policy.module.parameters())),
            "tokens": int(sum(it.num_tokens for it in items)),
        }
        del policy
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--role", default="main", choices=["main", "raw", "receiver"])
    ap.add_argument("--mb", type=float, default=500.0)
    ap.add_argument("--receivers", type=int, default=2)
    ap.add_argument("--bucket-mb", type=float, default=64.0)
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds (after one warm-up round)")
    ap.add_argument("--skip-learner", action="store_true")
    # helper roles
    ap.add_argument("--port", type=int)
    ap.add_argument("--rank", type=int)
    ap.add_argument("--world", type=int)
    ap.add_argument("--nbytes", type=int)
    ap.add_argument("--names")
    ap.add_argument("--cfg")
    ap.add_argument("--server-id")
    a = ap.parse_args()
    if a.role == "raw":
        return role_raw("127.0.0.1", a.port, a.rank, a.world, a.nbytes, a.repeats, a.names)
    if a.role == "receiver":
        return role_receiver(a.cfg, a.server_id)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import logging

    logging.disable(logging.WARNING)
    result = {"benchmark": "weight_sync", **bench_transport(a)}
    if not a.skip_learner:
        steps = bench_learner_step(a.repeats + 2)
        result["learner_step_s"] = {k: v["learner_step_s"] for k, v in steps.items()}
        result["learner_params"] = {k: v["params"] for k, v in steps.items()}
        result["learner_step_tokens"] = steps["tiny"]["tokens"]
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
