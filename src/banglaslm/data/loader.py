"""Token bins → training batches: random windows, one vectorised gather per batch.

Batch k is a pure function of (seed, stream, k): no sampler state is carried between steps,
so a resumed run draws exactly the batches an uninterrupted one would, and a background thread
may gather the next batch early without changing anything. Under torchrun, step k draws one
*global* batch of `world_size * batch_size` windows and rank r takes its slice, so N processes
with batch B/N see exactly what one process with batch B sees.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..errors import UserError
from .folder import TokenFile

TRAIN_STREAM, EVAL_STREAM = 0, 1


class BatchSampler:
    """Random (x, y) windows of `block_size` tokens; y is x shifted by one."""

    def __init__(self, tokens: TokenFile | np.ndarray, block_size: int, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, split: str = "train"):
        if len(tokens) < block_size + 1:
            fraction = "larger" if split == "val" else "smaller"
            raise UserError(
                f"the {split} split has {len(tokens):,} tokens, fewer than one block of {block_size} + 1; use more "
                f"text, prepare it with a {fraction} --val-fraction, or set a smaller model.block_size")
        self.tokens, self.block_size, self.batch_size, self.seed = tokens, block_size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self._offsets = np.arange(block_size + 1, dtype=np.int64)

    def get(self, step: int, micro: int = 0, stream: int = TRAIN_STREAM) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, 0, stream, step, micro])
        starts = rng.integers(0, len(self.tokens) - self.block_size, size=self.batch_size * self.world_size)
        starts = starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        if isinstance(self.tokens, TokenFile):
            rows = self.tokens.windows(starts, self.block_size + 1)
        else:  # an in-memory array: one vectorised gather
            rows = self.tokens[starts[:, None] + self._offsets]
        windows = torch.from_numpy(rows.astype(np.int64))
        return windows[:, :-1], windows[:, 1:]

    def state(self) -> dict:
        """Everything needed to reproduce the batch sequence (recorded in checkpoints)."""
        return {"kind": "stateless-seeded-global-batch", "seed": self.seed, "world_size": self.world_size,
                "block_size": self.block_size, "batch_size": self.batch_size}


class Prefetcher:
    """Gathers the next training micro-batch on a background thread while the current one
    computes, and moves batches to `device` (pinned first on CUDA)."""

    def __init__(self, sampler: BatchSampler, device: torch.device):
        self.sampler, self.device = sampler, device
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self.pending: tuple | None = None

    def _load(self, step: int, micro: int):
        x, y = self.sampler.get(step, micro)
        if self.device.type == "cuda":
            x, y = x.pin_memory(), y.pin_memory()
        return x, y

    def get(self, step: int, micro: int, next_key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch (step, micro) on the device; starts gathering `next_key` = (step, micro) meanwhile."""
        if self.pending is not None and self.pending[0] == (step, micro):
            x, y = self.pending[1].result()
        else:
            x, y = self._load(step, micro)
        self.pending = (next_key, self.pool.submit(self._load, *next_key))
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
