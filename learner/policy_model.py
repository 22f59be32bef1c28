"""DeepSpeed setup of the policy: distributed init, ZeRO 0-3, bf16/fp32, AdamW, the spec's schedule.

- ``init_distributed()``: gloo when ``DS_ACCELERATOR=cpu`` (or no CUDA), NCCL otherwise; a lone
  process without torchrun/deepspeed-launcher variables becomes a world of one on a free port.
- ``PolicyModel(cfg)``: loads the policy (``common.model_loading``), freezes the vision tower when
  ``learner.freeze_vision``, wraps it with ``deepspeed.initialize`` using a torch ``AdamW`` (so no
  FusedAdam/CPUAdam build) and a ``LambdaLR``: linear warm-up over ``warmup_ratio * total_steps``
  steps, then cosine down to ``min_lr_ratio * lr`` at ``total_steps``.  Gradient clipping is
  DeepSpeed's ``gradient_clipping``.  One learner step = one optimizer step: ``micro_step`` is called
  for each micro-batch (gradient accumulation), and DeepSpeed steps the optimizer at the
  accumulation boundary.
- ``full_parameters()``: the manifest (names, dtypes, full shapes; ZeRO-3 aware via ``ds_shape``) and
  an iterator gathering full tensors chunk by chunk (``GatheredParameters``); collective under ZeRO-3,
  so every rank iterates it.
"""

from __future__ import annotations

import math
import os
import socket
from contextlib import nullcontext
from typing import Any, Iterator

import torch

from common.config import RethinkerConfig
from common.logging import get_logger
from common.schemas.weights import TensorSpec, dtype_name

log = get_logger("learner")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def on_cpu() -> bool:
    return os.environ.get("DS_ACCELERATOR", "") == "cpu" or not torch.cuda.is_available()


_LONE_MARK = "RETHINKER_LONE_RANK_PID"  # the pid of a process that made itself a world of one


def init_distributed() -> tuple[int, int]:
    """Initialise torch.distributed for DeepSpeed (idempotent); returns ``(rank, world_size)``."""
    import torch.distributed as dist

    if on_cpu():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if not dist.is_initialized():
        # a lone process: no launcher set WORLD_SIZE, or this very process set it on an earlier
        # call (its group was destroyed since, e.g. between tests): rendezvous on a fresh port again
        lone = "WORLD_SIZE" not in os.environ or os.environ.get(_LONE_MARK) == str(os.getpid())
        if lone:
            os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
            os.environ[_LONE_MARK] = str(os.getpid())
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo" if on_cpu() else "nccl", auto_mpi_discovery=False)
        if lone:  # rendezvous done: do not hand our store's address down to child processes
            os.environ.pop("MASTER_PORT", None)
            os.environ.pop("MASTER_ADDR", None)
        if not on_cpu():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), dist.get_world_size()


def lr_factor(step: int, *, total_steps: int, warmup_ratio: float, min_lr_ratio: float) -> float:
    """Multiplier of the base lr after ``step`` completed optimizer steps (spec: warm-up 3 %, cosine to 0.5)."""
    warmup = int(math.ceil(warmup_ratio * total_steps))
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_fraction(cfg: RethinkerConfig) -> float:
    """Trained volume / rollout volume: ``ssr.train_fraction`` for the selecting modes (spec 3.5: half
    the rollout), 1 for plain GRPO, which trains on every response of a step."""
    ssr = cfg.algorithm.ssr
    return 1.0 if ssr.mode == "grpo" else ssr.train_fraction


def samples_per_step(cfg: RethinkerConfig) -> int:
    """Trained responses per learner step: prompts x n x the mode's train fraction."""
    return max(1, int(round(cfg.learner.prompts_per_step * cfg.algorithm.sampling.n * train_fraction(cfg))))


def grad_accum_steps(cfg: RethinkerConfig, world: int) -> int:
    n = samples_per_step(cfg)
    per = cfg.learner.micro_batch_size * world
    if n % per:
        from common.config import ConfigError

        raise ConfigError(
            f"learner.micro_batch_size: {n} trained samples per step (prompts_per_step x sampling.n x "
            f"the mode's train fraction) must be a multiple of micro_batch_size x world size = {per}"
        )
    return n // per


def ds_config(cfg: RethinkerConfig, *, world: int, grad_accum: int) -> dict[str, Any]:
    lc = cfg.learner
    zero: dict[str, Any] = {"stage": lc.zero_stage}
    if lc.zero_stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=False, stage3_param_persistence_threshold=0)
    return {
        "train_micro_batch_size_per_gpu": lc.micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": lc.micro_batch_size * grad_accum * world,
        "gradient_clipping": lc.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": lc.precision == "bf16"},
        "fp16": {"enabled": False},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }


def is_vision_param(name: str) -> bool:
    return name.startswith(("visual.", "model.visual.")) or ".visual." in name


class _DeepSpeedForward:
    """What ``teacher_forced_logprobs_batch`` needs of a model, routed through the DeepSpeed-wrapped
    model (its forward installs the gradient-accumulation hooks)."""

    def __init__(self, ds_model: Any) -> None:  # deepspeed.DeepSpeedEngine (untyped)
        self._ds_model = ds_model
        self.config = ds_model.module.config

    def parameters(self):
        return self._ds_model.module.parameters()

    def __call__(self, **kwargs: Any) -> Any:
        return self._ds_model(**kwargs)


class PolicyModel:
    """The trainable policy under DeepSpeed, plus an optional frozen reference model.

    ``ds_model`` is what ``deepspeed.initialize`` returns (DeepSpeed's own engine object); ``module``
    the transformers model inside it."""

    def __init__(self, cfg: RethinkerConfig, *, model: torch.nn.Module | None = None, with_reference: bool | None = None) -> None:
        import deepspeed

        from common.model_loading import load_model

        from devtools.tiny_model import ensure_model

        self.cfg = cfg
        lc = cfg.learner
        self.rank, self.world = init_distributed()
        self.grad_accum = grad_accum_steps(cfg, self.world)
        self.model_path = ensure_model(cfg.model) if model is None else getattr(model, "name_or_path", cfg.model.path)
        device = "cpu" if on_cpu() else f"cuda:{torch.cuda.current_device()}"
        if model is None:
            model = load_model(
                self.model_path,
                dtype="float32",
                attn_implementation=cfg.model.attn_implementation,
                trust_remote_code=cfg.model.trust_remote_code,
                device=device,
            )
        model.train()
        if lc.freeze_vision:
            for name, p in model.named_parameters():
                if is_vision_param(name):
                    p.requires_grad_(False)
        if lc.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("no trainable parameter (is everything frozen?)")
        optimizer = torch.optim.AdamW(trainable, lr=lc.lr, betas=tuple(lc.betas), weight_decay=lc.weight_decay, eps=1e-8)
        total = lc.total_steps

        def make_sched(opt: Any) -> Any:
            return torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: lr_factor(s, total_steps=total, warmup_ratio=lc.warmup_ratio, min_lr_ratio=lc.min_lr_ratio)
            )

        self.ds_config = ds_config(cfg, world=self.world, grad_accum=self.grad_accum)
        self.ds_model, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=make_sched,
            config=self.ds_config,
            dist_init_required=False,
        )
        self.module = self.ds_model.module
        self.zero3 = lc.zero_stage == 3
        self.pad_token_id = self._pad_id()
        self.reference = None
        if with_reference is None:
            with_reference = cfg.algorithm.grpo.kl_coef > 0
        if with_reference:
            ref = load_model(
                self.model_path,
                dtype="bfloat16" if lc.precision == "bf16" else "float32",
                attn_implementation=cfg.model.attn_implementation,
                trust_remote_code=cfg.model.trust_remote_code,
                device=device,
            )
            ref.eval().requires_grad_(False)
            self.reference = ref

    def _pad_id(self) -> int:
        c = self.module.config
        for obj in (c, getattr(c, "text_config", None)):
            v = getattr(obj, "pad_token_id", None) if obj is not None else None
            if v is not None:
                return int(v)
        return 0

    # ---- training
    @property
    def model_for_forward(self) -> Any:
        return _DeepSpeedForward(self.ds_model)

    def backward(self, loss: torch.Tensor) -> None:
        self.ds_model.backward(loss)

    def micro_step(self) -> None:
        """After each micro-batch's backward: DeepSpeed steps the optimizer at the accumulation boundary."""
        self.ds_model.step()

    @property
    def at_boundary(self) -> bool:
        return bool(self.ds_model.is_gradient_accumulation_boundary())

    def grad_norm(self) -> float:
        g = self.ds_model.get_global_grad_norm()
        if g is None:
            return float("nan")
        return float(g.item() if torch.is_tensor(g) else g)

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0]) if self.scheduler is not None else self.cfg.learner.lr

    @property
    def global_steps(self) -> int:
        return int(self.ds_model.global_steps)

    # ---- full weights
    def manifest(self) -> list[TensorSpec]:
        specs = []
        for name, p in self.module.named_parameters():
            shape = tuple(int(s) for s in (p.ds_shape if hasattr(p, "ds_shape") else p.shape))
            specs.append(TensorSpec(name, dtype_name(p.dtype), shape))
        return specs

    def full_parameters(self, chunk_bytes: int = 256 * 1024 * 1024) -> Iterator[torch.Tensor]:
        """Full tensors in manifest order.  Under ZeRO-3 every rank must iterate (collective gathers);
        tensors are only valid until the next item is requested (copy them if you keep them)."""
        params = [p for _, p in self.module.named_parameters()]
        if not self.zero3:
            for p in params:
                yield p.detach()
            return
        import deepspeed

        chunk: list[Any] = []
        size = 0

        def flush(group: list[Any]) -> Iterator[torch.Tensor]:
            with deepspeed.zero.GatheredParameters(group, modifier_rank=None):
                for q in group:
                    yield q.detach()

        for p in params:
            nbytes = int(math.prod(p.ds_shape)) * p.element_size()
            if chunk and size + nbytes > chunk_bytes:
                yield from flush(chunk)
                chunk, size = [], 0
            chunk.append(p)
            size += nbytes
        if chunk:
            yield from flush(chunk)

    def gathered_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full CPU copies of every parameter (on rank 0; ``None`` elsewhere).  Collective."""
        out: dict[str, torch.Tensor] | None = {} if self.rank == 0 else None
        for spec, t in zip(self.manifest(), self.full_parameters()):
            if out is not None:
                out[spec.name] = t.to("cpu", copy=True).contiguous()
        return out

    def no_sync_context(self) -> Any:
        return nullcontext()
