"""Format warm-up: a few NLL steps on the policy make the chosen completions likelier, and the result
is a model folder that transformers (and the RL learner) load."""

from __future__ import annotations

import random

import torch


def test_sft_warmup_lowers_the_completion_nll_and_exports(make_cfg, synth_rows, tmp_path):
    from common.model_loading import load_model, load_processor
    from learner.batching import forward_logprobs, pad_rows
    from learner.sft import format_only_completion, sft_items, warmup

    cfg = make_cfg("learner.lr=3e-3")
    rows = synth_rows[:8]
    out = warmup(cfg, steps=6, out_dir=tmp_path / "warm", rows=rows)
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    proc = load_processor(out, min_pixels=3136, max_pixels=12544)
    items = sft_items(rows, proc, cfg, completion_fn=format_only_completion, seed=cfg.run.seed)
    assert proc.tokenizer.decode(items[0].completion[:-1].tolist()) == format_only_completion(rows[0], random.Random(cfg.run.seed))

    def nll(model):
        with torch.no_grad():
            lp = forward_logprobs(model, items)
        mask = pad_rows([torch.ones(it.num_tokens) for it in items])
        return float((-lp * mask).sum() / mask.sum())

    before, after = nll(load_model(cfg.model.path)), nll(load_model(out))
    assert after < before - 0.5, (before, after)
