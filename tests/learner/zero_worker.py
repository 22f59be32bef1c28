"""Worker of the multi-rank tests (not a test module): trains a fixed batch for a few steps under the
given config (one rank, or several under torchrun), then writes the full gathered parameters, an HF
export and optionally broadcasts them through WeightSync.

Usage: [torchrun --nproc_per_node N] zero_worker.py CONFIG_JSON OUT_DIR STEPS [--sync VERSION]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DS_ACCELERATOR", "cpu")


def main() -> None:
    import json

    from safetensors.torch import save_file

    from common.config import config_from_json
    from common.data.loader import load_rows
    from common.model_loading import load_model, load_processor
    from learner.batching import PromptCache, build_items
    from learner.checkpoint import export_hf
    from learner.policy_model import PolicyModel
    from learner.loss import LossConfig
    from learner.step import train_step
    from learner.synthetic import synthetic_batch
    from learner.sync import WeightSync

    cfg = config_from_json(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    steps = int(sys.argv[3])
    sync_version = int(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[4] == "--sync" else None
    pix = dict(min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels)
    proc = load_processor(cfg.model.path, **pix)
    rows = load_rows(cfg.data.train_path)
    plain = load_model(cfg.model.path)
    samples, tasks = synthetic_batch(plain, proc, rows, n_prompts=1, n=8, seed=3, **pix)
    del plain
    items, errors = build_items(samples, tasks, PromptCache(proc, **pix), replayed=[i % 2 == 0 for i in range(8)])
    assert not errors, errors
    policy = PolicyModel(cfg)
    losses = [train_step(policy, items, LossConfig.from_grpo(cfg.algorithm.grpo))["loss"] for _ in range(steps)]
    sd = policy.gathered_state_dict()
    hf = export_hf(policy, out / "hf", version=steps, step=steps)
    if sync_version is not None:
        ws = WeightSync(cfg, policy)
        rep = ws.sync(sync_version, steps)
        if policy.rank == 0:
            (out / "sync.json").write_text(json.dumps(rep))
    if policy.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_file(sd, str(out / "params.safetensors"))
        (out / "losses.json").write_text(json.dumps({"losses": losses, "world": policy.world, "hf": str(hf)}))


if __name__ == "__main__":
    main()
