# The two commands of the README:  `make demo`  and  `make test`.
# Both (re)build .venv when pyproject.toml or the lock changed, make sure a Redis >= 7 is reachable
# (python -m rethinker.local_redis), then run.

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= configs/tiny-cpu.yaml
PYTEST_ARGS ?=
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export DS_ACCELERATOR ?= cpu

.PHONY: venv demo test test-fast test-chaos test-vllm-api lock bench bench-async-sync ablation ablation-quick compose-smoke docs clean gpu-wheels gpu-check

venv: $(STAMP)

$(STAMP): pyproject.toml requirements/cpu.lock
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements/cpu.lock -e '.[test]'
	@touch $(STAMP)

demo: venv
	@REDIS_URL=$$($(BIN)/python -m rethinker.local_redis) || exit 1; \
	REDIS_URL=$$REDIS_URL $(BIN)/rethinker demo --config $(CONFIG)

test: venv
	@REDIS_URL=$$($(BIN)/python -m rethinker.local_redis) || exit 1; \
	REDIS_URL=$$REDIS_URL $(BIN)/python -m pytest -q -ra --durations=20 $(PYTEST_ARGS)

test-fast: venv
	@REDIS_URL=$$($(BIN)/python -m rethinker.local_redis) || exit 1; \
	REDIS_URL=$$REDIS_URL $(BIN)/python -m pytest -q -m "not slow and not e2e" $(PYTEST_ARGS)

# The chaos test alone (also part of `make test`): kill each process of a live `rethinker up` in turn
# (tests/system/test_chaos.py, 2-3 minutes on 2 cores); `python benchmarks/chaos.py` prints the
# recovery seconds per fault.
test-chaos: venv
	@REDIS_URL=$$($(BIN)/python -m rethinker.local_redis) || exit 1; \
	REDIS_URL=$$REDIS_URL $(BIN)/python -m pytest -q -ra tests/system/test_chaos.py $(PYTEST_ARGS)

# Opt-in lane: installs vllm==0.33.0 into its own venv and checks that every vLLM name and
# signature our engine uses exists (vLLM cannot run without a GPU).
test-vllm-api:
	@test -x .venv-vllm/bin/python || $(PYTHON) -m venv .venv-vllm
	.venv-vllm/bin/python -m pip install -q "vllm==0.33.0" pytest
	.venv-vllm/bin/python -m pytest -q tests/services/rollout/vllm_api_check.py

# The GPU check (BENCHMARKS.md, "GPU"): `make gpu-wheels` here downloads into .gpu-wheels/ (git-ignored,
# < 60 MB) the wheels a GPU machine lacks and a redis-server; carry the repository with that folder to the
# GPU machine and run `make gpu-check` (benchmarks/gpu_check.sh) there: one JSON line within 8 minutes.
gpu-wheels: venv
	$(BIN)/python benchmarks/gpu_check.py wheels --dest .gpu-wheels

gpu-check:
	benchmarks/gpu_check.sh

lock: venv
	{ echo "# Exact pins of the CPU environment (python 3.11, x86_64). Regenerate: make lock"; \
	  $(BIN)/python -m pip freeze --exclude-editable; } > requirements/cpu.lock

docs: venv
	$(BIN)/rethinker config schema > docs/configuration.md

bench: venv
	@REDIS_URL=$$($(BIN)/python -m rethinker.local_redis) || exit 1; \
	for b in benchmarks/*.py; do case $$b in benchmarks/ablation.py|benchmarks/gpu_check.py|benchmarks/compose_smoke.py) continue;; esac; echo "== $$b"; REDIS_URL=$$REDIS_URL $(BIN)/python $$b || exit 1; done

# Opt-in lane (not CI): the asynchronous pipeline against the synchronous on-policy baseline on the
# demo task, same step count in both modes (one JSON line; about 10 minutes on 2 cores).
bench-async-sync: venv
	@REDIS_URL=$$($(BIN)/python -m rethinker.local_redis) || exit 1; \
	REDIS_URL=$$REDIS_URL $(BIN)/python benchmarks/async_vs_sync.py

# Opt-in slow lane (not CI): the SSR ablation through the whole system (docs/ablation.md).
# `make ablation` runs the 3 modes x 3 seeds grid (about 55-65 minutes on 2 cores), then the
# rethinking variants of SSR; `make ablation-quick` one seed of 100 steps per mode (one JSON line).
ablation: venv
	@REDIS_URL=$$($(BIN)/python -m rethinker.local_redis) || exit 1; \
	REDIS_URL=$$REDIS_URL $(BIN)/rethinker ablate -c configs/ablation-cpu.yaml --modes grpo,filter,ssr --seeds 3 --rethink off --resume && \
	REDIS_URL=$$REDIS_URL $(BIN)/rethinker ablate -c configs/ablation-cpu.yaml --modes ssr --seed-list 0 --rethink on,nll0 --resume && \
	$(BIN)/python benchmarks/ablation.py --from runs/ablation-cpu

ablation-quick: venv
	@REDIS_URL=$$($(BIN)/python -m rethinker.local_redis) || exit 1; \
	REDIS_URL=$$REDIS_URL $(BIN)/python benchmarks/ablation.py --quick

# Opt-in slow lane (not CI): the docker compose stack for real (docs/deployment.md, "The compose
# lane"): builds the CPU image, runs the CPU demo services in containers with host networking,
# checks health, the dashboard and a rollout crash + restart, then `down -v`; one JSON line.
# It starts (and stops) a bridge-less dockerd when no engine answers.  Site settings (torch wheel
# source, CA certificates, base image) go in COMPOSE_SMOKE_ARGS, e.g.
#   make compose-smoke COMPOSE_SMOKE_ARGS="--torch-index /srv/wheels/simple --ca-cert /etc/site-ca.crt"
COMPOSE_SMOKE_ARGS ?=
compose-smoke:
	nice -n 10 $(PYTHON) benchmarks/compose_smoke.py $(COMPOSE_SMOKE_ARGS)

clean:
	rm -rf .cache runs .pytest_cache
