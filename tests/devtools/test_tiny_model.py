"""The tiny offline Qwen2.5-VL: deterministic build, sizes, tokenizer, chat template, offline loading."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from common.config import ModelConfig
from common.model_loading import ModelLoadError, load_from_config
from devtools import tiny_model
from devtools.tiny_model import (
    CHAT_TEMPLATE,
    QWEN_ADDED_TOKENS,
    STAMP_FILE,
    SUPPRESSED_TOKENS,
    build_tiny_model,
    ensure_model,
    ensure_tiny_model,
    is_current,
    read_stamp,
)

ROOT = Path(__file__).resolve().parents[2]


def _hashes(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir()) if f.is_file()}


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_dir)


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path, tiny_model_dir):
    a = build_tiny_model(tmp_path / "a", seed=0)
    b = build_tiny_model(tmp_path / "b", seed=0)
    c = build_tiny_model(tmp_path / "c", seed=1)
    ha, hb, hc = _hashes(a), _hashes(b), _hashes(c)
    assert ha == hb
    assert {"model.safetensors", "config.json", "tokenizer.json", "processor_config.json", STAMP_FILE} <= set(ha)
    assert ha["model.safetensors"] != hc["model.safetensors"]
    assert ha["tokenizer.json"] == hc["tokenizer.json"]  # the tokenizer does not depend on the seed
    # the session's cached build is the same model (if it was built by this code and library versions)
    assert _hashes(tiny_model_dir)["model.safetensors"] == ha["model.safetensors"]


def test_tiny_config_and_parameter_count(tiny_model_dir):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(tiny_model_dir)
    t, v = cfg.text_config, cfg.vision_config
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads) == (64, 2, 4, 2)
    assert (v.depth, v.hidden_size, v.out_hidden_size, v.patch_size, v.spatial_merge_size) == (2, 32, 64, 14, 2)
    head_dim = t.hidden_size // t.num_attention_heads
    assert sum(t.rope_parameters["mrope_section"]) == head_dim // 2
    assert all(0 <= i < v.depth for i in v.fullatt_block_indexes)
    stamp = read_stamp(tiny_model_dir)
    assert 200_000 <= stamp["parameters"] <= 5_000_000
    assert 512 <= t.vocab_size <= 1100 and t.vocab_size == stamp["vocab_size"]
    size_mb = (tiny_model_dir / "model.safetensors").stat().st_size / 1e6
    assert size_mb < 5


def test_small_size_is_about_25m_parameters():
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    tok = tiny_model.build_tokenizer()
    cfg = tiny_model.make_config(tok, "small")
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(cfg)
    n = tiny_model.count_parameters(model)
    assert 20e6 <= n <= 30e6, n
    with pytest.raises(tiny_model.TinyModelError, match="unknown size"):
        tiny_model.make_config(tok, "huge")


def test_tokenizer_round_trip_and_special_tokens(processor):
    tok = processor.tokenizer
    texts = [
        "What is the color of the largest shape?\nChoices:\nA. red\nB. blue\nC. green\nD. cyan",
        "\n\nPlease reason step by step, and put your final answer within \\boxed{}.",
        "Wait, does it seem right? The answer is \\boxed{B}.",
        "x^2 + 3.14 = 12345 / 7; naïve café ünïcödé 日本語 🙂 \t tabs  and   spaces",
    ]
    for s in texts:
        ids = tok(s)["input_ids"]
        assert tok.decode(ids) == s
        assert len(ids) < len(s.encode())  # BPE merges something
    # the words of the task are single tokens (with their leading space)
    for w in (" red", " largest", " Wait", " answer", "boxed"):
        assert len(tok(w)["input_ids"]) == 1, w
    n = len(tok)
    base = n - len(QWEN_ADDED_TOKENS)
    for k, (t, special) in enumerate(QWEN_ADDED_TOKENS):
        assert tok.convert_tokens_to_ids(t) == base + k
        assert tok(t)["input_ids"] == [base + k]  # matched whole, never split
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert "<|image_pad|>" in tok.all_special_tokens and "<|vision_start|>" in tok.all_special_tokens
    assert tok.decode(tok("hi <|im_end|>")["input_ids"], skip_special_tokens=True) == "hi "


def test_chat_template_with_image_parts(processor):
    img = Image.new("RGB", (56, 56), "red")
    msgs = [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "Q?"}]}]
    text = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Q?<|im_end|>\n<|im_start|>assistant\n"
    )
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi"},
    ]
    text = processor.apply_chat_template(msgs, tokenize=False)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\nHi<|im_end|>\n"
    assert processor.tokenizer.chat_template == CHAT_TEMPLATE
    # the processor expands the image placeholder to the image's merged-token count (56x56 -> 4)
    out = processor(text=[processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "Q?"}]}],
        tokenize=False, add_generation_prompt=True)], images=[img], return_tensors="pt")
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((out["input_ids"] == image_id).sum()) == 4
    assert out["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert int(out["mm_token_type_ids"].sum()) == 4


def test_generation_config_suppresses_vision_tokens(tiny_model_dir):
    cfg = json.loads((tiny_model_dir / "generation_config.json").read_text())
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert sorted(cfg["suppress_tokens"]) == sorted(tok.convert_tokens_to_ids(t) for t in SUPPRESSED_TOKENS)
    assert tok.convert_tokens_to_ids("<|im_end|>") in cfg["eos_token_id"]


def test_offline_load_in_fresh_process(tiny_model_dir, tmp_path):
    code = (
        "import sys\n"
        "from transformers import AutoModelForImageTextToText, AutoProcessor, Qwen2_5_VLForConditionalGeneration\n"
        "p = sys.argv[1]\n"
        "m = AutoModelForImageTextToText.from_pretrained(p)\n"
        "m2 = Qwen2_5_VLForConditionalGeneration.from_pretrained(p)\n"
        "proc = AutoProcessor.from_pretrained(p)\n"
        "print(type(m).__name__, type(proc).__name__, type(proc.image_processor).__name__, "
        "type(proc.video_processor).__name__, sum(x.numel() for x in m.parameters()))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"), "TRANSFORMERS_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code, str(tiny_model_dir)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    names = r.stdout.split()
    assert names[:4] == ["Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", "Qwen2VLImageProcessor", "Qwen2VLVideoProcessor"]
    assert int(names[4]) == read_stamp(tiny_model_dir)["parameters"]


def test_ensure_reuses_current_build_and_rebuilds_stale(tmp_path):
    p = tmp_path / "m"
    ensure_tiny_model(p, seed=2)
    assert is_current(p, seed=2)
    mtime = (p / "model.safetensors").stat().st_mtime_ns
    ensure_tiny_model(p, seed=2)  # reused
    assert (p / "model.safetensors").stat().st_mtime_ns == mtime
    assert not is_current(p, seed=3)
    stamp = read_stamp(p)
    (p / STAMP_FILE).write_text(json.dumps(stamp | {"builder": "older-code"}))
    assert not is_current(p, seed=2)
    ensure_tiny_model(p, seed=2)  # rebuilt
    assert is_current(p, seed=2)
    assert not list(tmp_path.glob(".m.build-*")) and not list(tmp_path.glob(".m.old-*"))
    foreign = tmp_path / "real-model"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")
    with pytest.raises(tiny_model.TinyModelError, match="refusing to overwrite"):
        build_tiny_model(foreign)
    assert (foreign / "config.json").read_text() == "{}"


def test_cli_tiny_model_build(tmp_path):
    out = tmp_path / "cli-model"
    r = subprocess.run(
        [sys.executable, "-m", "rethinker.cli", "tiny-model", "build", str(out), "--seed", "5"],
        cwd=ROOT, capture_output=True, text=True, timeout=180, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"in {out}" in r.stdout and "parameters:" in r.stdout and "model.safetensors" in r.stdout
    assert read_stamp(out)["seed"] == 5
    bad = subprocess.run(
        [sys.executable, "-m", "rethinker.cli", "tiny-model", "build", str(out), "--size", "huge"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_ensure_model_and_load_from_config(tmp_path):
    cfg = ModelConfig(path=str(tmp_path / "tiny"), dtype="float32", build_tiny_if_missing=True, tiny_seed=0)
    m = load_from_config(cfg.model_copy(update={"path": ensure_model(cfg)}))
    assert type(m).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert (tmp_path / "tiny" / "model.safetensors").is_file()
    # without the flag a missing path is passed through (and then fails clearly when loaded)
    plain = ModelConfig(path=str(tmp_path / "other"), build_tiny_if_missing=False)
    assert ensure_model(plain) == str(tmp_path / "other")
    with pytest.raises(ModelLoadError):
        load_from_config(plain)
    # a folder holding something that is not a tiny-model build is never overwritten
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")
    assert ensure_model(ModelConfig(path=str(foreign), build_tiny_if_missing=True)) == str(foreign)
    assert (foreign / "config.json").read_text() == "{}"
