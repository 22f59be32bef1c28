"""The DeepSpeed policy model (learner/policy_model.py) on CPU (single rank, ZeRO-2): the schedule, loss going down on a fixed batch,
the frozen vision tower, and the HF export."""

from __future__ import annotations

import math

import pytest
import torch

from learner.policy_model import grad_accum_steps, is_vision_param, lr_factor, samples_per_step


def test_lr_schedule_warmup_then_cosine_to_min_ratio():
    f = lambda s: lr_factor(s, total_steps=100, warmup_ratio=0.03, min_lr_ratio=0.5)  # noqa: E731
    assert [round(f(s), 6) for s in range(3)] == [round(1 / 3, 6), round(2 / 3, 6), 1.0]
    assert f(3) == pytest.approx(1.0)
    mid = 3 + (100 - 3) / 2
    assert f(int(mid)) == pytest.approx(0.5 + 0.25 * (1 + math.cos(math.pi * (int(mid) - 3) / 97)))
    assert f(100) == pytest.approx(0.5) and f(1000) == pytest.approx(0.5)
    assert lr_factor(0, total_steps=10, warmup_ratio=0.0, min_lr_ratio=0.1) == pytest.approx(1.0)


def test_batch_geometry_is_checked(make_cfg):
    from common.config import ConfigError

    cfg = make_cfg()
    assert samples_per_step(cfg) == 8 and grad_accum_steps(cfg, 1) == 2 and grad_accum_steps(cfg, 2) == 1
    # the selecting modes train train_fraction (0.5) of the rollout volume, plain GRPO all of it
    assert samples_per_step(make_cfg("algorithm.ssr.mode=filter")) == 8
    assert samples_per_step(make_cfg("algorithm.ssr.mode=grpo")) == 16
    with pytest.raises(ConfigError, match="micro_batch_size"):
        grad_accum_steps(make_cfg("learner.micro_batch_size=3"), 1)


def test_zero2_steps_reduce_the_loss_and_respect_a_frozen_vision_tower(make_cfg, synth_rows, tmp_path):
    from common.model_loading import load_model, load_processor
    from learner.batching import PromptCache, build_items
    from learner.checkpoint import export_hf
    from learner.policy_model import PolicyModel
    from learner.loss import LossConfig
    from learner.step import train_step
    from learner.synthetic import synthetic_batch

    cfg = make_cfg("learner.freeze_vision=true", "learner.total_steps=20", "learner.warmup_ratio=0.1")
    policy = PolicyModel(cfg)
    assert policy.world == 1 and policy.grad_accum == 2
    before = {n: p.detach().clone() for n, p in policy.module.named_parameters()}
    proc = load_processor(policy.model_path, min_pixels=3136, max_pixels=12544)
    samples, tasks = synthetic_batch(policy.module, proc, synth_rows, n_prompts=1, n=8, seed=0, min_pixels=3136, max_pixels=12544)
    # a replayed (stored log-prob) batch: the clipped surrogate really moves as the policy changes
    items, errors = build_items(samples, tasks, PromptCache(proc, min_pixels=3136, max_pixels=12544), replayed=[True] * 8)
    assert not errors
    lcfg = LossConfig.from_grpo(cfg.algorithm.grpo)
    stats = [train_step(policy, items, lcfg) for _ in range(6)]
    losses = [s["loss"] for s in stats]
    assert losses[-1] < losses[0] - 0.05, losses
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 4, losses
    assert stats[0]["approx_kl"] == pytest.approx(0.0, abs=1e-6)  # behaviour = current at the start
    assert stats[-1]["approx_kl"] > 0 and stats[-1]["clip_frac"] > 0
    assert all(math.isfinite(s["grad_norm"]) and s["grad_norm"] > 0 for s in stats)
    # warm-up over ceil(0.1 * 20) = 2 steps, then cosine: the lr after step k is lr * factor(k)
    assert [round(s["lr"], 8) for s in stats] == [
        round(1e-3 * lr_factor(k, total_steps=20, warmup_ratio=0.1, min_lr_ratio=0.5), 8) for k in range(1, 7)
    ]
    assert policy.global_steps == 6
    after = dict(policy.module.named_parameters())
    vision = [n for n in before if is_vision_param(n)]
    assert vision and all(torch.equal(before[n], after[n]) for n in vision)
    text = [n for n in before if not is_vision_param(n)]
    assert sum(not torch.equal(before[n], after[n].detach()) for n in text) >= len(text) - 1
    # the export is a transformers model folder with exactly these weights
    out = export_hf(policy, tmp_path / "hf", version=6, step=6)
    loaded = load_model(out)
    for n, p in loaded.named_parameters():
        assert torch.equal(p, after[n].detach()), n
    assert (out / "tokenizer.json").exists() and (out / "policy_version.json").exists()


def test_bf16_engine_with_a_reference_model_reports_the_kl_term(make_cfg, synth_rows):
    from common.model_loading import load_processor
    from learner.batching import PromptCache, build_items
    from learner.policy_model import PolicyModel
    from learner.loss import LossConfig
    from learner.step import train_step
    from learner.synthetic import synthetic_batch

    cfg = make_cfg("learner.precision=bf16", "algorithm.grpo.kl_coef=0.1", "learner.zero_stage=1")
    policy = PolicyModel(cfg)
    assert policy.reference is not None and next(policy.module.parameters()).dtype == torch.bfloat16
    proc = load_processor(policy.model_path, min_pixels=3136, max_pixels=12544)
    samples, tasks = synthetic_batch(policy.reference, proc, synth_rows, n_prompts=1, n=8, seed=4, min_pixels=3136, max_pixels=12544)
    items, _ = build_items(samples, tasks, PromptCache(proc, min_pixels=3136, max_pixels=12544))
    lcfg = LossConfig.from_grpo(cfg.algorithm.grpo)
    s1 = train_step(policy, items, lcfg)
    s2 = train_step(policy, items, lcfg)
    s3 = train_step(policy, items, lcfg)
    assert s1["kl_ref"] < 1e-2  # policy == reference up to bf16 rounding
    assert s3["kl_ref"] > s1["kl_ref"] and math.isfinite(s3["loss"])
    assert s2["loss"] != s1["loss"]
    # the manifest reports the trained (bf16) dtype and full shapes: what rollout servers receive
    specs = policy.manifest()
    assert {s.dtype for s in specs} == {"bfloat16"} and len(specs) == len(list(policy.module.parameters()))


def test_a_lone_process_can_initialise_again_after_its_group_was_destroyed():
    """A process without a launcher makes itself a world of one; after its process group is destroyed
    (between tests, say) a second call rendezvouses again instead of failing for want of the
    master address it removed after the first rendezvous."""
    import os
    import subprocess
    import sys

    code = (
        "import torch.distributed as dist\n"
        "from learner.policy_model import init_distributed\n"
        "print(init_distributed())\n"
        "dist.destroy_process_group()\n"
        "print(init_distributed())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["DS_ACCELERATOR"] = "cpu"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert [line for line in out.stdout.splitlines() if line.startswith("(")] == ["(0, 1)", "(0, 1)"]
