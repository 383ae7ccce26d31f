"""Token bins → training batches: random windows, one vectorised gather per batch (and for
fine-tuning, packed blocks of conversations in seeded epochs).

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
from .folder import TokenFile, TokenShards

TRAIN_STREAM, EVAL_STREAM = 0, 1
IGNORE = -100  # the target of a position without loss (torch's cross_entropy skips it)


class BatchSampler:
    """Random (x, y) windows of `block_size` tokens; y is x shifted by one."""

    def __init__(self, tokens: TokenShards | TokenFile | np.ndarray, block_size: int, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, split: str = "train"):
        tokens = TokenShards([tokens]) if isinstance(tokens, TokenFile) else tokens
        self.n_starts = tokens.starts(block_size + 1) if isinstance(tokens, TokenShards) else len(tokens) - block_size
        if self.n_starts < 1:
            prepare_with = "a larger --val-fraction or --doc-split page (or paragraph)" if split == "val" else \
                "a smaller --val-fraction"
            raise UserError(
                f"the {split} split has no stretch of one block of {block_size} + 1 tokens ({len(tokens):,} tokens in "
                f"all); use more text, prepare it with {prepare_with}, or set a smaller model.block_size")
        self.tokens, self.block_size, self.batch_size, self.seed = tokens, block_size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self._offsets = np.arange(block_size + 1, dtype=np.int64)

    def get(self, step: int, micro: int = 0, stream: int = TRAIN_STREAM) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, 0, stream, step, micro])
        starts = rng.integers(0, self.n_starts, size=self.batch_size * self.world_size)
        starts = starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        if isinstance(self.tokens, TokenShards):
            rows = self.tokens.windows(starts, self.block_size + 1)
        else:  # an in-memory array: one vectorised gather
            rows = self.tokens[starts[:, None] + self._offsets]
        windows = torch.from_numpy(rows.astype(np.int64))
        return windows[:, :-1], windows[:, 1:]

    @property
    def tokens_per_epoch(self) -> int:
        return len(self.tokens)

    def eval_batches(self, count: int):
        """The same `count` batches at every evaluation."""
        return (self.get(i, stream=EVAL_STREAM) for i in range(count))

    def state(self) -> dict:
        """Everything needed to reproduce the batch sequence (recorded in checkpoints)."""
        return {"kind": "stateless-seeded-global-batch", "seed": self.seed, "world_size": self.world_size,
                "block_size": self.block_size, "batch_size": self.batch_size}


class BlockSampler:
    """Batches of whole packed rows (ids, targets with IGNORE where there is no loss), in
    epochs: each epoch visits every row once, in an order drawn from (seed, epoch), and the
    global batch of micro-step (step, micro) is the next `world_size * batch_size` rows of that
    sequence, so it is a pure function of its position, like `BatchSampler`'s."""

    def __init__(self, rows: np.ndarray, targets: np.ndarray, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, grad_accum: int = 1, split: str = "train"):
        if len(rows) == 0:
            raise UserError(f"the {split} split holds no conversation with an answer to train on")
        self.rows, self.targets, self.batch_size, self.seed = rows, targets, batch_size, seed
        self.rank, self.world_size, self.grad_accum, self.split = rank, world_size, grad_accum, split
        self.block_size = rows.shape[1] - 1

    def _batch(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(self.rows[index, :-1])
        return x, torch.from_numpy(self.targets[index, 1:])

    def get(self, step: int, micro: int = 0, stream: int = TRAIN_STREAM) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.batch_size * self.world_size
        first = ((step * self.grad_accum + micro) * self.world_size + self.rank) * self.batch_size \
            if stream == TRAIN_STREAM else step * size + self.rank * self.batch_size
        positions = np.arange(first, first + self.batch_size)
        epochs, at = np.divmod(positions, len(self.rows))
        orders = {int(e): np.random.default_rng([self.seed, 1, stream, int(e)]).permutation(len(self.rows))
                  for e in np.unique(epochs)}
        return self._batch(np.array([orders[int(e)][i] for e, i in zip(epochs, at)]))

    def eval_batches(self, count: int):
        """Validation: every row once (this rank's share); training: the first `count` batches
        of a fixed order."""
        if self.split != "val":
            return (self.get(i, stream=EVAL_STREAM) for i in range(count))
        mine = np.arange(self.rank, len(self.rows), self.world_size)
        return (self._batch(mine[i:i + self.batch_size]) for i in range(0, len(mine), self.batch_size))

    @property
    def tokens_per_epoch(self) -> int:
        return len(self.rows) * self.block_size

    def state(self) -> dict:
        return {"kind": "seeded-epochs-of-packed-rows", "seed": self.seed, "world_size": self.world_size,
                "rows": len(self.rows), "block_size": self.block_size, "batch_size": self.batch_size}


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
