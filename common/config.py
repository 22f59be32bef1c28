"""The one configuration schema of the whole system.

Every process (verifier, buffer, rollout servers, learner, launcher, evaluation) reads the same
``RethinkerConfig``: shared sections (run, model, data, redis, algorithm) plus one section per
service.  A config is loaded from YAML, then environment overrides
(``RETHINKER__SECTION__FIELD=value``, double underscores separate levels), then CLI overrides
(``--set section.field=value``), in that order.  Values given as strings in overrides are parsed as
YAML scalars (``--set learner.lr=1e-6``, ``--set algorithm.ssr.mode=filter``).

Any error names the dotted field path and the bad value (``ConfigError``).  Defaults follow the
VL-Rethinker recipe (see docs/ and ../shared/spec/vl-rethinker.md); ``configs/tiny-cpu.yaml`` shrinks
it to the CPU demo, ``configs/qwen2.5-vl-7b-8gpu.yaml`` is the paper's 7B recipe.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    SerializationInfo,
    ValidationError,
    WithJsonSchema,
    field_serializer,
    model_validator,
)

from common.errors import CommonError

ENV_PREFIX = "RETHINKER__"

PROMPT_SUFFIX = "\n\nPlease reason step by step, and put your final answer within \\boxed{}."
RETHINK_TRIGGERS = (
    "\n\nWait",
    "\n\nWait, does it seem right?",
    "\n\nWait, let's double check",
    "\n\nWait, there might be a mistake",
)


class ConfigError(CommonError, ValueError):
    """A configuration problem; the message names the field path and the offending value."""


# --------------------------------------------------------------------------- secrets

# What a secret looks like wherever a config is shown or saved (``config show``, the run's saved
# config, the buffer's admin view).  Loading it back as a value is refused: the real secret must
# come from the environment (``RETHINKER__SECTION__FIELD``) or a ``--set``.
REDACTED = "***"
_REVEAL = "reveal_secrets"


def _secret_in(value: Any) -> Any:
    if value is None or isinstance(value, SecretStr):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # an env/--set value such as 1234 parses as a YAML number
    if isinstance(value, str):
        if value == "":
            return None  # an empty environment variable means "not set"
        if value == REDACTED:
            raise ValueError(f"is the redacted placeholder {REDACTED!r}, not a secret; pass the real value "
                             "(environment variable RETHINKER__SECTION__FIELD or --set)")
    return value


def _secret_out(value: SecretStr | None, info: SerializationInfo) -> str | None:
    if value is None:
        return None
    if isinstance(info.context, dict) and info.context.get(_REVEAL):
        return value.get_secret_value()
    return REDACTED


# A secret string: its repr/str and every dump show ``***`` unless the dump is made with
# ``context={"reveal_secrets": True}`` (``config_to_json(cfg, reveal_secrets=True)``, used only to
# hand a config to a child process).  ``reveal(x)`` gives the value to the code that needs it.
# Optional: an unset (or empty) secret is None.
Secret = Annotated[
    SecretStr | None,
    BeforeValidator(_secret_in),
    PlainSerializer(_secret_out, return_type=str | None, when_used="always"),
    WithJsonSchema({"anyOf": [{"type": "string", "writeOnly": True, "format": "password"}, {"type": "null"}]}),
]


def reveal(secret: SecretStr | str | None) -> str | None:
    """The plain value of a secret field (None when unset)."""
    if secret is None:
        return None
    return secret.get_secret_value() if isinstance(secret, SecretStr) else str(secret)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (``redis://:pw@h:6379/0`` -> ``redis://:***@h:6379/0``)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit((parts.scheme, f"{user}:{REDACTED}@{host}", parts.path, parts.query, parts.fragment))
    except ValueError:
        return url


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


# --------------------------------------------------------------------------- shared sections


class RunConfig(Section):
    """Where a run writes its files and how it is seeded."""

    name: str = "run"
    run_dir: str = "runs/latest"
    seed: int = 0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class ModelConfig(Section):
    """The policy model: a local directory or a hub name, loaded by ``common.model_loading``."""

    path: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] = "sdpa"
    trust_remote_code: bool = False
    # When set, `path` is built on demand with `rethinker tiny-model build` (CPU demo and tests).
    build_tiny_if_missing: bool = False
    tiny_seed: int = 0


class DataConfig(Section):
    """Training/eval data in ViRL39K's schema (parquet file or HF dataset folder)."""

    train_path: str = "data/virl39k/train.parquet"
    eval_path: str | None = None
    categories: list[str] | None = None  # None keeps every category
    min_pass_rate: float | None = None  # keep rows with PassRate_7BBase > min (exclusive)
    max_pass_rate: float | None = None  # keep rows with PassRate_7BBase < max (exclusive)
    pass_rate_field: Literal["PassRate_7BBase", "PassRate_32BTrained"] = "PassRate_7BBase"
    # rows whose pass rate is -1 (not annotated) when min/max_pass_rate is set: keep or drop them
    unannotated_pass_rate: Literal["keep", "drop"] = "keep"
    prompt_suffix: str = PROMPT_SUFFIX
    min_pixels: int = 256 * 28 * 28
    max_pixels: int = 1280 * 28 * 28
    max_prompt_tokens: int = 2048
    eval_max_items: int | None = None

    @model_validator(mode="after")
    def _pixels(self) -> "DataConfig":
        if self.min_pixels <= 0 or self.max_pixels < self.min_pixels:
            raise ValueError(
                f"need 0 < min_pixels <= max_pixels, got min_pixels={self.min_pixels}, max_pixels={self.max_pixels}"
            )
        return self


class RedisConfig(Section):
    """Connection to the Redis that holds the prompt queue and the trajectory store."""

    url: str = "redis://127.0.0.1:6379/0"  # rediss:// for TLS; user:password@ allowed (shown redacted)
    password: Secret = None  # overrides the URL's password (use a Secret / env var)
    namespace: str = "rethinker"  # prefix of every key (see common.redis_keys)
    socket_timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    retry_attempts: int = 6
    retry_backoff_s: float = 0.1
    retry_backoff_max_s: float = 5.0
    tls_ca_certs: str | None = None
    tls_insecure: bool = False

    @model_validator(mode="after")
    def _url(self) -> "RedisConfig":
        try:
            parts = urlsplit(self.url)
            pw = parts.password
        except ValueError as exc:
            raise ValueError(f"url: not a Redis URL ({exc})") from None
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"url: scheme must be redis://, rediss:// (TLS) or unix://, got {parts.scheme!r}")
        if pw == REDACTED:
            raise ValueError(f"url: the password is the redacted placeholder {REDACTED!r}; pass the real URL "
                             "(RETHINKER__REDIS__URL) or the password alone (RETHINKER__REDIS__PASSWORD)")
        return self

    @field_serializer("url")
    def _show_url(self, url: str, info: SerializationInfo) -> str:
        if isinstance(info.context, dict) and info.context.get(_REVEAL):
            return url
        return redact_url(url)

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, (redact_url(value) if name == "url" else value)

    def effective_password(self) -> str | None:
        """The password clients authenticate with: ``password`` if set, else the URL's."""
        if self.password is not None:
            return reveal(self.password)
        try:
            return urlsplit(self.url).password
        except ValueError:
            return None


# --------------------------------------------------------------------------- algorithm


class SamplingConfig(Section):
    """Rollout sampling (spec section 2)."""

    n: int = Field(8, ge=1)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int = 40  # -1 disables
    max_new_tokens: int = Field(2048, ge=1)


class GRPOConfig(Section):
    """Advantage and clipped-ratio loss (spec section 2)."""

    std_normalize: bool = False
    adv_eps: float = 1e-6
    clip_low: float = Field(0.2, ge=0.0)
    clip_high: float = Field(0.35, ge=0.0)
    entropy_coef: float = 0.0
    kl_coef: float = 0.0  # > 0 loads a frozen reference model
    nll_coef: float = 0.05  # SFT term on positive-advantage responses that contain "wait"
    # Off-policy correction of every row generated by an older policy version than the learner's
    # (replayed rows and stale fresh rows alike; docs/learner.md "Off-policy rows"):
    #   behaviour  the clipped ratio is taken against the sampler's log-probs (PPO with the
    #              behaviour policy as the old policy; the spec's rule for replayed responses)
    #   decoupled  decoupled PPO: the ratio is clipped against the learner's own log-probs and the
    #              row is weighted by the truncated importance weight pi_learner / pi_sampler
    #   recompute  no correction: every row is treated as on-policy (ratio 1 at the update)
    off_policy: Literal["behaviour", "decoupled", "recompute"] = "behaviour"
    # Importance-weight cap on off-policy rows: the dual clip for A < 0 in `behaviour` mode, the
    # truncation of the weight in `decoupled` mode (None: uncapped).  Not in the recipe; see
    # docs/learner.md for why it is on by default.
    is_cap: float | None = Field(5.0, gt=1.0)
    loss_agg: Literal["token_mean"] = "token_mean"


class SSRConfig(Section):
    """Selective Sample Replay (spec section 3)."""

    mode: Literal["ssr", "filter", "grpo"] = "ssr"
    alpha: float = Field(1.0, gt=0.0)
    replay_eps: float = 1e-4
    replay_capacity: int = Field(4096, ge=0)  # pool of already-trained effective responses (oldest out first)
    # Replay entries are off-policy by design: they leave the replay pool when their policy version
    # lags the learner's by more than this (the fresh pools use staleness_bound instead).
    replay_max_age: int = Field(1_000_000, ge=0)
    capacity: int = Field(200_000, ge=1)  # total stored responses; oldest evicted first
    staleness_bound: int = Field(4, ge=0)  # max policy-version lag of a never-trained (fresh) response
    reuse_cap: int = Field(4, ge=1)  # max times one response may be trained on
    # Trained volume / rollout volume of the selecting modes (ssr, filter): the paper's scripts
    # train on half of each step's responses.  Mode `grpo` uses everything: it trains on the whole
    # rollout volume of a step whatever this says (docs/ablation.md "Footing").
    train_fraction: float = Field(0.5, gt=0.0, le=1.0)


class RethinkConfig(Section):
    """Forced Rethinking (spec section 4)."""

    enabled: bool = True
    # Forced rethinking applies to groups generated by policy versions >= this.  The paper trains
    # stage 1 (VL-Reasoner: GRPO + SSR) first and switches rethinking on for stage 2; a run that
    # does both sets this to the stage-1 step count (0: rethinking from the start).
    start_version: int = Field(0, ge=0)
    max_candidate_tokens: int = 1024
    skip_incorrect_above_acc: float = 0.7
    skip_prob: float = 0.35
    truncate_prob: float = 0.5
    generic_trigger_prob: float = 0.5
    wait_vs_seem_right: float = 0.4  # P("\n\nWait") among the generic triggers
    temperature: float = 0.9
    min_continuation_tokens: int = 30  # exclusive
    max_continuation_tokens: int = 1024  # exclusive
    max_wait_markers: int = 4
    max_kept_per_prompt: int = 2
    eval_trigger: str = "\n\nWait"


class RewardConfig(Section):
    """Rule-based reward (spec section 5)."""

    correct: float = 1.0
    wrong: float = 0.0
    invalid: float = -0.1
    invalid_max_waits: int = 5  # more "wait"s than this makes a response invalid
    invalid_rule: bool = True  # no EOS / too many waits -> `invalid`
    shaping: bool = False  # the public code's wait-count shaping (1.1 for 1-2 waits, ...)
    shaping_bonus: float = 0.1  # added to `correct` for a first-pass correct response with 1..bonus_max_waits waits
    shaping_bonus_max_waits: int = Field(2, ge=0)
    shaping_penalty_per_wait: float = 0.2  # correct with more waits: correct - penalty * n_wait ...
    shaping_floor: float = -0.1  # ... but never below this


class AlgorithmConfig(Section):
    sampling: SamplingConfig = SamplingConfig()
    grpo: GRPOConfig = GRPOConfig()
    ssr: SSRConfig = SSRConfig()
    rethink: RethinkConfig = RethinkConfig()
    reward: RewardConfig = RewardConfig()


# --------------------------------------------------------------------------- services


class VerifierConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8100, ge=0, le=65535)
    url: str | None = None  # how clients reach it; default http://host:port
    workers: int | None = None  # grading processes; None = cpu count
    timeout_s: float = Field(1.0, gt=0.0)  # hard per-item limit
    max_items: int = Field(1024, ge=1)  # per request
    max_item_chars: int = Field(500_000, ge=1)
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1)  # larger bodies get 413
    # Total grading time of one request: items not started within it are answered timed_out
    # (reason "request budget"), so a request ends within about request_budget_s + timeout_s.
    request_budget_s: float = Field(60.0, gt=0.0)
    api_token: Secret = None  # when set, POST /v1/verify needs "Authorization: Bearer <token>"
    worker_memory_mb: int | None = Field(2048, ge=64)  # address-space limit of each grading process
    # Ray Serve
    ray_min_replicas: int = 1
    ray_max_replicas: int = 4
    ray_target_ongoing_requests: int = 8
    ray_batch_size: int = 64
    ray_batch_wait_s: float = 0.01
    ray_replica_cpus: float = Field(1.0, gt=0.0)  # CPUs reserved per replica; its pool has max(1, int(cpus)) workers
    ray_num_cpus: int | None = None  # `rethinker serve verifier --ray` starts a local Ray with this many CPUs

    def base_url(self) -> str:
        return self.url or f"http://{self.host}:{self.port}"


class BufferConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8200, ge=0, le=65535)
    url: str | None = None
    admin_token: Secret = None  # bearer token for admin endpoints (None disables them)
    read_token: Secret = None  # when set, read endpoints require it too
    max_body_bytes: int = Field(64 * 1024, ge=1)  # request bodies over this get 413 (no endpoint takes a body)
    max_inflight_tasks: int = Field(64, ge=1)  # prompt queue backpressure
    reclaim_idle_s: float = Field(60.0, gt=0.0)  # tasks of dead consumers are reclaimed after this
    stats_window: int = Field(512, ge=2)  # points kept for the time series of the stats endpoint
    series_interval_s: float = Field(1.0, ge=0.0)  # min seconds between two time-series points
    request_ttl_s: int = Field(600, ge=0)  # a sample() batch is kept this long for idempotent retries
    rate_window_s: float = Field(30.0, gt=0.0)  # insert/sample rates of the stats are over this window
    task_cache_size: int = Field(256, ge=0)  # tasks (with images) a buffer client keeps decoded, by group id
    snapshot_dir: str = "runs/snapshots"

    def base_url(self) -> str:
        return self.url or f"http://{self.host}:{self.port}"


class RolloutConfig(Section):
    engine: Literal["hf", "vllm"] = "hf"
    host: str = "127.0.0.1"
    port: int = Field(8300, ge=0, le=65535)
    advertise_url: str | None = None
    server_id: str | None = None  # default: hostname-port
    batch_prompts: int = Field(4, ge=1)  # prompts claimed per generation batch
    heartbeat_s: float = Field(2.0, gt=0.0)
    heartbeat_ttl_s: float = Field(10.0, gt=0.0)
    verifier_timeout_s: float = 30.0
    verifier_retries: int = 5
    # After the retries above, an unreachable verifier is waited for (the batch's responses kept,
    # its claims extended): retry every verifier_outage_backoff_s, doubling up to ..._max_s, for at
    # most verifier_outage_max_s (0: until it is back or the server stops; then the batch fails
    # and its tasks go back to the queue).
    verifier_outage_max_s: float = Field(0.0, ge=0.0)
    verifier_outage_backoff_s: float = Field(1.0, gt=0.0)
    verifier_outage_backoff_max_s: float = Field(30.0, gt=0.0)
    partial_rollouts: bool = False
    device: str = "auto"  # hf engine: "auto" (cuda if available), "cpu", "cuda:0", ...
    hf_max_batch_rows: int = Field(64, ge=1)  # hf engine: rows (prompt x sample) per generate call
    hf_shared_prefill: bool = True  # hf engine: one prefill per distinct prompt, its KV cache repeated for the n rows
    claim_block_ms: int = Field(1000, ge=0)  # how long one claim waits for prompt tasks
    shutdown_grace_s: float = Field(60.0, ge=0.0)  # SIGTERM: finish the current batch within this, else return its tasks
    max_task_deliveries: int = Field(5, ge=1)  # a task whose batch failed this often is acked without a group
    # HTTP API (POST /v1/generate)
    api_token: Secret = None  # when set, POST /v1/generate needs "Authorization: Bearer <token>"
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1)  # larger request bodies get 413
    max_image_pixels: int = Field(40_000_000, ge=1)  # an image whose header says more pixels gets 400
    # vLLM
    gpu_memory_utilization: float = 0.85
    tensor_parallel_size: int = 1
    max_model_len: int = 8192  # context length (vLLM); also caps sampling.max_new_tokens of POST /v1/generate
    enforce_eager: bool = False


class WeightSyncConfig(Section):
    """Learner -> rollout weight broadcast (weight_transport, docs/weight-sync.md)."""

    backend: Literal["gloo", "nccl", "cuda_ipc"] = "gloo"
    master_addr: str = "127.0.0.1"  # address the learner's rendezvous store listens on / receivers dial
    master_port: int = Field(29600, ge=0, le=65535)  # first port tried per round; 0 = any free port
    port_span: int = Field(32, ge=1)  # rounds rotate over [master_port, master_port + port_span)
    bucket_mb: float = Field(256.0, gt=0.0)
    timeout_s: float = Field(60.0, gt=0.0)  # per collective; a hung receiver fails the round after this
    join_timeout_s: float = Field(10.0, gt=0.0)  # members that have not joined a round by then are left out
    token: Secret = None  # servers must present it to join a sync group
    # Refuse a config without `token` (set in every shipped non-demo config; `rethinker up`
    # generates a token for a local run that has none).
    require_token: bool = False
    heartbeat_s: float = Field(2.0, gt=0.0)  # receivers refresh their join record this often
    member_ttl_s: float = Field(15.0, gt=0.0)  # a join record older than this is not invited
    poll_s: float = Field(0.2, gt=0.0)  # receivers look for a new round at least this often
    staging: Literal["full", "stream"] = "full"  # receiver hands over all weights at once / bucket by bucket
    max_failure_backoff: int = Field(8, ge=0)  # a member failing k rounds in a row sits out min(2^k-1, this) rounds


class LearnerConfig(Section):
    zero_stage: Literal[0, 1, 2, 3] = 3
    precision: Literal["fp32", "bf16"] = "bf16"
    freeze_vision: bool = False
    gradient_checkpointing: bool = False
    lr: float = Field(1e-6, gt=0.0)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_ratio: float = Field(0.03, ge=0.0, le=1.0)
    min_lr_ratio: float = Field(0.5, ge=0.0, le=1.0)
    total_steps: int = Field(1000, ge=1)
    prompts_per_step: int = Field(512, ge=1)  # rollout volume: prompts x n responses
    micro_batch_size: int = Field(4, ge=1)
    sync_every: int = Field(1, ge=1)
    # async: rollout servers generate ahead with weights up to algorithm.ssr.staleness_bound versions
    #        old while the learner trains (the decoupled actor-learner pipeline);
    # sync:  the on-policy baseline: a round of prompts is published only once the learner has
    #        trained the previous one, and rollouts generate it only with the newest weights
    #        (staleness bound 0; needs sync_every = 1).
    sync_mode: Literal["async", "sync"] = "async"
    checkpoint_every: int = Field(50, ge=1)
    checkpoint_dir: str = "runs/latest/checkpoints"
    keep_checkpoints: int = 2
    eval_every: int = 0  # 0 disables periodic eval
    sample_timeout_s: float = 600.0
    # When the buffer cannot fill a batch (too few drawable responses within the reuse cap):
    #   train  train on the smaller batch (the loss stays a token mean; no row is repeated)
    #   wait   keep the draws and wait for more groups, then draw the rest, until the batch is full
    short_batch: Literal["train", "wait"] = "train"
    # End training early after this many consecutive rounds of `prompts_per_step` new groups with
    # nothing to train on (every group all-right or all-wrong: the policy has converged on the
    # data).  0 = never: keep asking for new prompts.
    stop_after_empty_rounds: int = Field(0, ge=0)
    tensorboard_dir: str | None = None  # default: <run_dir>/tensorboard
    wandb_project: str | None = None
    weight_sync: WeightSyncConfig = WeightSyncConfig()

    @model_validator(mode="after")
    def _sync_mode(self) -> "LearnerConfig":
        if self.sync_mode == "sync" and self.sync_every != 1:
            raise ValueError(
                f"sync_mode 'sync' needs sync_every = 1 (rollouts wait for the newest weights), got sync_every={self.sync_every}"
            )
        return self


class EvalConfig(Section):
    """Benchmark evaluation (``rethinker eval``, docs/evaluation.md) and the learner's periodic eval."""

    benchmarks: list[str] = ["mathvista", "mathverse", "mathvision", "mmmu_pro", "emma"]
    data_dir: str = "data/benchmarks"
    out_dir: str = "runs/eval"  # results go to <out_dir>/<model name>[-rethink] unless --out is given
    max_new_tokens: int = Field(2048, ge=1)
    batch_size: int = Field(8, ge=1)  # prompts per decoding batch
    force_rethink: bool = False  # continue each response after algorithm.rethink.eval_trigger
    max_items: int | None = Field(None, ge=1)  # per benchmark (first N in file order)
    servers: list[str] = []  # rollout server URLs to decode with; empty: a local engine
    judge_workers: int = Field(1, ge=0)  # verifier worker processes; 0 grades in-process
    judge_timeout_s: float = Field(5.0, gt=0.0)  # hard per-item grading limit (workers >= 1)
    option_text_rule: bool = True  # MC: an answer equal to the gold option's text counts
    precision_rule: bool = True  # MathVista floats: compare at the item's stated precision
    # learner hook (every learner.eval_every steps); empty benchmarks: data.eval_path as "virl"
    periodic_benchmarks: list[str] = []
    periodic_max_items: int | None = Field(None, ge=1)  # None: data.eval_max_items
    periodic_max_new_tokens: int | None = Field(None, ge=1)  # None: algorithm.sampling.max_new_tokens
    periodic_force_rethink: bool = False


class LauncherConfig(Section):
    """The local launcher (`rethinker up`): what it starts and how it supervises it.  A child that
    exits is restarted after `restart_backoff_s * 2^(k-1)` seconds (at most `restart_backoff_max_s`),
    k = its exits within the last `restart_window_s` seconds; more than `restart_max` exits in that
    window end the run.  The learner exiting with 0 (all steps done) ends the run."""

    rollout_servers: int = Field(2, ge=0)
    start_redis: bool = True  # start a supervised redis-server when redis.url does not answer
    redis_appendonly: bool = True  # that Redis keeps an AOF (fsync every second) in <run_dir>/redis
    health_timeout_s: float = 300.0
    restart_max: int = Field(5, ge=0)  # exits of one child tolerated within restart_window_s
    restart_window_s: float = Field(600.0, gt=0.0)
    restart_backoff_s: float = Field(1.0, ge=0.0)  # first restart delay; doubles per recent exit
    restart_backoff_max_s: float = Field(30.0, ge=0.0)
    # OMP/MKL threads of each child process (0 = leave unset).  On a small CPU box several torch
    # processes with default thread pools oversubscribe the cores and run ~10x slower.
    child_threads: int = Field(1, ge=0)
    progress_every_s: float = Field(30.0, gt=0.0)  # plain progress line period when the output is not a terminal
    warmup_sft_steps: int = 0  # CPU demo: short format warm-up before RL
    warmup_sft_lr: float | None = None  # learning rate of the warm-up (default learner.lr)
    demo_data_kinds: list[str] = ["dominant_color"]  # synthetic question kinds the demo generates
    demo_data_levels: list[int] = [0]  # difficulty levels of dominant_color (devtools/synth_data.py)
    demo_data_n: int = Field(2000, ge=8)  # synthetic rows (train + eval) the demo generates


class RethinkerConfig(Section):
    """The whole system's configuration."""

    run: RunConfig = RunConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    redis: RedisConfig = RedisConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    verifier: VerifierConfig = VerifierConfig()
    buffer: BufferConfig = BufferConfig()
    rollout: RolloutConfig = RolloutConfig()
    learner: LearnerConfig = LearnerConfig()
    eval: EvalConfig = EvalConfig()
    launcher: LauncherConfig = LauncherConfig()

    @model_validator(mode="after")
    def _required_secrets(self) -> "RethinkerConfig":
        ws = self.learner.weight_sync
        if ws.require_token and ws.token is None:
            raise ValueError(
                "learner.weight_sync.token: required (learner.weight_sync.require_token is true) but not set; "
                "set RETHINKER__LEARNER__WEIGHT_SYNC__TOKEN (or --set learner.weight_sync.token=...)"
            )
        return self


# Every secret field (dotted path) and the environment variable that sets it.
SECRET_FIELDS = (
    "redis.password",
    "buffer.admin_token",
    "buffer.read_token",
    "verifier.api_token",
    "rollout.api_token",
    "learner.weight_sync.token",
)


def env_name(dotted: str) -> str:
    """``learner.weight_sync.token`` -> ``RETHINKER__LEARNER__WEIGHT_SYNC__TOKEN``."""
    return ENV_PREFIX + "__".join(p.upper() for p in dotted.split("."))


def _get_path(cfg: BaseModel, dotted: str) -> Any:
    node: Any = cfg
    for p in dotted.split("."):
        node = getattr(node, p)
    return node


def secret_env(cfg: "RethinkerConfig") -> dict[str, str]:
    """Environment variables that carry every secret of ``cfg`` (set ones only), plus the Redis URL
    when it holds a password: what a child process needs next to a redacted config file."""
    env = {env_name(d): reveal(v) for d in SECRET_FIELDS if (v := _get_path(cfg, d)) is not None}
    if redact_url(cfg.redis.url) != cfg.redis.url:
        env[env_name("redis.url")] = cfg.redis.url
    return env  # type: ignore[return-value]


# --------------------------------------------------------------------------- loading


def _format_validation_error(err: ValidationError, data: Mapping[str, Any] | None = None) -> str:
    lines = []
    secret_names = {d.rsplit(".", 1)[1] for d in SECRET_FIELDS}
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        path = ".".join(loc)
        value = e.get("input")
        msg = str(e["msg"]).removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown field (value {value!r})")
        elif isinstance(value, dict) or (loc and loc[-1] in secret_names) or "url" in loc:
            # a section-level check (its input is the whole section) or a secret: never echo values
            head = msg.split(":", 1)[0]
            if not path:
                lines.append(msg)
            elif head.isidentifier():  # "url: ..." raised by section `path`'s own check
                lines.append(f"{path}.{msg}")
            else:
                lines.append(f"{path}: {msg}")
        else:
            lines.append(f"{path}: {msg} (got {value!r})")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def _set_path(data: dict[str, Any], dotted: str, value: Any, *, source: str) -> None:
    parts = [p for p in dotted.split(".")]
    if not dotted or any(not p for p in parts):
        raise ConfigError(f"{source}: bad field path {dotted!r}")
    node: Any = data
    walked = []
    for p in parts[:-1]:
        walked.append(p)
        nxt = node.get(p)
        if nxt is None:
            nxt = {}
            node[p] = nxt
        if not isinstance(nxt, dict):
            raise ConfigError(f"{source}: {'.'.join(walked)} is a value, not a section (setting {dotted})")
        node = nxt
    node[parts[-1]] = value


def _lookup(data: Mapping[str, Any], dotted: str) -> Any:
    node: Any = data
    for p in dotted.split("."):
        if not isinstance(node, Mapping) or p not in node:
            return None
        node = node[p]
    return node


def parse_overrides(overrides: Sequence[str]) -> list[tuple[str, Any]]:
    """``["a.b=1", ...]`` -> ``[("a.b", 1), ...]``; a malformed item raises ConfigError."""
    out = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.field=value")
        key, _, raw = item.partition("=")
        out.append((key.strip(), _parse_scalar(raw)))
    return out


def env_overrides(environ: Mapping[str, str] | None = None) -> list[tuple[str, Any]]:
    environ = os.environ if environ is None else environ
    out = []
    for key, raw in sorted(environ.items()):
        if key.startswith(ENV_PREFIX) and len(key) > len(ENV_PREFIX):
            dotted = ".".join(p.lower() for p in key[len(ENV_PREFIX) :].split("__"))
            out.append((dotted, _parse_scalar(raw)))
    return out


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    *,
    environ: Mapping[str, str] | None = None,
    generate: Mapping[str, Callable[[], Any]] | None = None,
) -> RethinkerConfig:
    """YAML file (optional) -> env overrides -> CLI overrides -> validated ``RethinkerConfig``.

    ``generate`` maps dotted fields to a factory called when no layer set the field (``rethinker
    up`` makes a weight-sync token this way)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping at top level, got {type(loaded).__name__}")
        data = loaded
    for dotted, value in env_overrides(environ):
        _set_path(data, dotted, value, source="environment")
    for dotted, value in parse_overrides(overrides):
        _set_path(data, dotted, value, source="--set")
    for dotted, make in (generate or {}).items():
        if _lookup(data, dotted) in (None, ""):
            _set_path(data, dotted, make(), source="generated")
    try:
        return RethinkerConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, data)) from None


def config_dict(cfg: RethinkerConfig, *, reveal_secrets: bool = False) -> dict[str, Any]:
    """The config as plain data; secrets (and a password in the Redis URL) show as ``***`` unless
    ``reveal_secrets``."""
    return cfg.model_dump(mode="json", context={_REVEAL: reveal_secrets})


def config_to_yaml(cfg: RethinkerConfig, *, reveal_secrets: bool = False) -> str:
    """YAML of ``cfg``, secrets redacted unless ``reveal_secrets`` (a redacted file is loaded back
    with the secrets from the environment: ``secret_env(cfg)``)."""
    return yaml.safe_dump(config_dict(cfg, reveal_secrets=reveal_secrets), sort_keys=False)


def config_to_json(cfg: RethinkerConfig, *, reveal_secrets: bool = False) -> str:
    """JSON of ``cfg`` (``config_from_json`` reads it back); secrets redacted unless ``reveal_secrets``."""
    if not reveal_secrets:
        import json

        return json.dumps(config_dict(cfg))
    return cfg.model_dump_json(context={_REVEAL: True})


def config_from_json(text: str) -> RethinkerConfig:
    """Inverse of ``config_to_json(cfg, reveal_secrets=True)``; used to hand a config to a child process."""
    try:
        return RethinkerConfig.model_validate_json(text)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None
