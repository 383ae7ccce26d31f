"""The optimizer and what governs each update: AdamW (or Muon on the blocks' matrices), the
learning-rate schedule (on steps, or on the clock of a time-limited run), the device and the
numeric precision (autocast). Small pieces, so that the trainer, its tests and the benchmarks all
use the same rules.
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

# On a CPU with native bf16, the narrowest width from which bf16 autocast trains faster than fp32
# (benchmarks/cpu_precision.py; BENCHMARKS.md): below it the matmuls are too small to repay the casts.
BF16_CPU_MIN_WIDTH = 256


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512_BF16 or AMX)."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_precision(precision: str, device: torch.device, width: int) -> str:
    """'auto' → bf16 on GPUs that have it, fp16 on older GPUs; on a CPU, bf16 where it computes
    bf16 natively and the model is at least BF16_CPU_MIN_WIDTH wide (`width`: n_embd), else fp32.
    UserError for fp16 on a CPU."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_native_bf16() and width >= BF16_CPU_MIN_WIDTH else "fp32"
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
    """Linear warm-up to the peak, then the decay of `cfg.lr_schedule` to min_lr_ratio * peak at
    max_iters, or, in a time-limited run, at the end of the time (`progress`: the fraction of it
    used). cosine: half a cosine over the whole run after warm-up; wsd: the peak held, then a
    linear decay over the last `decay_fraction` of the run (Hägele et al. 2024, arXiv:2405.18392)."""
    peak, floor = cfg.learning_rate, cfg.learning_rate * cfg.min_lr_ratio
    if it < cfg.warmup_iters:
        return peak * (it + 1) / (cfg.warmup_iters + 1)
    if progress is None:
        progress = (it - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters)
    progress = min(progress, 1.0)
    if cfg.lr_schedule == "wsd":
        share = min(1.0, (1.0 - progress) / cfg.decay_fraction)
    else:
        share = 0.5 * (1.0 + math.cos(math.pi * progress))
    return floor + share * (peak - floor)


def make_optimizer(model: GPT, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only: not on norms, biases, or a tied embedding. With
    `cfg.optimizer == "muon"`, the blocks' matrices go to Muon instead (see `MuonAdamW`)."""
    tied = model.lm_head.weight is model.tok_emb.weight
    use_muon = cfg.optimizer == "muon"
    in_blocks = {id(p) for p in model.blocks.parameters()}
    orthogonal, decay, no_decay = [], [], []
    for p in model.parameters():
        if not p.requires_grad:  # frozen (e.g. under LoRA adapters)
            continue
        if use_muon and p.dim() == 2 and id(p) in in_blocks:
            orthogonal.append(p)
        elif p.dim() >= 2 and not (tied and p is model.tok_emb.weight):
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel updates all parameters in one pass (CPU and CUDA in torch >= 2.4).
    adamw = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), fused=True)
    if not orthogonal:
        return adamw
    muon = torch.optim.Muon([{"params": orthogonal, "lr_ratio": cfg.muon_lr_ratio}], weight_decay=cfg.weight_decay,
                            lr=cfg.learning_rate * cfg.muon_lr_ratio, adjust_lr_fn="match_rms_adamw")
    return MuonAdamW(muon, adamw)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every param group: `lr`, times the group's `lr_ratio` if it has one."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_ratio", 1.0)


class MuonAdamW:
    """Muon for the blocks' matrices and AdamW for the rest, as one optimizer: one list of param
    groups (Muon's first), one step, one state dict numbered as a single optimizer's would be, so
    the trainer, the gradient scaler and checkpoints treat it as any other. Muon (Jordan et al.
    2024; torch.optim.Muon) orthogonalizes each matrix's momentum by Newton-Schulz iterations;
    `match_rms_adamw` scales its update to AdamW's size (Liu et al. 2025, arXiv:2502.16982)."""

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer):
        self.parts = (muon, adamw)

    @property
    def param_groups(self) -> list[dict]:
        """The parts' own groups, read each time: loading a state gives the parts new group dicts,
        and a list made once would keep the old ones (the schedule then set nothing)."""
        return [g for part in self.parts for g in part.param_groups]

    def step(self, closure=None):
        for part in self.parts:
            part.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        state, groups, offset = {}, [], 0
        for part in self.parts:
            own = part.state_dict()
            state.update({offset + idx: value for idx, value in own["state"].items()})
            groups += [{**g, "params": [offset + i for i in g["params"]]} for g in own["param_groups"]]
            offset += sum(len(g["params"]) for g in own["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, saved: dict) -> None:
        """Load a state written by `state_dict`; UserError, with nothing loaded, for another optimizer's."""
        groups = saved["param_groups"]
        same = len(groups) == len(self.param_groups) and all(
            set(g) == set(mine) and len(g["params"]) == len(mine["params"]) for g, mine in zip(groups, self.param_groups))
        if not same:
            raise UserError("the checkpoint's optimizer state is not this Muon + AdamW's; resume with the run's "
                            "own train settings")
        offset, start = 0, 0
        for part in self.parts:
            own = groups[start:start + len(part.param_groups)]
            count = sum(len(g["params"]) for g in own)
            part.load_state_dict({
                "state": {int(i) - offset: v for i, v in saved["state"].items() if offset <= int(i) < offset + count},
                "param_groups": [{**g, "params": [i - offset for i in g["params"]]} for g in own]})
            offset, start = offset + count, start + len(own)


def decay_progress(elapsed_s: float, limit_s: float, warmup_end_s: float) -> float:
    """The share of a time-limited run's decay passed after `elapsed_s` seconds: of the time
    between the end of warm-up and the limit."""
    span = limit_s - warmup_end_s
    return (elapsed_s - warmup_end_s) / span if span > 0 else 1.0


class Clock:
    """Seconds of training in a run, earlier sessions included, and the share of
    train.time_limit_min used, which drives the LR schedule of a time-limited run."""

    def __init__(self, limit_min: float, elapsed_before: float, warmup_end_s: float | None = None):
        self.limit_s, self.before = limit_min * 60, elapsed_before
        self.started: float | None = None
        self.used: float | None = None  # fraction of the limit used; None without one
        self.warmup_end_s = warmup_end_s  # seconds into the run when warm-up ended (None: not yet)

    def schedule_progress(self, it: int, warmup_iters: int) -> float | None:
        """`lr_at`'s `progress` at iteration `it`: the share of the time after warm-up that has
        passed, so that the decay starts at the peak when warm-up ends, as it does in a run of
        max_iters (the share of the whole limit had a cosine drop 25% in one step there); None
        without a limit. From `used`, so that every rank computes the same."""
        if self.used is None or it < warmup_iters:
            return self.used  # lr_at counts warm-up steps, whatever this is
        if self.warmup_end_s is None:
            self.warmup_end_s = self.used * self.limit_s
        return decay_progress(self.used * self.limit_s, self.limit_s, self.warmup_end_s)

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
