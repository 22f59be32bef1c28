"""Model loading, prompt inputs and teacher-forced log-probs on the tiny Qwen2.5-VL.

The central check: the learner's teacher-forced log-probs equal generate()'s (raw logits after
log_softmax, temperature 1) within 1e-5, for greedy and sampled decoding with an image.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from devtools.synth_data import make_rows
from common.model_loading import (
    ModelLoadError,
    build_prompt_inputs,
    extend_prompt_inputs,
    load_model,
    load_processor,
    pixel_limits,
    special_token_ids,
    teacher_forced_logprobs,
    teacher_forced_logprobs_batch,
)

MIN_PIXELS, MAX_PIXELS = 28 * 28 * 4, 28 * 28 * 16
SUFFIX = "\n\nPlease reason step by step, and put your final answer within \\boxed{}."


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model(tiny_model_dir, dtype="float32")


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    return load_processor(tiny_model_dir, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)


@pytest.fixture(scope="module")
def rows():
    return make_rows(6, seed=3)


def _inputs(processor, row, suffix=SUFFIX):
    return build_prompt_inputs(processor, row["question"], [row["image"][0]["bytes"]], suffix, MIN_PIXELS, MAX_PIXELS)


def _generate(model, processor, inputs, *, do_sample, max_new_tokens=32, seed=0, **kw):
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            output_logits=True,
            return_dict_in_generate=True,
            suppress_tokens=special_token_ids(processor),
            **kw,
        )
    completion = out.sequences[0, inputs["input_ids"].shape[1] :]
    sampler = torch.stack([torch.log_softmax(l[0].float(), -1)[t] for l, t in zip(out.logits, completion)])
    return completion, sampler


@pytest.mark.parametrize(
    "do_sample,kw",
    [(False, {}), (True, {"temperature": 1.0}), (True, {"temperature": 1.0, "top_k": 40, "top_p": 0.95})],
    ids=["greedy", "sampled", "sampled-topk-topp"],
)
def test_teacher_forced_logprobs_match_generate(model, processor, rows, do_sample, kw):
    inputs = _inputs(processor, rows[0])
    assert inputs["pixel_values"] is not None and int(inputs["mm_token_type_ids"].sum()) == 4
    for seed in (0, 1):
        completion, sampler = _generate(model, processor, inputs, do_sample=do_sample, seed=seed, **kw)
        assert completion.numel() >= 8
        learner = teacher_forced_logprobs(model, inputs, completion)
        assert learner.shape == sampler.shape and learner.dtype == torch.float32
        assert torch.allclose(learner, sampler, atol=1e-5, rtol=0), (learner - sampler).abs().max()
        if not do_sample:
            break
    if do_sample:  # sampling really sampled: two seeds, two different completions
        c0, _ = _generate(model, processor, inputs, do_sample=True, seed=0, **kw)
        c1, _ = _generate(model, processor, inputs, do_sample=True, seed=1, **kw)
        assert not torch.equal(c0, c1)


def test_batched_right_padded_equals_single(model, processor, rows):
    items = []
    for k, row in enumerate(rows[:3]):
        inputs = _inputs(processor, row, suffix="" if k == 1 else SUFFIX)  # different prompt lengths
        completion, sampler = _generate(model, processor, inputs, do_sample=True, seed=k, max_new_tokens=8 + 6 * k)
        items.append((inputs, completion, sampler))
    text_only = build_prompt_inputs(processor, "Say hi.", [], "")
    completion, sampler = _generate(model, processor, text_only, do_sample=True, seed=9, max_new_tokens=5)
    items.append((text_only, completion, sampler))
    batched = teacher_forced_logprobs_batch(model, [(i, c) for i, c, _ in items])
    for (inputs, completion, sampler), got in zip(items, batched):
        single = teacher_forced_logprobs(model, inputs, completion)
        assert got.shape == completion.shape
        assert torch.allclose(got, single, atol=1e-5, rtol=0)
        assert torch.allclose(got, sampler, atol=1e-5, rtol=0)


def test_rethinking_continuation_matches_teacher_forcing(model, processor, rows):
    """Forced rethinking: prompt + y1 + trigger is fed back with the same image; the learner's
    log-probs of y2 over the whole y1 + trigger + y2 response equal the second generate()'s."""
    inputs = _inputs(processor, rows[4])
    y1, lp1 = _generate(model, processor, inputs, do_sample=True, seed=5, max_new_tokens=10)
    y1 = y1[y1 != processor.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    trigger = torch.tensor(processor.tokenizer("\n\nWait, does it seem right?")["input_ids"])
    second = extend_prompt_inputs(inputs, torch.cat([y1, trigger]))
    assert second["input_ids"].shape[1] == inputs["input_ids"].shape[1] + len(y1) + len(trigger)
    assert int(second["mm_token_type_ids"].sum()) == int(inputs["mm_token_type_ids"].sum())
    assert int(second["attention_mask"].sum()) == second["input_ids"].shape[1]
    y2, lp2 = _generate(model, processor, second, do_sample=True, seed=6, max_new_tokens=12, temperature=0.9)
    full = teacher_forced_logprobs(model, inputs, torch.cat([y1, trigger, y2]))
    assert torch.allclose(full[: len(y1)], lp1[: len(y1)], atol=1e-5)
    assert torch.allclose(full[len(y1) + len(trigger) :], lp2, atol=1e-5)
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    with pytest.raises(ValueError, match="placeholder token"):
        extend_prompt_inputs(inputs, [3, image_pad])


def test_mm_token_type_ids_are_needed_for_positions(model, processor, rows):
    inputs = _inputs(processor, rows[1])
    completion, sampler = _generate(model, processor, inputs, do_sample=True, seed=4, max_new_tokens=12)
    right = teacher_forced_logprobs(model, inputs, completion)
    without = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    wrong = teacher_forced_logprobs(model, without, completion)  # zeros: no image tokens -> 1-D positions
    assert torch.allclose(right, sampler, atol=1e-5)
    assert (wrong - sampler).abs().max() > 1e-4


def test_logprobs_carry_gradients_to_text_and_vision(tiny_model_dir, processor, rows):
    model = load_model(tiny_model_dir)
    inputs = _inputs(processor, rows[2])
    completion = torch.tensor(processor.tokenizer(" The answer is \\boxed{A}.")["input_ids"] + [model.config.text_config.eos_token_id])
    logp = teacher_forced_logprobs(model, inputs, completion)
    assert logp.shape == completion.shape and bool((logp < 0).all())
    logp.sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["lm_head.weight"].abs().sum() > 0
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("model.visual."))


def test_temperature_divides_logits(model, processor, rows):
    inputs = _inputs(processor, rows[0])
    completion = torch.tensor(processor.tokenizer(" red blue")["input_ids"])
    full = torch.cat([inputs["input_ids"][0], completion])[None]
    with torch.no_grad():
        logits = model(
            input_ids=full,
            attention_mask=torch.ones_like(full),
            pixel_values=inputs["pixel_values"],
            image_grid_thw=inputs["image_grid_thw"],
            mm_token_type_ids=torch.cat([inputs["mm_token_type_ids"][0], torch.zeros_like(completion)])[None],
        ).logits[0]
        got = teacher_forced_logprobs(model, inputs, completion, temperature=2.0)
    p = inputs["input_ids"].shape[1]
    want = torch.log_softmax(logits[p - 1 : p - 1 + len(completion)] / 2.0, -1).gather(-1, completion[:, None])[:, 0]
    assert torch.allclose(got, want, atol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        teacher_forced_logprobs(model, inputs, completion, temperature=0.0)


def test_completion_with_image_placeholder_is_rejected(model, processor, rows):
    inputs = _inputs(processor, rows[0])
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    with pytest.raises(ValueError, match="placeholder token"):
        teacher_forced_logprobs(model, inputs, [5, image_pad, 6])
    with pytest.raises(ValueError, match="empty completion"):
        teacher_forced_logprobs(model, inputs, [])


def test_generation_never_emits_vision_tokens(model, processor, rows):
    inputs = _inputs(processor, rows[0])
    banned = set(special_token_ids(processor))
    assert len(banned) == 5
    torch.manual_seed(0)
    with torch.no_grad():  # the model's own generation_config suppresses them
        out = model.generate(**inputs, max_new_tokens=64, do_sample=True, num_return_sequences=8, top_k=0)
    new = out[:, inputs["input_ids"].shape[1] :]
    assert not banned & set(new.flatten().tolist())


def test_build_prompt_inputs_pixel_limits_and_placeholders(processor):
    assert pixel_limits(processor) == (MIN_PIXELS, MAX_PIXELS)
    big = Image.new("RGB", (300, 150), "blue")  # resized down to <= 16 merged tokens
    small = Image.new("RGB", (20, 20), "red")  # resized up to >= 4 merged tokens
    inputs = build_prompt_inputs(processor, "Compare <image> with <image>.", [big, small], "", MIN_PIXELS, MAX_PIXELS)
    grids = inputs["image_grid_thw"].tolist()
    assert len(grids) == 2
    for t, h, w in grids:
        assert t == 1 and MIN_PIXELS <= h * w * 14 * 14 <= MAX_PIXELS and h % 2 == 0 and w % 2 == 0
    n_image_tokens = sum(h * w // 4 for _, h, w in grids)
    assert int(inputs["mm_token_type_ids"].sum()) == n_image_tokens
    assert inputs["pixel_values"].shape[0] == sum(h * w for _, h, w in grids)
    text = processor.tokenizer.decode(inputs["input_ids"][0])
    assert "Compare <|vision_start|>" in text and "<|vision_end|> with <|vision_start|>" in text
    # defaults come from the processor's limits
    again = build_prompt_inputs(processor, "Compare <image> with <image>.", [big, small])
    assert again["image_grid_thw"].tolist() == grids


def test_load_model_dtype_and_device(tiny_model_dir):
    m = load_model(tiny_model_dir, dtype="bfloat16", attn_implementation="eager", device="cpu")
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    assert not m.training
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        load_model(tiny_model_dir, dtype="float8")


def test_missing_paths_give_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match="does not exist.*local model folder"):
        load_model(tmp_path / "no-such-model")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_processor("./runs/../nowhere/model")
    f = tmp_path / "file.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file"):
        load_model(f)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"hub is off \(HF_HUB_OFFLINE=1\).*local path"):
        load_model("Qwen/Qwen2.5-VL-7B-Instruct")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="could not be loaded"):
        load_model(empty)
