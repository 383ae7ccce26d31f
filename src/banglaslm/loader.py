"""Token bins → training batches.

A data folder is read through `DataFolder` (meta.json checked). Token bins are memory-mapped
by `TokenFile`, and a batch is one vectorised gather of all its windows. After each gather
the mapping's resident pages are released (`madvise(MADV_DONTNEED)`, ~0.02 ms): the kernel
reads around every fault and, on file systems with large folios, maps 2 MB per touched
window, so without the release resident memory grew by 1.4 GB over a 50-step run on a 4 GB
bin (benchmarks/memory_vs_corpus.py). The data stays in the page cache; only this process's
mapping of it is dropped, so memory stays the size of a batch however large the corpus is.

Batch k is a pure function of (seed, stream, k): no sampler state has to be carried
between steps, a resumed run draws exactly the batches an uninterrupted run would have, and
a background thread may prepare the next batch early without changing anything.

Data parallelism: step k draws one *global* batch of `world_size * batch_size` window starts
and rank r gathers only its own slice. So N processes with batch B/N see exactly the windows
one process with batch B sees, and their averaged gradient is the same full-batch gradient.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .fileio import read_json
from .prepare import DATA_FORMAT_VERSION

TRAIN_STREAM, EVAL_STREAM = 0, 1


class DataFolder:
    """A prepared data folder: meta.json, tokenizer.json and memory-mapped bins."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise UserError(f"{self.path} is not a prepared data folder (no meta.json); run `banglaslm prepare` first")
        try:
            self.meta = read_json(meta_path)
            if self.meta.get("format") != "banglaslm-data":
                raise ValueError("not a banglaslm data folder")
            if self.meta.get("version", 0) > DATA_FORMAT_VERSION:
                raise ValueError(f"made by a newer banglaslm (version {self.meta['version']})")
            self.dtype = np.dtype(self.meta["dtype"])
            self.tokenizer_sha256 = self.meta["tokenizer"]["sha256"]
            self.vocab_size = int(self.meta["tokenizer"]["vocab_size"])
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{meta_path} is damaged or unsupported ({exc}); prepare the data again") from None

    @property
    def tokenizer_path(self) -> Path:
        return self.path / self.meta["tokenizer"]["file"]

    def tokens(self, split: str) -> "TokenFile":
        path = self.path / self.meta["splits"][split]["file"]
        expected = int(self.meta["splits"][split]["tokens"])
        if not path.is_file() or path.stat().st_size != expected * self.dtype.itemsize:
            raise UserError(f"{path} is missing or truncated (expected {expected:,} tokens); prepare the data again")
        return TokenFile(path, self.dtype)


class TokenFile:
    """A read-only, memory-mapped bin of token ids that does not stay resident."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path, self.dtype = path, np.dtype(dtype)
        self._map = np.memmap(path, dtype=self.dtype, mode="r")
        self._can_release = hasattr(mmap, "MADV_DONTNEED") and getattr(self._map, "_mmap", None) is not None

    def __len__(self) -> int:
        return len(self._map)

    def _release(self) -> None:
        if self._can_release:
            self._map._mmap.madvise(mmap.MADV_DONTNEED)

    def read(self, start: int = 0, count: int | None = None) -> np.ndarray:
        stop = len(self) if count is None else start + count
        out = np.array(self._map[start:stop])
        self._release()
        return out

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Rows of `length` tokens beginning at each of `starts`, in one vectorised gather."""
        out = self._map[starts[:, None] + np.arange(length, dtype=np.int64)]
        self._release()
        return out


class BatchSampler:
    """Random (x, y) windows of `block_size` tokens; y is x shifted by one."""

    def __init__(self, tokens: "TokenFile | np.ndarray", block_size: int, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, split: str = "train"):
        if len(tokens) < block_size + 1:
            raise UserError(
                f"the {split} split has {len(tokens):,} tokens, fewer than one block of "
                f"{block_size} + 1; use more text, a larger --val-fraction, or a smaller model.block_size"
            )
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
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
