"""The optimizer and what governs each update: AdamW, the learning-rate schedule (on steps, or
on the clock of a time-limited run), the device and the numeric precision (autocast). Small
pieces, so that the trainer, its tests and the benchmarks all use the same rules.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch

from ..config import TrainConfig
from ..errors import UserError
from ..model import GPT
from . import distributed


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' → bf16 where the hardware computes it natively, fp16 on older GPUs, else fp32."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        return "bf16" if native_bf16 else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise UserError("train.precision=fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
    return precision


def autocast_context(device: torch.device, precision: str):
    """The autocast context for `precision` ('fp32' means none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def lr_at(it: int, cfg: TrainConfig, progress: float | None = None) -> float:
    """Linear warm-up to the peak, then cosine decay to min_lr_ratio * peak at max_iters, or,
    in a time-limited run, at the end of the time (`progress`: the fraction of it used)."""
    peak, floor = cfg.learning_rate, cfg.learning_rate * cfg.min_lr_ratio
    if it < cfg.warmup_iters:
        return peak * (it + 1) / (cfg.warmup_iters + 1)
    if progress is None:
        progress = (it - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters)
    return floor + 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))) * (peak - floor)


def make_optimizer(model: GPT, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: not on norms, biases, or a tied embedding."""
    tied = model.lm_head.weight is model.tok_emb.weight
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:  # frozen (e.g. under LoRA adapters)
            continue
        if p.dim() >= 2 and not (tied and p is model.tok_emb.weight):
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel updates all parameters in one pass (CPU and CUDA in torch >= 2.4).
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), fused=True)


class Clock:
    """Seconds of training in a run, earlier sessions included, and the share of
    train.time_limit_min used, which drives the LR schedule of a time-limited run."""

    def __init__(self, limit_min: float, elapsed_before: float):
        self.limit_s, self.before = limit_min * 60, elapsed_before
        self.started: float | None = None
        self.used: float | None = None  # fraction of the limit used; None without one

    def start(self) -> None:
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return self.before if self.started is None else self.before + time.perf_counter() - self.started

    def over(self, it: int, env: distributed.DistEnv, device: torch.device, log_interval: int) -> bool:
        """Whether the time is used up. Rank 0's clock decides, at every step alone and at log
        steps under torchrun, so that every rank uses the same learning rate and stops together."""
        if self.limit_s <= 0:
            return False
        if not env.enabled or it % log_interval == 0 or self.used is None:
            self.used = distributed.from_main(self.elapsed() / self.limit_s, env, device)
        return self.used >= 1.0
