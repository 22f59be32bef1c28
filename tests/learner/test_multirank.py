"""Several ranks (torchrun, gloo, ZeRO-3) against one rank: same parameters after the same steps; the
ZeRO-3 gather feeds the HF export and the weight broadcast with full, correct tensors."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from tests.learner.helpers import child_env

import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], timeout: float = 240) -> None:
    env = child_env()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-4000:]


@pytest.mark.slow
def test_two_rank_zero3_matches_one_rank_and_broadcasts_full_weights(make_cfg, tmp_path):
    from weight_transport import make_receiver

    cfg = make_cfg("learner.zero_stage=3")
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(cfg.model_dump_json())
    got: dict[int, dict[str, torch.Tensor]] = {}
    rx = make_receiver(cfg, server_id="rx-0", on_weights=lambda w, v: got.__setitem__(v, dict(w)), initial_version=0)
    rx.start()
    try:
        one, two = tmp_path / "one", tmp_path / "two"
        _run([sys.executable, str(HERE / "zero_worker.py"), str(cfg_path), str(one), "3"])
        _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
              str(HERE / "zero_worker.py"), str(cfg_path), str(two), "3", "--sync", "7"])
        a, b = load_file(str(one / "params.safetensors")), load_file(str(two / "params.safetensors"))
        la, lb = json.loads((one / "losses.json").read_text()), json.loads((two / "losses.json").read_text())
        assert la["world"] == 1 and lb["world"] == 2
        assert la["losses"] == pytest.approx(lb["losses"], abs=1e-5)
        assert la["losses"][-1] < la["losses"][0]
        assert set(a) == set(b)
        init = load_file(str(Path(cfg.model.path) / "model.safetensors"))
        moved = 0
        for n in a:
            assert a[n].shape == b[n].shape
            assert torch.allclose(a[n], b[n], atol=2e-6, rtol=1e-5), (n, (a[n] - b[n]).abs().max())
        from common.model_loading import load_model

        base = dict(load_model(cfg.model.path).named_parameters())
        moved = sum(not torch.equal(base[n], a[n]) for n in a)
        assert moved > len(a) // 2 and len(init) == len(a)
        # the ZeRO-3 export (gathered over 2 ranks) holds the same full weights
        hf = load_file(str(two / "hf" / "model.safetensors"))
        assert all(torch.equal(hf[n], b[n]) for n in b)
        # the broadcast from the 2-rank run delivered the full tensors, bit for bit, as version 7
        assert rx.wait_for_version(7, timeout=30)
        rep = json.loads((two / "sync.json").read_text())
        assert rep["sync_ok"] == 1.0 and rep["sync_members"] == 1.0
        assert set(got[7]) == set(b) and all(torch.equal(got[7][n], b[n]) for n in b)
    finally:
        rx.stop()
