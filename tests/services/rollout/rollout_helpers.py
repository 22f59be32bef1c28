"""Helpers of the rollout tests (imported by conftest.py and the test modules): the fine-tuned tiny
model recipe, configs on private Redis namespaces, services run as subprocesses.

``sft_model_dir``: the tiny model (seed 0) trained for a few seconds on one fixed answer so that it
answers "There are 3 shapes. The answer is \\boxed{3}." and, after any rethinking trigger, continues
" Let me recount: one, two, three. Yes, the answer is \\boxed{3}."; with it the Forced Rethinking
paths (kept / wrong answer / too long) are reachable with a real model and a real verifier.
Built once per code version into the cache folder (``tests/conftest.py: cache_root``).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any


from common.config import PROMPT_SUFFIX, RETHINK_TRIGGERS, RethinkerConfig, load_config

REPO = Path(__file__).resolve().parents[3]


def cache_root() -> Path:
    """Same folder as tests/conftest.py's session cache."""
    return Path(os.environ.get("RETHINKER_CACHE_DIR") or REPO / ".cache")


Y1 = "There are 3 shapes. The answer is \\boxed{3}."
Y2 = " Let me recount: one, two, three. Yes, the answer is \\boxed{3}."
QUESTIONS = ("<image>How many shapes are there?", "<image>Count the shapes.")
SFT_STEPS = 200


def png(color: tuple[int, int, int], size: tuple[int, int] = (56, 56)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_sft(src: Path, out: Path) -> None:
    import torch

    from common.model_loading import build_prompt_inputs, load_model, load_processor, teacher_forced_logprobs_batch

    torch.manual_seed(0)
    model = load_model(src)
    model.train()
    proc = load_processor(src, min_pixels=3136, max_pixels=12544)
    tok = proc.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    prompts = [build_prompt_inputs(proc, q, [png(c)], PROMPT_SUFFIX, 3136, 12544) for q, c in zip(QUESTIONS, [(255, 0, 0), (0, 0, 255)])]
    y1 = tok.encode(Y1, add_special_tokens=False)
    y2 = tok.encode(Y2, add_special_tokens=False)
    items, masks = [], []
    for p in prompts:
        items.append((p, y1 + [eos]))
        masks.append(torch.ones(len(y1) + 1))
        for trig in RETHINK_TRIGGERS:
            t = tok.encode(trig, add_special_tokens=False)
            ids = y1 + t + y2 + [eos]
            m = torch.zeros(len(ids))
            m[len(y1) + len(t) :] = 1  # learn the continuation only
            items.append((p, ids))
            masks.append(m)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(SFT_STEPS):
        lps = teacher_forced_logprobs_batch(model, items)
        loss = sum(-(lp * m).sum() / m.sum() for lp, m in zip(lps, masks)) / len(items)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    proc.save_pretrained(tmp)
    shutil.copy(src / "generation_config.json", tmp / "generation_config.json")
    (tmp / "sft.json").write_text(json.dumps({"loss": loss.item(), "steps": SFT_STEPS}))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def make_cfg(redis_url: str, model_dir: Path, *overrides: str) -> RethinkerConfig:
    ns = f"test-rollout-{uuid.uuid4().hex[:8]}"
    return load_config(
        str(REPO / "configs" / "tiny-cpu.yaml"),
        [
            f"redis.url={redis_url}",
            f"redis.namespace={ns}",
            f"model.path={model_dir}",
            "model.build_tiny_if_missing=false",
            "algorithm.sampling.n=4",
            "algorithm.sampling.max_new_tokens=24",
            "rollout.heartbeat_s=0.5",
            "rollout.claim_block_ms=200",
            "learner.weight_sync.master_port=0",
            "learner.weight_sync.bucket_mb=0.05",
            "learner.weight_sync.timeout_s=10",
            "learner.weight_sync.join_timeout_s=5",
            "learner.weight_sync.heartbeat_s=0.5",
            "learner.weight_sync.member_ttl_s=5",
            "learner.weight_sync.poll_s=0.05",
            *overrides,
        ],
    )


def drop_namespace(redis_url: str, ns: str) -> None:
    import redis

    r = redis.Redis.from_url(redis_url)
    for k in r.scan_iter(f"{ns}:*"):
        r.delete(k)
    r.close()


# --------------------------------------------------------------------------- subprocesses


def child_env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


class ServiceProc:
    """A service process (``rethinker serve rollout`` / ``python -m services.verifier.main``); stopped by pid."""

    MODULES = {"verifier": ["-m", "services.verifier.main"], "rollout": ["-m", "rethinker.cli", "serve", "rollout"]}

    def __init__(self, name: str, cfg: RethinkerConfig, workdir: Path, *overrides: str, tag: str = "") -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        tag = tag or name
        self.cfg_path = workdir / f"{tag}.yaml"
        import yaml

        self.cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
        self.log_path = workdir / f"{tag}.log"
        self._log = open(self.log_path, "wb")
        args = [sys.executable, *self.MODULES[name], "--config", str(self.cfg_path)]
        for o in overrides:
            args += ["--set", o]
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=child_env(), cwd=str(REPO))

    def wait_http(self, url: str, timeout_s: float = 90.0, path: str = "/healthz") -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(url + path, timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{url}{path} not ready in {timeout_s}s:\n{self.tail()}")

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def terminate(self, timeout_s: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def kill9(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()




async def start_http(app: Any, port: int) -> tuple[Any, Any]:
    """Serve ``app`` with uvicorn on 127.0.0.1:port inside the running loop; returns (server, task)."""
    import asyncio

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    server.capture_signals = lambda: __import__("contextlib").nullcontext()  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    return server, task


async def stop_http(server: Any, task: Any) -> None:
    server.should_exit = True
    await task
