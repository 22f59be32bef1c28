#!/usr/bin/env bash
# The GPU check on one GPU machine (Python, PyTorch, CUDA; no internet): installs the wheels the
# machine lacks from the folder `make gpu-wheels` filled, makes sure Redis runs, then runs
# benchmarks/gpu_check.py within its fixed budget and prints ONE JSON line (BENCHMARKS.md, "GPU").
#
#   benchmarks/gpu_check.sh [gpu_check.py run options, e.g. --parts learner,ipc_sync --out gpu.json]
#
# Environment: PYTHON (default python3), GPU_WHEELS (default <repo>/.gpu-wheels),
# GPU_SITE (default <repo>/.gpu-site), REDIS_URL (default: found or started by rethinker.local_redis).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
WHEELS=${GPU_WHEELS:-$REPO/.gpu-wheels}
SITE=${GPU_SITE:-$REPO/.gpu-site}

"$PY" benchmarks/gpu_check.py install --wheels "$WHEELS" --site "$SITE" >&2
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
# a redis-server carried in the wheel folder, used only when the machine has none
if ! command -v redis-server >/dev/null && [ -x "$WHEELS/redis/bin/redis-server" ]; then
  export PATH="$WHEELS/redis/bin:$PATH"  # a wrapper: the carried libraries serve redis-server only
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_USAGE_STATS_ENABLED=0
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$REPO/.cache/torch_extensions}
unset DS_ACCELERATOR
if [ -z "${REDIS_URL:-}" ]; then
  REDIS_URL=$("$PY" -m rethinker.local_redis) || { echo "gpu_check.sh: no Redis (see BENCHMARKS.md, GPU)" >&2; exit 1; }
  export REDIS_URL
fi
# the driver keeps to its own budget (<= 480 s); this limit only guards against a hang
exec timeout 540 "$PY" benchmarks/gpu_check.py run "$@"
