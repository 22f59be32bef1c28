"""The GPU check's CPU-runnable parts: arguments, the wheel list and its install plan, the budget
split, the result schema, the 3B architecture, the fingerprints; and (slow) the learner, hf-engine
and weight-sync parts run end to end on CPU with the tiny model."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
gc = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(gc)


def test_arguments_defaults_and_errors(capsys):
    a = gc.parse_args(["run"])
    assert a.device == "cuda" and a.arch == "3b" and a.budget_s == 480 and a.n == 8 and a.new_tokens == 256
    assert a.system_steps == 20 and a.freeze_vision
    assert gc.parse_args(["run", "--device", "cpu"]).arch == "tiny"
    for bad, field in ((["run", "--budget-s", "600"], "--budget-s"), (["run", "--n", "0"], "--n"),
                       (["run", "--pixels", "many"], "--pixels"), (["run", "--device", "tpu"], "--device")):
        with pytest.raises(SystemExit):
            gc.parse_args(bad)
        assert field in capsys.readouterr().err
    assert gc.parse_parts("system,learner") == ["learner", "system"]  # always in the documented order
    with pytest.raises(SystemExit, match="--parts"):
        gc.parse_parts("learner,warp_drive")


def test_budget_split_stays_inside_the_budget():
    plan = gc.budgets(list(gc.PARTS), 480.0)
    assert abs(sum(plan.values()) - 480.0) < 1e-6 and all(v > 30 for v in plan.values())
    plan = gc.budgets(["ipc_sync"], 100.0)
    assert plan == {"ipc_sync": 100.0}


def test_wheel_list_is_pinned_like_the_cpu_lock():
    lock = {}
    for line in (REPO / "requirements" / "cpu.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            lock[gc._norm(name)] = version.strip()
    names = [gc._norm(n) for n, _, _ in gc.GPU_WHEELS]
    assert len(names) == len(set(names))
    for name, version, _ in gc.GPU_WHEELS:
        if gc._norm(name) == "torchvision":
            assert version.startswith("0.26.")  # the release of the GPU image's torch 2.11
            continue
        assert lock.get(gc._norm(name)) == version, name
    # what the GPU image lacks (stack notes): DeepSpeed, Redis client, FastAPI, uvicorn, qwen-vl-utils, math-verify
    for needed in ("deepspeed", "redis", "fastapi", "uvicorn", "qwen-vl-utils", "math-verify", "pydantic"):
        assert needed in names
    # never the large ones
    assert not {"vllm", "ray", "torch", "transformers"} & set(names)


def _fake_wheel(folder: Path, name: str, version: str) -> Path:
    p = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("x.txt", "x")
    return p


def test_install_plan_takes_only_what_is_missing(tmp_path, monkeypatch):
    have = {"pydantic": "2.11.0", "redis": "8.1.0"}
    monkeypatch.setattr(gc, "installed_version", lambda name: have.get(name))
    for name, version, _ in gc.GPU_WHEELS:
        if name != "deepspeed":
            _fake_wheel(tmp_path, name, version)
    todo, present, missing = gc.plan_install(tmp_path)
    assert present == have  # the machine's own versions are kept
    assert missing == ["deepspeed==0.19.8"]
    assert len(todo) == len(gc.GPU_WHEELS) - len(have) - 1
    assert gc.wheel_for(tmp_path, "latex2sympy2-extended", "1.11.0") is not None  # - and _ are one
    assert gc.wheel_for(tmp_path, "fastapi", "0.1.0") is None
    code = gc.main(["install", "--wheels", str(tmp_path), "--site", str(tmp_path / "site")])
    assert code == 2  # deepspeed is neither installed nor in the folder


def test_install_without_a_folder_names_the_field(tmp_path, capsys):
    assert gc.main(["install", "--wheels", str(tmp_path / "nope")]) == 2
    assert "--wheels" in capsys.readouterr().err


def test_schema_check():
    line = {k: None for k in gc.SCHEMA_KEYS[""]}
    for p in gc.PARTS:
        line[p] = {"ok": False, "seconds": 0.0, "error": "not run"}
    assert gc.check_schema(line) == []
    line["learner"] = {"ok": True, "seconds": 1.0, "error": "", "tokens_per_s": 5.0}
    problems = gc.check_schema(line)
    assert "learner: missing mfu" in problems and "learner: missing peak_memory_gb" in problems
    line["learner"] = {"ok": False, "seconds": 1.0, "error": ""}
    assert "learner: failed without an error" in gc.check_schema(line)
    del line["ipc_sync"]
    assert "missing ipc_sync" in gc.check_schema(line)


def test_peak_flops_table():
    assert gc.peak_tflops("NVIDIA H100 80GB HBM3", None) == 989.0
    assert gc.peak_tflops("NVIDIA H100 PCIe", None) == 756.0
    assert gc.peak_tflops("NVIDIA H200", None) == 989.0
    assert gc.peak_tflops("Some GPU", None) is None and gc.peak_tflops("Some GPU", 100.0) == 100.0


@pytest.mark.slow
def test_3b_architecture_has_the_3b_parameter_count():
    """Built on the meta device (no memory); ~10 s, most of it the tokenizer's training."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from devtools.tiny_model import build_tokenizer

    cfg = gc.arch_config(build_tokenizer(), "3b")
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert 3.70e9 < n < 3.80e9  # Qwen2.5-VL-3B-Instruct: 3.75B
    assert cfg.text_config.num_hidden_layers == 36 and cfg.vision_config.depth == 32 and cfg.vocab_size == 151936
    with pytest.raises(ValueError, match="--arch"):
        gc.arch_config(build_tokenizer(), "7b")


def test_fingerprint_tells_contents_apart():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1000, generator=g).to(torch.bfloat16)
    b = a.clone()
    assert gc.fingerprint(a) == gc.fingerprint(b)
    b[10], b[11] = a[11], a[10]  # same values, swapped places
    assert gc.fingerprint(a) != gc.fingerprint(b)
    c = a.clone()
    c[500] = c[500] + 1
    assert gc.fingerprint(a) != gc.fingerprint(c)


def test_system_command_and_step_rate(tmp_path):
    from common.config import load_config

    a = gc.parse_args(["part", "system", "--model-dir", str(tmp_path), "--device", "cpu", "--system-steps", "3"])
    sets = gc.system_sets(a, tmp_path / "run", tmp_path / "cache")
    cmd = gc.system_command(a, sets)
    assert cmd[1:4] == ["-m", "rethinker.cli", "up"] and cmd[cmd.index("--steps") + 1] == "3"
    assert "learner.weight_sync.backend=gloo" in cmd and "rollout.device=cpu" in cmd
    cfg = load_config(str(gc.SYSTEM_CONFIG), sets)  # every override names a real field
    assert cfg.data.train_path == str(tmp_path / "cache" / "sysdata" / "train.parquet")
    assert cfg.learner.checkpoint_dir == str(tmp_path / "run" / "checkpoints")  # never resumes another run
    assert len({cfg.verifier.port, cfg.buffer.port, cfg.rollout.port}) == 3
    a = gc.parse_args(["part", "system", "--model-dir", str(tmp_path)])
    assert "learner.weight_sync.backend=cuda_ipc" in gc.system_sets(a, tmp_path, tmp_path)
    jl = tmp_path / "learner_metrics.jsonl"
    rows = [{"step": s, "prefix": "train", "time": 100.0 + 2 * s} for s in range(1, 6)]
    rows.insert(2, {"step": 2, "prefix": "eval", "time": 103.0})
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n{partial")
    assert gc.step_rate(jl) == (5, 0.5)
    assert gc.step_rate(tmp_path / "missing.jsonl") == (0, None)


@pytest.mark.slow
def test_cpu_run_of_the_parts(tmp_path, redis_url):
    """learner, hf_engine and ipc_sync end to end on CPU with the tiny model (the system part is the
    demo's path and has its own end-to-end test)."""
    env = dict(os.environ, REDIS_URL=redis_url, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    out = tmp_path / "gpu.json"
    res = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "run", "--device", "cpu", "--parts", "learner,hf_engine,ipc_sync",
         "--prompts", "1", "--n", "4", "--response-tokens", "16", "--steps", "1", "--new-tokens", "16", "--pixels", "3136",
         "--rounds", "2", "--bucket-mb", "0.5", "--budget-s", "240", "--cache", str(tmp_path / "cache"), "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300, cwd=REPO,
    )
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, res.stdout + res.stderr
    line = json.loads(lines[0])
    assert json.loads(out.read_text()) == line
    assert gc.check_schema(line) == []
    failed = {p: line[p]["error"] for p in ("learner", "hf_engine", "ipc_sync") if not line[p]["ok"]}
    assert res.returncode == 0 and line["ok"] and not failed, failed
    assert line["learner"]["tokens_per_step"] == 4 * 16 and line["learner"]["tokens_per_s"] > 0
    assert line["hf_engine"]["tokens"] > 0 and line["hf_engine"]["tokens_per_s"] > 0
    assert line["ipc_sync"]["backend"] == "gloo" and line["ipc_sync"]["verified_equal"] is True
    assert line["ipc_sync"]["rounds"] == 2 and line["ipc_sync"]["bytes"] > 0
    assert line["system"]["ok"] is False and "not run" in line["system"]["error"]
