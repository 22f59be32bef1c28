"""The GPU check: learner, hf engine, CUDA IPC weight sync and the whole system on one GPU; ONE JSON line.

Meant for one GPU machine with Python, PyTorch and CUDA but no internet (``benchmarks/gpu_check.sh``
runs the three steps below there).  Three sub-commands:

- ``wheels`` (here, with a package registry): download into ``--dest`` (default ``.gpu-wheels``,
  git-ignored) the wheels such a machine lacks (``GPU_WHEELS`` below, cp312 / manylinux x86_64;
  DeepSpeed is built here as a pure-Python wheel) and a ``redis-server`` with the shared libraries
  it needs; fails if the folder exceeds ``--max-mb`` (60).
- ``install`` (there, standard library only): install every listed distribution the machine does NOT
  already have from that folder, without dependencies and without touching the machine's own
  packages, into ``--site`` (default ``.gpu-site``, put first on ``PYTHONPATH`` by gpu_check.sh).
- ``run`` (there): the four measurements within ``--budget-s`` (at most 480 s), each part in its
  own process with its own time limit (a part that fails, runs out of memory or out of time is
  reported as such and the others still run), then one JSON line on stdout (``SCHEMA_KEYS``):

  ``learner``: a Qwen2.5-VL with the 3B architecture (``--arch 3b``: random init from a config, no
  download; ``tiny`` for CPU runs) in bf16, ZeRO-2 steps on a batch of image prompts
  (``--prompts`` x ``--n`` responses of ``--response-tokens``): ``seconds_per_step``,
  ``tokens_per_s``, ``mfu`` (6 x trainable non-embedding parameters x tokens/s over the GPU's dense
  bf16 peak; recomputation and attention not counted), ``peak_memory_gb``.
  ``hf_engine``: tokens/s of the hf engine generating ``--n`` samples of ``--new-tokens`` tokens for
  one image prompt on the same model.
  ``ipc_sync``: the model's weights from this process to a rollout process through
  ``weight_transport`` (``cuda_ipc`` on a GPU, ``gloo`` on CPU): GB/s of the transfer and of
  the whole round, against a raw device-to-device copy of the same bytes in one process, and
  ``verified_equal`` (per-tensor fingerprints of what the receiver loaded equal the sender's).
  ``system``: ``rethinker up`` with the tiny model for ``--system-steps`` steps on the device:
  ``steps_per_s`` between the first and the last learner step, and the wall time.

Supported versions: torch 2.11-2.14 and transformers 5.17-5.24 (the GPU image has torch 2.11 and
transformers 5.17; the CPU lock pins torch 2.14.1 and transformers 5.24).  Needs Redis for
``ipc_sync`` and ``system`` (``REDIS_URL``; gpu_check.sh starts one).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MAX_BUDGET_S = 480.0
PARTS = ("learner", "hf_engine", "ipc_sync", "system")
# Each part's share of the budget (seconds at the default 480 s budget); scaled with --budget-s.
PART_SHARE = {"learner": 170.0, "hf_engine": 70.0, "ipc_sync": 60.0, "system": 170.0}
SCHEMA_VERSION = 1
SCHEMA_KEYS: dict[str, tuple[str, ...]] = {
    "": ("check", "schema", "date", "host", "device", "device_name", "torch", "transformers", "deepspeed", "budget_s",
         "elapsed_s", "ok", "parts", *PARTS),
    "learner": ("ok", "seconds", "error", "arch", "params", "trainable_params", "steps", "tokens_per_step",
                "seconds_per_step", "tokens_per_s", "mfu", "peak_tflops", "peak_memory_gb"),
    "hf_engine": ("ok", "seconds", "error", "arch", "n", "new_tokens", "tokens", "gen_seconds", "tokens_per_s", "peak_memory_gb"),
    "ipc_sync": ("ok", "seconds", "error", "backend", "bytes", "tensors", "rounds", "transfer_s", "round_s", "gb_per_s",
                 "round_gb_per_s", "raw_copy_gb_per_s", "efficiency", "verified_equal"),
    "system": ("ok", "seconds", "error", "steps", "steps_done", "steps_per_s", "wall_s", "backend"),
}

# Distributions the GPU image lacks (see /docs: BENCHMARKS.md "GPU"): exact versions of the CPU lock.
# ``torchvision`` is the release that matches the image's torch 2.11; it is installed only when the
# image has no torchvision.  Pure-Python unless marked binary (cp312 manylinux x86_64 wheels).
GPU_WHEELS: tuple[tuple[str, str, bool], ...] = (
    # name, version, binary
    ("deepspeed", "0.19.8", False),  # built here from the sdist (pure Python, ops compiled on demand)
    ("hjson", "3.1.0", False),
    ("ninja", "1.13.2", True),
    ("py-cpuinfo", "9.0.0", False),
    ("einops", "0.8.2", False),
    ("pydantic", "2.14.4", False),
    ("pydantic_core", "2.50.5", True),
    ("annotated-types", "0.8.0", False),
    ("typing-inspection", "0.4.5", False),
    ("typing_extensions", "4.16.0", False),
    ("pydantic-settings", "2.16.3", False),
    ("python-dotenv", "1.2.4", False),
    ("redis", "8.1.0", False),
    ("hiredis", "3.5.0", True),
    ("fastapi", "0.165.0", False),
    ("starlette", "1.10.0", False),
    ("annotated-doc", "0.0.7", False),
    ("opentelemetry-api", "1.45.2", False),
    ("uvicorn", "0.54.0", False),
    ("h11", "0.16.0", False),
    ("click", "8.5.1", False),
    ("qwen-vl-utils", "0.0.14", False),
    ("math-verify", "0.9.0", False),
    ("latex2sympy2_extended", "1.11.0", False),
    ("antlr4-python3-runtime", "4.13.2", False),
    ("torchvision", "0.26.0", True),
)
WHEEL_PYTHON = "3.12"
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
REDIS_DIR = "redis"  # <wheels>/redis/{bin/redis-server (wrapper), libexec/redis-server, lib/*.so*}
SYSTEM_LIBS = ("libc.so", "libm.so", "libpthread.so", "libdl.so", "librt.so", "ld-linux", "linux-vdso")


def _norm(name: str) -> str:
    return name.lower().replace("_", "-")


# --------------------------------------------------------------------------- wheels (here)


def cmd_wheels(a: argparse.Namespace) -> int:
    dest = Path(a.dest)
    dest.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    for name, version, binary in GPU_WHEELS:
        if name == "deepspeed":
            if not list(dest.glob("deepspeed-*.whl")):
                env = dict(os.environ, DS_BUILD_OPS="0")
                subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dest), f"{name}=={version}"],
                               check=True, env=env)
            continue
        cmd = [*pip, "download", "-q", "--no-deps", "-d", str(dest), f"{name}=={version}",
               "--python-version", WHEEL_PYTHON, "--implementation", "cp", "--only-binary=:all:"]
        if binary:
            cmd += ["--abi", "cp" + WHEEL_PYTHON.replace(".", "")]
            for plat in WHEEL_PLATFORMS:
                cmd += ["--platform", plat]
        subprocess.run(cmd, check=True)
    if not a.no_redis:
        copy_redis(dest / REDIS_DIR)
    total = folder_mb(dest)
    manifest = {"wheels": sorted(p.name for p in dest.glob("*.whl")), "total_mb": round(total, 2)}
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(json.dumps(manifest))
    if total > a.max_mb:
        print(f"gpu_check wheels: {dest} holds {total:.1f} MB > --max-mb {a.max_mb}", file=sys.stderr)
        return 1
    return 0


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 2**20


REDIS_WRAPPER = """#!/bin/sh
# redis-server carried by `make gpu-wheels` (Debian 12 build, needs glibc >= 2.36): its own
# libraries are put on the library path of this process only.
D=$(cd "$(dirname "$0")/.." && pwd)
LD_LIBRARY_PATH="$D/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$D/libexec/redis-server" "$@"
"""


def copy_redis(out: Path) -> None:
    """``redis-server`` and the shared libraries it links that are not the C library itself, behind a
    wrapper (``bin/redis-server``) that points the library path at them for redis alone."""
    src = shutil.which("redis-server")
    if src is None:
        raise SystemExit("gpu_check wheels: no redis-server on PATH to carry (apt-get install redis-server, or --no-redis)")
    for sub in ("bin", "lib", "libexec"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.realpath(src), out / "libexec" / "redis-server")
    wrapper = out / "bin" / "redis-server"
    wrapper.write_text(REDIS_WRAPPER)
    wrapper.chmod(0o755)
    ldd = subprocess.run(["ldd", src], capture_output=True, text=True, check=True).stdout
    for line in ldd.splitlines():
        parts = line.split("=>")
        if len(parts) != 2:
            continue
        lib = parts[1].strip().split(" (")[0].strip()
        if lib and not any(s in lib for s in SYSTEM_LIBS) and os.path.exists(lib):
            shutil.copy2(os.path.realpath(lib), out / "lib" / Path(lib).name)


# --------------------------------------------------------------------------- install (there; stdlib only)


def installed_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        alt = name.replace("-", "_") if "-" in name else name.replace("_", "-")
        try:
            return metadata.version(alt)
        except metadata.PackageNotFoundError:
            return None


def wheel_for(folder: Path, name: str, version: str) -> Path | None:
    want = _norm(name)
    for p in sorted(Path(folder).glob("*.whl")):
        dist, ver = p.name.split("-")[:2]
        if _norm(dist) == want and ver == version:
            return p
    return None


def plan_install(folder: Path) -> tuple[list[Path], dict[str, str], list[str]]:
    """(wheels to install, {name: version already there}, [names missing from the folder])."""
    todo, present, missing = [], {}, []
    for name, version, _binary in GPU_WHEELS:
        have = installed_version(name)
        if have is not None:
            present[name] = have
            continue
        whl = wheel_for(folder, name, version)
        if whl is None:
            missing.append(f"{name}=={version}")
        else:
            todo.append(whl)
    return todo, present, missing


def cmd_install(a: argparse.Namespace) -> int:
    folder, site = Path(a.wheels), Path(a.site)
    if not folder.is_dir():
        print(f"gpu_check install: --wheels {folder} is not a folder (run `make gpu-wheels` where there is a registry)", file=sys.stderr)
        return 2
    todo, present, missing = plan_install(folder)
    if missing:
        print(f"gpu_check install: not installed and not in {folder}: {', '.join(missing)}", file=sys.stderr)
        return 2
    if todo:
        site.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site),
                        *map(str, todo)], check=True)
    print(json.dumps({"installed": [p.name for p in todo], "present": present, "site": str(site)}))
    return 0


# --------------------------------------------------------------------------- helpers of the parts


def device_of(a: argparse.Namespace) -> str:
    return a.device


def peak_tflops(device_name: str, override: float | None) -> float | None:
    """Dense bf16 peak of the GPU (TFLOP/s); None when unknown (pass --peak-tflops)."""
    if override:
        return float(override)
    n = device_name.upper()
    if "H100" in n and "PCIE" in n:
        return 756.0
    if "H100" in n or "H200" in n or "H800" in n:
        return 989.0
    if "A100" in n:
        return 312.0
    return None


def arch_config(tok: Any, arch: str) -> Any:
    """The model config: ``tiny`` (devtools.tiny_model) or ``3b`` (Qwen2.5-VL-3B-Instruct's architecture:
    hidden 2048, 36 layers, 16 heads / 2 KV heads, MLP 11008, vocabulary 151936, tied embeddings;
    vision depth 32, width 1280)."""
    from transformers import Qwen2_5_VLConfig

    from devtools.tiny_model import make_config

    base = make_config(tok, "tiny")
    if arch == "tiny":
        return base
    if arch != "3b":
        raise ValueError(f"--arch must be '3b' or 'tiny', got {arch!r}")
    text = base.text_config.to_dict()
    text.update(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                num_key_value_heads=2, vocab_size=151936, max_window_layers=36, tie_word_embeddings=True,
                max_position_embeddings=32768)
    rope = dict(text.get("rope_parameters") or {})
    rope["mrope_section"] = [16, 24, 24]  # head_dim 128
    text["rope_parameters"] = rope
    vision = base.vision_config.to_dict()
    vision.update(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                  fullatt_block_indexes=[7, 15, 23, 31])
    for d in (text, vision):  # keys derived from the sizes are derived again
        for k in ("model_type", "transformers_version", "architectures", "layer_types"):
            d.pop(k, None)
    cfg = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=base.image_token_id, video_token_id=base.video_token_id,
        vision_start_token_id=base.vision_start_token_id, vision_end_token_id=base.vision_end_token_id,
        tie_word_embeddings=True,
    )
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "vocab_size"):
        setattr(cfg, key, text[key])
    return cfg


def build_model_folder(out: Path, arch: str, device: str, seed: int = 0) -> Path:
    """A model folder (weights in bf16 for ``3b``; ``tiny`` is devtools.tiny_model's build)."""
    if arch == "tiny":
        from devtools.tiny_model import ensure_tiny_model

        return ensure_tiny_model(out, seed=seed, size="tiny")
    if (out / "config.json").exists() and list(out.glob("*.safetensors")):
        return out
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    from devtools.tiny_model import SUPPRESSED_TOKENS, build_tokenizer, make_processor

    tok = build_tokenizer()
    cfg = arch_config(tok, arch)
    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration(cfg)
    finally:
        torch.set_default_dtype(old)
    im_end, eot = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    # The vocabulary is the 3B one; the tokenizer is the tiny one: never sample an id it cannot decode.
    unknown = list(range(len(tok), cfg.vocab_size))
    model.generation_config = GenerationConfig(
        bos_token_id=eot, eos_token_id=[im_end, eot], pad_token_id=eot, do_sample=True, temperature=1.0,
        suppress_tokens=[tok.convert_tokens_to_ids(t) for t in SUPPRESSED_TOKENS] + unknown,
    )
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=out.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    make_processor(tok).save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def synth_rows(cache: Path, n: int = 16) -> list[Any]:
    from common.data.loader import load_rows
    from devtools.synth_data import synth_dataset

    data = cache / "synth"
    if not (data / "train.parquet").exists():
        synth_dataset(data, n=n, seed=0)
    return load_rows(data / "train.parquet")


def base_overrides(a: argparse.Namespace, model_dir: Path) -> list[str]:
    return [
        f"model.path={model_dir}",
        "model.dtype=bfloat16" if a.device != "cpu" else "model.dtype=float32",
        f"data.min_pixels={a.pixels}",
        f"data.max_pixels={a.pixels}",
        f"data.max_prompt_tokens={max(512, a.pixels // 784 + 256)}",
        f"rollout.device={'cuda' if a.device != 'cpu' else 'cpu'}",
    ]


def drop_namespace(ns: str) -> None:
    """Delete every Redis key of a namespace this check made (best effort)."""
    try:
        import redis

        r = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
        batch = []
        for key in r.scan_iter(f"{ns}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                r.delete(*batch)
                batch = []
        if batch:
            r.delete(*batch)
    except Exception:  # noqa: BLE001 - a leftover namespace is harmless
        pass


def cuda_peak_gb() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


# --------------------------------------------------------------------------- the parts (each in its own process)


def part_learner(a: argparse.Namespace, model_dir: Path, cache: Path) -> dict[str, Any]:
    from common.config import load_config
    from common.model_loading import load_processor
    from learner.batching import PromptCache, build_items
    from learner.policy_model import PolicyModel, is_vision_param
    from learner.loss import LossConfig
    from learner.step import train_step
    from learner.synthetic import synthetic_batch

    cfg = load_config(None, base_overrides(a, model_dir) + [
        "learner.zero_stage=2", f"learner.precision={'bf16' if a.device != 'cpu' else 'fp32'}", "learner.lr=1e-6",
        f"learner.freeze_vision={a.freeze_vision}", f"learner.gradient_checkpointing={a.device != 'cpu'}",
        f"learner.prompts_per_step={a.prompts}", f"algorithm.sampling.n={a.n}", f"learner.micro_batch_size={a.micro_batch}",
        "algorithm.ssr.train_fraction=1.0", "algorithm.grpo.kl_coef=0.0",
    ])
    policy = PolicyModel(cfg, with_reference=False)
    proc = load_processor(model_dir, min_pixels=a.pixels, max_pixels=a.pixels)
    rows = synth_rows(cache)
    samples, tasks = synthetic_batch(policy.module, proc, rows, n_prompts=a.prompts, n=a.n, seed=0,
                                     response_len=(a.response_tokens, a.response_tokens), min_pixels=a.pixels, max_pixels=a.pixels)
    items, _ = build_items(samples, tasks, PromptCache(proc, min_pixels=a.pixels, max_pixels=a.pixels), replayed=[False] * len(samples))
    lcfg = LossConfig.from_grpo(cfg.algorithm.grpo)
    tokens = int(sum(it.num_tokens for it in items))
    train_step(policy, items, lcfg)  # warm-up (allocations, kernels)
    times = [float(train_step(policy, items, lcfg)["seconds"]) for _ in range(a.steps)]
    params = sum(p.numel() for p in policy.module.parameters())
    trainable = [(n, p) for n, p in policy.module.named_parameters() if p.requires_grad]
    non_embed = sum(p.numel() for n, p in trainable if "embed_tokens" not in n and "lm_head" not in n and not is_vision_param(n))
    sps = statistics.median(times)
    tps = tokens / sps
    peak = None
    if a.device != "cpu":
        import torch

        peak = peak_tflops(torch.cuda.get_device_name(), a.peak_tflops)
    return {
        "arch": a.arch, "params": int(params), "trainable_params": int(sum(p.numel() for _, p in trainable)),
        "steps": len(times), "tokens_per_step": tokens, "seconds_per_step": round(sps, 4), "tokens_per_s": round(tps, 1),
        "mfu": round(6 * non_embed * tps / (peak * 1e12), 4) if peak else None, "peak_tflops": peak,
        "peak_memory_gb": cuda_peak_gb(),
    }


def part_hf_engine(a: argparse.Namespace, model_dir: Path, cache: Path) -> dict[str, Any]:
    import asyncio

    from common.config import load_config
    from services.rollout.engines import GenerationRequest, SamplingParams, make_engine

    cfg = load_config(None, base_overrides(a, model_dir) + ["rollout.engine=hf", f"rollout.hf_max_batch_rows={a.n}"])
    row = synth_rows(cache)[0]

    async def go() -> dict[str, Any]:
        engine = make_engine(cfg)
        await engine.start()
        try:
            prompt = engine.encode_question(row.question, list(row.images), cfg.data.prompt_suffix)
            warm = SamplingParams(n=a.n, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=8, seed=1)
            await engine.generate([GenerationRequest("warm", prompt, warm)])
            params = SamplingParams(n=a.n, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=a.new_tokens, seed=2)
            t0 = time.perf_counter()
            [res] = await engine.generate([GenerationRequest("gen", prompt, params)])
            dt = time.perf_counter() - t0
        finally:
            await engine.close()
        toks = sum(len(c.token_ids) for c in res.completions)
        return {"arch": a.arch, "n": a.n, "new_tokens": a.new_tokens, "tokens": int(toks), "gen_seconds": round(dt, 3),
                "tokens_per_s": round(toks / dt, 1), "peak_memory_gb": cuda_peak_gb()}

    return asyncio.run(go())


def fingerprint(t: Any) -> list[int]:
    """Two integer sums over the tensor's bits (plain and position-weighted), chunked: equal
    fingerprints mean equal contents up to a vanishing chance."""
    import torch

    bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    flat = t.detach().reshape(-1).view(bits)
    s1 = s2 = 0
    step = 1 << 24
    for off in range(0, flat.numel(), step):
        c = flat[off: off + step].to(torch.int64)
        w = (torch.arange(off, off + c.numel(), device=c.device, dtype=torch.int64) % 65521) + 1
        s1 += int(c.sum().item())
        s2 += int((c * w).sum().item())
    return [s1, s2]


def role_ipc_receiver(cfg_path: str, out_dir: str) -> None:
    """The rollout process of ``ipc_sync``: receives rounds, copies into its own tensors (what an
    engine does), writes the fingerprints of what it holds to ``<out_dir>/v<version>.json``."""
    from common.config import config_from_json
    from weight_transport import make_receiver

    cfg = config_from_json(Path(cfg_path).read_text())
    held: dict[str, Any] = {}

    def on_weights(weights: Any, version: int) -> None:
        for name, t in dict(weights).items():
            if name not in held:
                held[name] = t.clone()
            else:
                held[name].copy_(t)
        if held and next(iter(held.values())).is_cuda:
            import torch

            torch.cuda.synchronize()
        fps = {n: fingerprint(t) for n, t in held.items()}
        tmp = Path(out_dir) / f".v{version}.json"
        tmp.write_text(json.dumps(fps))
        tmp.rename(Path(out_dir) / f"v{version}.json")

    rx = make_receiver(cfg, server_id="gpu-check-rollout", on_weights=on_weights, initial_version=0)
    rx.start(load_checkpoint=False)
    print("ready", flush=True)
    sys.stdin.readline()
    rx.stop()


def part_ipc_sync(a: argparse.Namespace, model_dir: Path, cache: Path) -> dict[str, Any]:
    import torch

    from common.config import config_to_json, load_config
    from weight_transport import TensorSpec, make_sender
    from weight_transport.protocol import load_checkpoint_weights

    on_gpu = a.device != "cpu"
    backend = "cuda_ipc" if on_gpu else "gloo"
    dev = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    weights = {n: t.to(dev) for n, t in load_checkpoint_weights(str(model_dir)).items()}
    specs = [TensorSpec.of(n, t) for n, t in weights.items()]
    nbytes = sum(s.nbytes for s in specs)
    ns = f"gpu-check-{uuid.uuid4().hex[:8]}"
    cfg = load_config(None, [
        f"redis.url={os.environ.get('REDIS_URL', 'redis://127.0.0.1:6379/0')}", f"redis.namespace={ns}",
        f"learner.weight_sync.backend={backend}", "learner.weight_sync.master_port=0", f"learner.weight_sync.bucket_mb={a.bucket_mb}",
        "learner.weight_sync.timeout_s=60", "learner.weight_sync.join_timeout_s=20", "learner.weight_sync.heartbeat_s=0.5",
        "learner.weight_sync.poll_s=0.05", f"learner.weight_sync.token={uuid.uuid4().hex}",
    ])
    work = Path(tempfile.mkdtemp(prefix="gpu-check-ipc-"))
    (work / "cfg.json").write_text(config_to_json(cfg, reveal_secrets=True))  # the receiver needs the token
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, __file__, "role-ipc-receiver", str(work / "cfg.json"), str(work)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    tx = make_sender(cfg)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the rollout process did not start (exit {proc.poll()})")
        deadline = time.monotonic() + 30
        while not tx.members() and time.monotonic() < deadline:
            time.sleep(0.05)
        reports = []
        for version in range(1, a.rounds + 1):
            rep = tx.sync(specs, iter(weights.values()), version=version, step=version)
            if not rep.ok or not rep.joined:
                raise RuntimeError(f"round {version}: ok={rep.ok} joined={rep.joined} error={rep.error}")
            reports.append(rep)
        fp_file = work / f"v{a.rounds}.json"
        deadline = time.monotonic() + 60
        while not fp_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        got = json.loads(fp_file.read_text()) if fp_file.exists() else {}
        verified = bool(got) and all(got.get(n) == fingerprint(t) for n, t in weights.items()) and set(got) == set(weights)
    finally:
        tx.close()
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)
        drop_namespace(ns)
    # the baseline: one raw device-to-device copy of the same bytes in this process
    src = torch.empty(nbytes, dtype=torch.uint8, device=dev).random_(0, 255)
    dst = torch.empty_like(src)
    copies = []
    for _ in range(3):
        if on_gpu:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        dst.copy_(src)
        if on_gpu:
            torch.cuda.synchronize()
        copies.append(time.perf_counter() - t0)
    transfer = statistics.median(r.transfer_s for r in reports)
    total = statistics.median(r.total_s for r in reports)
    raw = nbytes / min(copies) / 1e9
    gbps = nbytes / transfer / 1e9
    return {
        "backend": backend, "bytes": int(nbytes), "tensors": len(specs), "rounds": len(reports),
        "transfer_s": round(transfer, 4), "round_s": round(total, 4), "gb_per_s": round(gbps, 2),
        "round_gb_per_s": round(nbytes / total / 1e9, 2), "raw_copy_gb_per_s": round(raw, 2),
        "efficiency": round(gbps / raw, 3), "verified_equal": verified,
    }


SYSTEM_CONFIG = REPO / "configs" / "tiny-cpu.yaml"


def system_sets(a: argparse.Namespace, run_dir: Path, cache: Path) -> list[str]:
    """The overrides of ``configs/tiny-cpu.yaml`` for the system part: the device, the weight-sync
    backend, free ports, a private Redis namespace, the model and data in the check's cache."""
    on_gpu = a.device != "cpu"
    return [
        f"run.run_dir={run_dir}", f"learner.checkpoint_dir={run_dir / 'checkpoints'}",  # a fresh run, never a resume
        f"model.path={cache / 'models' / 'tiny-seed0'}",
        f"data.train_path={cache / 'sysdata' / 'train.parquet'}", f"data.eval_path={cache / 'sysdata' / 'eval.parquet'}",
        f"redis.url={os.environ.get('REDIS_URL', 'redis://127.0.0.1:6379/0')}",
        f"redis.namespace=gpu-check-sys-{uuid.uuid4().hex[:6]}", f"rollout.device={'cuda' if on_gpu else 'cpu'}",
        f"learner.weight_sync.backend={a.system_backend or ('cuda_ipc' if on_gpu else 'gloo')}",
        "learner.checkpoint_every=1000", "learner.eval_every=0",
        *(f"{svc}.port={free_port()}" for svc in ("verifier", "buffer", "rollout")),
    ]


def system_command(a: argparse.Namespace, sets: list[str]) -> list[str]:
    """``rethinker up`` on the tiny CPU config with ``sets``, for ``--system-steps`` steps."""
    cmd = [sys.executable, "-m", "rethinker.cli", "up", "-c", str(SYSTEM_CONFIG), "--steps", str(a.system_steps)]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def step_rate(metrics_jsonl: Path) -> tuple[int, float | None]:
    """(learner steps logged, steps per second between the first and the last train row)."""
    rows = []
    if metrics_jsonl.exists():
        for line in metrics_jsonl.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row.get("prefix") == "train":
                rows.append(row)
    if len(rows) < 2:
        return len(rows), None
    span = float(rows[-1]["time"]) - float(rows[0]["time"])
    steps = int(rows[-1]["step"]) - int(rows[0]["step"])
    return len(rows), (round(steps / span, 3) if span > 0 else None)


def part_system(a: argparse.Namespace, model_dir: Path, cache: Path) -> dict[str, Any]:
    from common.config import load_config
    from devtools.tiny_model import ensure_model
    from rethinker.demo import prepare_data

    run_dir = Path(tempfile.mkdtemp(prefix="gpu-check-sys-"))
    sets = system_sets(a, run_dir, cache)
    cfg = load_config(str(SYSTEM_CONFIG), sets)
    prepare_data(cfg)  # the synthetic task, as `rethinker demo` makes it
    ensure_model(cfg.model)  # the tiny model, built once into the cache
    env = dict(os.environ)
    if a.device != "cpu":
        env.pop("DS_ACCELERATOR", None)
    t0 = time.perf_counter()
    try:
        res = subprocess.run(system_command(a, sets), cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=max(10.0, a.part_timeout - 10))
    finally:
        drop_namespace(cfg.redis.namespace)
    wall = time.perf_counter() - t0
    done, rate = step_rate(run_dir / "learner_metrics.jsonl")
    out = {"steps": a.system_steps, "steps_done": done, "steps_per_s": rate, "wall_s": round(wall, 1),
           "backend": a.system_backend or ("cuda_ipc" if a.device != "cpu" else "gloo")}
    if res.returncode != 0 or done < a.system_steps:
        raise RuntimeError(f"rethinker up exited {res.returncode} after {done} steps: {(res.stderr or res.stdout)[-600:]}")
    shutil.rmtree(run_dir, ignore_errors=True)
    return out


PART_FUNCS = {"learner": part_learner, "hf_engine": part_hf_engine, "ipc_sync": part_ipc_sync, "system": part_system}


def cmd_part(a: argparse.Namespace) -> int:
    """One part in this process; prints its result dict as the last stdout line."""
    t0 = time.perf_counter()
    try:
        if a.device != "cpu":
            os.environ.pop("DS_ACCELERATOR", None)
        else:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        out = PART_FUNCS[a.part](a, Path(a.model_dir), Path(a.cache))
        out = {"ok": True, "error": "", **out}
    except Exception as exc:  # noqa: BLE001 - reported in the JSON line
        import traceback

        traceback.print_exc()
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:800]}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print("\n" + json.dumps(out), flush=True)
    return 0


# --------------------------------------------------------------------------- run (the parent)


def budgets(parts: list[str], budget_s: float) -> dict[str, float]:
    share = sum(PART_SHARE[p] for p in parts)
    return {p: budget_s * PART_SHARE[p] / share for p in parts}


def empty_part(error: str) -> dict[str, Any]:
    return {"ok": False, "seconds": 0.0, "error": error}


def run_part(a: argparse.Namespace, part: str, model_dir: Path, timeout: float) -> dict[str, Any]:
    """One part in a child process (its own session: on timeout the whole process group is killed,
    helpers included); its result is the last JSON line of its stdout."""
    import signal

    argv = [sys.executable, __file__, "part", part, "--model-dir", str(model_dir), "--part-timeout", str(timeout),
            *forwarded_args(a)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    log = Path(a.cache) / f"{part}.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=fh, text=True, env=env, cwd=REPO, start_new_session=True)
        try:
            stdout, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return {**empty_part(f"timed out after {timeout:.0f}s (log: {log})"), "seconds": round(timeout, 1)}
    lines = [ln for ln in (stdout or "").splitlines() if ln.strip().startswith("{")]
    if not lines:
        tail = log.read_text(errors="replace")[-600:] if log.exists() else ""
        return empty_part(f"exit {proc.returncode}, no result: {tail}")
    return json.loads(lines[-1])


def forwarded_args(a: argparse.Namespace) -> list[str]:
    out = ["--device", a.device, "--arch", a.arch, "--cache", str(a.cache), "--prompts", str(a.prompts), "--n", str(a.n),
           "--response-tokens", str(a.response_tokens), "--micro-batch", str(a.micro_batch), "--steps", str(a.steps),
           "--new-tokens", str(a.new_tokens), "--pixels", str(a.pixels), "--rounds", str(a.rounds),
           "--bucket-mb", str(a.bucket_mb), "--system-steps", str(a.system_steps),
           "--freeze-vision" if a.freeze_vision else "--no-freeze-vision"]
    if a.peak_tflops:
        out += ["--peak-tflops", str(a.peak_tflops)]
    if a.system_backend:
        out += ["--system-backend", a.system_backend]
    return out


def versions() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("torch", "transformers", "deepspeed"):
        out[name] = installed_version(name)
    return out


def cmd_run(a: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    parts = parse_parts(a.parts)
    a.cache = Path(a.cache).resolve()
    a.cache.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"check": "gpu_check", "schema": SCHEMA_VERSION,
                              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": os.uname().nodename,
                              "device": a.device, "device_name": None, **versions(), "budget_s": a.budget_s, "parts": parts}
    try:
        import torch

        if a.device != "cpu":
            if not torch.cuda.is_available():
                raise RuntimeError("--device cuda but torch.cuda.is_available() is False")
            result["device_name"] = torch.cuda.get_device_name()
        else:
            result["device_name"] = "cpu"
        model_dir = build_model_folder(a.cache / f"model-{a.arch}", a.arch, "cuda" if a.device != "cpu" else "cpu")
        if a.device != "cpu":
            torch.cuda.empty_cache()
        prep_error = ""
    except Exception as exc:  # noqa: BLE001
        model_dir, prep_error = a.cache / "none", f"model preparation: {type(exc).__name__}: {exc}"[:800]
    for p in PARTS:
        result[p] = empty_part("not run (not in --parts)")
    left_total = a.budget_s - (time.perf_counter() - t_start)
    plan = budgets(parts, max(0.0, left_total))
    for p in parts:
        left = a.budget_s - (time.perf_counter() - t_start)
        if prep_error:
            result[p] = empty_part(prep_error)
            continue
        if left < 5:
            result[p] = empty_part("no time left in the budget")
            continue
        later = sum(plan[q] for q in parts[parts.index(p) + 1:])  # what the next parts are promised
        result[p] = run_part(a, p, model_dir, max(5.0, left - later))
    result["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    result["ok"] = all(result[p]["ok"] for p in parts)
    line = json.dumps({k: result.get(k) for k in SCHEMA_KEYS[""]})
    if a.out:
        Path(a.out).write_text(line + "\n")
    print(line, flush=True)
    return 0 if result["ok"] else 1


def parse_parts(raw: str) -> list[str]:
    parts = [p.strip() for p in raw.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise SystemExit(f"gpu_check: --parts: unknown {bad or raw!r}; choose from {','.join(PARTS)}")
    return [p for p in PARTS if p in parts]


def check_schema(line: dict[str, Any]) -> list[str]:
    """What is wrong with a result line (empty: every key of ``SCHEMA_KEYS`` is there; a failed part
    needs only ``ok``, ``seconds`` and ``error``)."""
    problems = [f"missing {k}" for k in SCHEMA_KEYS[""] if k not in line]
    for part in PARTS:
        sub = line.get(part)
        if not isinstance(sub, dict):
            problems.append(f"{part}: not an object")
            continue
        need = SCHEMA_KEYS[part] if sub.get("ok") else ("ok", "seconds", "error")
        problems += [f"{part}: missing {k}" for k in need if k not in sub]
        if sub.get("ok") is False and not sub.get("error"):
            problems.append(f"{part}: failed without an error")
    return problems


# --------------------------------------------------------------------------- arguments


def _positive(kind: type, name: str):
    def conv(raw: str):
        try:
            v = kind(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {raw!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be > 0, got {raw!r}")
        return v

    return conv


def _budget(raw: str) -> float:
    v = _positive(float, "--budget-s")(raw)
    if v > MAX_BUDGET_S:
        raise argparse.ArgumentTypeError(f"--budget-s must be <= {MAX_BUDGET_S:.0f} (the check's fixed budget), got {raw}")
    return v


def add_check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--arch", choices=("3b", "tiny"), default=None, help="model architecture (default: 3b on cuda, tiny on cpu)")
    p.add_argument("--cache", default=str(REPO / ".cache" / "gpu-check"), help="model folder, data, part logs")
    p.add_argument("--prompts", type=_positive(int, "--prompts"), default=4, help="learner: image prompts per step")
    p.add_argument("--n", type=_positive(int, "--n"), default=8, help="responses per prompt (learner) / samples (hf engine)")
    p.add_argument("--response-tokens", type=_positive(int, "--response-tokens"), default=256)
    p.add_argument("--micro-batch", type=_positive(int, "--micro-batch"), default=4)
    p.add_argument("--steps", type=_positive(int, "--steps"), default=2, help="learner: timed steps after one warm-up step")
    p.add_argument("--new-tokens", type=_positive(int, "--new-tokens"), default=256, help="hf engine: tokens per sample")
    p.add_argument("--pixels", type=_positive(int, "--pixels"), default=448 * 448, help="image size in pixels (min = max)")
    p.add_argument("--rounds", type=_positive(int, "--rounds"), default=3, help="ipc_sync: timed rounds")
    p.add_argument("--bucket-mb", type=_positive(float, "--bucket-mb"), default=256.0)
    p.add_argument("--system-steps", type=_positive(int, "--system-steps"), default=20)
    p.add_argument("--system-backend", choices=("gloo", "nccl", "cuda_ipc"), default=None,
                   help="weight sync of the system run (default: cuda_ipc on cuda, gloo on cpu)")
    p.add_argument("--peak-tflops", type=_positive(float, "--peak-tflops"), default=None, help="dense bf16 peak for the MFU")
    p.add_argument("--freeze-vision", action=argparse.BooleanOptionalAction, default=True,
                   help="learner: freeze the vision tower (default; the 3B model's optimizer state fits one 80 GB GPU)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wheels", help="download the wheels the GPU image lacks (here)")
    w.add_argument("--dest", default=str(REPO / ".gpu-wheels"))
    w.add_argument("--max-mb", type=_positive(float, "--max-mb"), default=60.0)
    w.add_argument("--no-redis", action="store_true", help="do not carry redis-server")
    i = sub.add_parser("install", help="install the missing ones from the folder (there)")
    i.add_argument("--wheels", default=str(REPO / ".gpu-wheels"))
    i.add_argument("--site", default=str(REPO / ".gpu-site"))
    r = sub.add_parser("run", help="the check; prints one JSON line")
    add_check_args(r)
    r.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    r.add_argument("--budget-s", type=_budget, default=MAX_BUDGET_S, help=f"total time budget (<= {MAX_BUDGET_S:.0f})")
    r.add_argument("--out", default=None, help="also write the JSON line here")
    pt = sub.add_parser("part", help=argparse.SUPPRESS)
    pt.add_argument("part", choices=PARTS)
    pt.add_argument("--model-dir", required=True)
    pt.add_argument("--part-timeout", type=float, default=MAX_BUDGET_S)
    add_check_args(pt)
    rr = sub.add_parser("role-ipc-receiver", help=argparse.SUPPRESS)
    rr.add_argument("cfg_path")
    rr.add_argument("out_dir")
    return ap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    a = build_parser().parse_args(argv)
    if getattr(a, "device", None) is not None and a.arch is None:
        a.arch = "3b" if a.device == "cuda" else "tiny"
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.cmd == "wheels":
        return cmd_wheels(a)
    if a.cmd == "install":
        return cmd_install(a)
    if a.cmd == "part":
        return cmd_part(a)
    if a.cmd == "role-ipc-receiver":
        role_ipc_receiver(a.cfg_path, a.out_dir)
        return 0
    return cmd_run(a)


if __name__ == "__main__":
    sys.exit(main())
