"""Learner checkpoints (resume after kill -9) and Hugging Face exports (late joiners, evaluation).

Layout under ``learner.checkpoint_dir``::

    LATEST                      tag of the newest COMPLETE checkpoint (written last, atomically)
    step-00000050/              DeepSpeed checkpoint (model, optimizer, scheduler; every rank's shard)
    step-00000050/learner.json  step, version, data cursor (readable copy of the client state)
    step-00000050/hf/           safetensors + config + tokenizer/processor: loadable by transformers
                                (``from_pretrained``), names = ``model.named_parameters()``

Client state (inside the DeepSpeed checkpoint): step, policy version, feeder state, the learner's
RNG states (python, numpy, torch), and the buffer's ``stored`` counter at the last step.  A checkpoint
without ``LATEST`` pointing at it (killed while saving) is ignored and removed by the next save.
Only ``keep_checkpoints`` complete checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from common.logging import get_logger

if TYPE_CHECKING:
    from common.config import RethinkerConfig
    from learner.policy_model import PolicyModel

log = get_logger("learner.checkpoint")

LATEST = "LATEST"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5")
SKIP_FILES = {"rethinker_build.json", "model.safetensors.index.json", "pytorch_model.bin.index.json"}
MAX_SHARD_BYTES = 4 * 1024**3


def tag_of(step: int) -> str:
    return f"step-{step:08d}"


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    if "python" in state:
        py = state["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
    if "numpy" in state:
        a = state["numpy"]
        np.random.set_state((a[0], np.asarray(a[1], dtype=np.uint32), a[2], a[3], a[4]))
    if "torch" in state:
        torch.set_rng_state(state["torch"])


def _copy_model_files(source: str | None, dest: Path, module: torch.nn.Module) -> None:
    """Config, generation config, tokenizer and processor files next to the weights."""
    module.config.save_pretrained(dest)
    gen = getattr(module, "generation_config", None)
    if gen is not None:
        try:
            gen.save_pretrained(dest)
        except Exception:  # noqa: BLE001 - optional
            pass
    if source and Path(source).is_dir():
        for f in Path(source).iterdir():
            if f.is_file() and f.name not in SKIP_FILES and not f.name.endswith(WEIGHT_SUFFIXES) and f.name != "config.json":
                if not (dest / f.name).exists() or f.name != "generation_config.json":
                    shutil.copy2(f, dest / f.name)
    elif source:
        try:
            from transformers import AutoProcessor

            AutoProcessor.from_pretrained(source).save_pretrained(dest)
        except Exception as exc:  # noqa: BLE001
            log.warning("processor_not_exported", source=source, error=str(exc))


def export_hf(policy: PolicyModel, out_dir: str | os.PathLike[str], *, version: int, step: int, max_shard_bytes: int = MAX_SHARD_BYTES) -> Path | None:
    """Write the full weights as a transformers model folder.  Collective (every rank must call);
    rank 0 writes.  Returns the folder on rank 0, None elsewhere."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    specs = policy.manifest()
    # shard plan (deterministic)
    shards: list[list[int]] = [[]]
    size = 0
    for i, s in enumerate(specs):
        if shards[-1] and size + s.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += s.nbytes
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
    shard_of = {i: k for k, idx in enumerate(shards) for i in idx}
    tmp = out.with_name(out.name + ".tmp")
    if policy.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    current: dict[str, torch.Tensor] = {}
    cur_k = 0
    for i, t in enumerate(policy.full_parameters()):
        if policy.rank != 0:
            continue
        k = shard_of[i]
        if k != cur_k:
            save_file(current, str(tmp / names[cur_k]), metadata={"format": "pt"})
            current, cur_k = {}, k
        current[specs[i].name] = t.detach().to("cpu", copy=True).contiguous()
    if policy.rank != 0:
        return None
    save_file(current, str(tmp / names[cur_k]), metadata={"format": "pt"})
    if n > 1:
        index = {
            "metadata": {"total_size": sum(s.nbytes for s in specs)},
            "weight_map": {specs[i].name: names[shard_of[i]] for i in range(len(specs))},
        }
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    _copy_model_files(policy.model_path, tmp, policy.module)
    (tmp / "policy_version.json").write_text(json.dumps({"version": version, "step": step, "time": time.time()}))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


class CheckpointManager:
    def __init__(self, cfg: RethinkerConfig, policy: PolicyModel) -> None:
        self.cfg = cfg
        self.policy = policy
        self.dir = Path(cfg.learner.checkpoint_dir)
        self.keep = max(1, cfg.learner.keep_checkpoints)

    def latest_tag(self) -> str | None:
        f = self.dir / LATEST
        if not f.is_file():
            return None
        tag = f.read_text().strip()
        return tag if (self.dir / tag).is_dir() else None

    def hf_dir(self, tag: str) -> Path:
        return self.dir / tag / "hf"

    def save(self, *, step: int, version: int, client_state: dict[str, Any]) -> Path:
        """Collective.  Returns the HF export folder of this checkpoint."""
        import torch.distributed as dist

        t0 = time.perf_counter()
        tag = tag_of(step)
        state = dict(client_state, step=step, version=version, rng=rng_state(), saved_at=time.time())
        if self.policy.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(self.dir / tag, ignore_errors=True)  # a half-written one from a killed run
        if dist.is_initialized():
            dist.barrier()
        self.policy.ds_model.save_checkpoint(str(self.dir), tag=tag, client_state=state, save_latest=False)
        hf = export_hf(self.policy, self.hf_dir(tag), version=version, step=step)
        if self.policy.rank == 0:
            readable = {k: v for k, v in state.items() if k != "rng"}
            (self.dir / tag / "learner.json").write_text(json.dumps(readable, indent=1, default=str))
            tmp = self.dir / (LATEST + ".tmp")
            tmp.write_text(tag)
            os.replace(tmp, self.dir / LATEST)
            self._prune(keep_tag=tag)
        if dist.is_initialized():
            dist.barrier()
        log.info("checkpoint_saved", tag=tag, step=step, version=version, seconds=round(time.perf_counter() - t0, 3))
        return hf if hf is not None else self.hf_dir(tag)

    def _prune(self, keep_tag: str) -> None:
        tags = sorted(p.name for p in self.dir.iterdir() if p.is_dir() and p.name.startswith("step-"))
        complete = [t for t in tags if t <= keep_tag]
        for t in complete[: max(0, len(complete) - self.keep)]:
            shutil.rmtree(self.dir / t, ignore_errors=True)
        for t in tags:
            if t > keep_tag:  # leftovers of a run that was rolled back
                shutil.rmtree(self.dir / t, ignore_errors=True)

    def load(self) -> dict[str, Any] | None:
        """Collective.  Restores model/optimizer/scheduler and RNG; returns the client state."""
        tag = self.latest_tag()
        if tag is None:
            return None
        path, state = self.policy.ds_model.load_checkpoint(
            str(self.dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise RuntimeError(f"learner.checkpoint_dir: checkpoint {tag} in {self.dir} could not be loaded")
        state = state or {}
        if "rng" in state:
            set_rng_state(state["rng"])
        state["tag"] = tag
        state["hf_dir"] = str(self.hf_dir(tag))
        log.info("checkpoint_loaded", tag=tag, step=state.get("step"), version=state.get("version"))
        return state

