"""A weight-sync receiver in its own process, for the transport tests (not a test module).

Usage: python receiver_main.py CONFIG_JSON SERVER_ID OUT_DIR [--die-mid-round] [--stream]
Every accepted version is written to OUT_DIR/v<version>.safetensors and a line ``loaded <v>`` is printed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from safetensors.torch import save_file  # noqa: E402

from common.config import config_from_json  # noqa: E402
from weight_transport import make_receiver  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("server_id")
    ap.add_argument("out")
    ap.add_argument("--die-mid-round", action="store_true")
    ap.add_argument("--initial-version", type=int, default=-1)
    a = ap.parse_args()
    cfg = config_from_json(Path(a.config).read_text())
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    def on_weights(weights, version):  # noqa: ANN001
        if a.die_mid_round:
            # stream staging: take one bucket, then die with the round in flight
            next(iter(weights))
            os.kill(os.getpid(), signal.SIGKILL)
        state = {k: v.contiguous().clone() for k, v in dict(weights).items()}
        save_file(state, str(out / f"v{version}.safetensors"))
        print(f"loaded {version}", flush=True)

    rx = make_receiver(cfg, server_id=a.server_id, on_weights=on_weights, initial_version=a.initial_version)
    rx.start()
    print("ready", flush=True)
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("flag", True))
    while not stop["flag"]:
        time.sleep(0.05)
    rx.stop()


if __name__ == "__main__":
    main()
