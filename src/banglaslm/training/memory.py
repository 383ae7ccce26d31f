"""Will a config fit? An estimate of the memory training needs, checked before anything is
allocated, so that `train.batch_size=100000` is a one-line refusal instead of an allocator
traceback minutes later.

The estimate: 16 bytes per parameter (fp32 weights, gradients, two AdamW moments; 8 more
with `train.ema_decay`: the average, and the trained weights set aside while it is scored) plus, per
token of a micro-batch, about 16 bytes per vocabulary entry (logits and their gradient in
fp32), 130 per layer and channel, and 12 per layer, head and position of attention. The
per-token figures were fitted to the peak resident memory of `tiny`, `small` and `course-58m`
steps on the CPU (BENCHMARKS.md, "Training memory"); it is an estimate, so only a config
estimated above the machine's whole memory is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..config import RunConfig
from ..errors import UserError
from ..model import GPT

BYTES_PER_PARAM = 16
BYTES_PER_PARAM_AVERAGED = 8
BYTES_PER_TOKEN_VOCAB = 16
BYTES_PER_TOKEN_LAYER_CHANNEL = 130
BYTES_PER_TOKEN_LAYER_HEAD_POSITION = 12


def parameter_count(cfg: RunConfig) -> int:
    """Weights of the model `cfg` describes, counted on PyTorch's meta device (nothing allocated)."""
    with torch.device("meta"):
        return GPT(cfg.model).num_params()


def training_bytes(cfg: RunConfig, shards: int = 1, passes: int = 1) -> int:
    """Estimated peak memory of a training step of `cfg` in one process, its weights and AdamW
    state split over `shards` processes (FSDP), each micro-batch run in `passes` slices."""
    m, t = cfg.model, cfg.train
    per_token = (BYTES_PER_TOKEN_VOCAB * m.vocab_size + BYTES_PER_TOKEN_LAYER_CHANNEL * m.n_layer * m.n_embd
                 + BYTES_PER_TOKEN_LAYER_HEAD_POSITION * m.n_layer * m.n_head * m.block_size)
    per_param = BYTES_PER_PARAM + (BYTES_PER_PARAM_AVERAGED if t.ema_decay else 0)
    return per_param * parameter_count(cfg) // shards + t.batch_size // passes * m.block_size * per_token


def device_memory(device: torch.device) -> int | None:
    """The memory one process may use on `device` (a cgroup limit counts), or None if unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total


def plan_passes(cfg: RunConfig, device: torch.device, shards: int = 1) -> int:
    """Forward passes per micro-batch: 1 when `cfg` is estimated to fit in `device`'s memory;
    with `train.micro_batch=auto`, the fewest halvings of the micro-batch that fit. Otherwise a
    UserError with what to change."""
    need, have = training_bytes(cfg, shards), device_memory(device)
    if have is None or need <= have:
        return 1
    t = cfg.train
    if t.micro_batch == "auto":  # a batch that does not halve evenly ends in a smaller slice (weighted alike)
        passes = 2
        while passes <= t.batch_size and training_bytes(cfg, shards, passes) > have:
            passes *= 2
        if passes <= t.batch_size:
            return passes
    raise UserError(
        f"this config needs about {need / 2**30:,.1f} GiB to train (weights, AdamW state and the activations "
        f"of train.batch_size={t.batch_size} x model.block_size={cfg.model.block_size}), but {device.type} "
        f"memory is {have / 2**30:,.1f} GiB; lower train.batch_size (raise train.grad_accum_steps to keep the "
        "global batch), model.block_size or the model's size")
