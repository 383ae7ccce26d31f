"""Training on several data folders at once, sampled by weight (`train --data DIR[:WEIGHT] ...`).

A corpus mixture (news, books, web text) is usually built by weight, not by size: the small,
clean part is seen more often than its share of tokens. Each window of a batch first picks a
folder by weight, then a window inside it as that folder's own sampler would; like
`loader.BatchSampler`, batch k is a pure function of (seed, stream, k), so resume stays exact.
The folders, their weights and their identities are recorded in the run (`meta`), and a
resume with other folders or weights is refused like one on other data.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError, wrong_kind
from .folder import IDENTITY_KEYS, SPLITS, DataFolder, chars_per_token
from .loader import EVAL_STREAM, TRAIN_STREAM, BatchSampler

MIXTURE_STREAM_SALT = 2  # keeps the mixture's draws apart from BatchSampler's


def parse_spec(spec: str) -> tuple[str, float | None]:
    """`DIR[:WEIGHT]` → (DIR, weight or None); a colon inside DIR is kept when no number follows."""
    path, sep, weight = str(spec).rpartition(":")
    if not sep:
        return str(spec), None
    try:
        value = float(weight)
    except ValueError:
        if Path(path).is_dir() and not Path(spec).exists():  # DIR:typo, not a folder named with a colon
            raise UserError(f"the weight in `data_dir` entry {spec} is not a number ({weight!r}); write "
                            f"DIR:WEIGHT, e.g. {path}:0.3") from None
        return str(spec), None
    if not value > 0 or value == float("inf"):
        raise UserError(f"the weight in `data_dir` entry {spec} must be a positive number, got {weight}")
    return path, value


def open_data(specs: str | Path | list) -> DataFolder | "Mixture":
    """One data folder as itself; several (or one with a weight) as a `Mixture`."""
    try:
        specs = [specs] if isinstance(specs, (str, os.PathLike)) else list(specs)
    except TypeError:  # None, a number: not paths
        specs = [None]
    if not specs or not all(isinstance(s, (str, os.PathLike)) for s in specs):
        raise wrong_kind("data_dir", specs, "a data folder's path, or a list of DIR[:WEIGHT]", "e.g. \"data/mine\"")
    if len(specs) == 1 and parse_spec(str(specs[0]))[1] is None:
        return DataFolder(parse_spec(str(specs[0]))[0])
    return Mixture(specs)


def _folder_samplers(folder: DataFolder, *args) -> tuple:
    """`folder.samplers(*args)`, with a UserError about it naming the folder of the mixture."""
    try:
        return folder.samplers(*args)
    except UserError as exc:
        raise UserError(f"{folder.path} (of the mixture): {exc}") from None


def _digest(parts: list[dict]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class Mixture:
    """Several data folders with one tokenizer, offering what the trainer needs of a
    `DataFolder` (tokenizer, tokenizer_sha256, vocab_size, meta, samplers).

    Weights are all given or none: none means each folder in proportion to its training
    tokens (as if the folders were one); given weights are normalized to sum to 1."""

    def __init__(self, specs: list):
        parsed = [parse_spec(str(s)) for s in specs]
        if len({w is None for _, w in parsed}) > 1:
            raise UserError("give every `data_dir` folder a weight (DIR:WEIGHT) or none of them")
        self.folders = [DataFolder(path) for path, _ in parsed]
        seen: dict[Path, str] = {}
        for (path, _), folder in zip(parsed, self.folders):
            if folder.path.resolve() in seen:
                raise UserError(f"{path} is given twice in `data_dir` (as {seen[folder.path.resolve()]} too); give "
                                "each folder once, with the sum of its weights")
            seen[folder.path.resolve()] = path
        first = self.folders[0]
        for f in self.folders[1:]:
            if f.tokenizer_sha256 != first.tokenizer_sha256:
                raise UserError(f"{f.path} was tokenized with another tokenizer than {first.path}; a mixture needs one "
                                f"tokenizer: prepare it with --tokenizer {first.path}")
        raw = [w if w is not None else f.meta["splits"]["train"]["tokens"] for f, (_, w) in zip(self.folders, parsed)]
        scaled = np.array(raw, dtype=np.float64) / max(raw)  # first: weights of 1e308 summed to infinity
        self.weights = scaled / scaled.sum()
        self.names = _names([f.path for f in self.folders])
        self.by_tokens = parsed[0][1] is None  # no weights given: each folder's share of the training tokens
        self.path = " ".join(f"{f.path}:{w:.4g}" for f, w in zip(self.folders, self.weights))
        self.tokenizer_sha256, self.vocab_size, self.dtype = first.tokenizer_sha256, first.vocab_size, first.dtype
        self.meta = self._meta()

    def describe(self) -> str:
        """The folders' names and weights ("A 0.75, B 0.25"), and how the weights were chosen when
        none were given."""
        shares = ", ".join(f"{name} {weight:.3g}" for name, weight in zip(self.names, self.weights))
        return shares + (" (each folder's share of the training tokens)" if self.by_tokens else "")

    def tokenizer(self):
        return self.folders[0].tokenizer()

    def _meta(self) -> dict:
        """The first folder's meta with every folder's counts summed (per split, and of inputs),
        each folder's validation counts as `val/NAME`, and the mixture (folders, weights,
        identities) recorded. A pooled split's "chars_per_token" is weighted as windows are drawn
        (for bits per character); its chars and tokens are plain sums. Its "digest" is the
        mixture's identity, the same for both splits ("digest_alias": the same, as recorded before
        2026-12-03, with the folders' paths)."""
        parts = [{"name": n, "path": str(f.path), "weight": float(w),
                  "splits": {s: {k: f.meta["splits"][s][k] for k in IDENTITY_KEYS if k in f.meta["splits"][s]}
                             for s in SPLITS}}
                 for n, f, w in zip(self.names, self.folders, self.weights)]
        # The folders' data, names and weights, not their paths: "A:0.7" resumes "/data/A:0.7". A run
        # recorded before 2026-12-03 holds the identity with the paths as given: its `alias`.
        identity = _digest([{k: v for k, v in p.items() if k != "path"} for p in parts])
        splits = {s: {k: sum(f.meta["splits"][s].get(k, 0) for f in self.folders)
                      for k in ("documents", "tokens", "bytes", "chars")} | {"digest": identity,
                                                                             "digest_alias": _digest(parts)}
                  for s in SPLITS}
        for s in SPLITS:  # a window is drawn from a folder by weight, so its characters per token are too
            ratios = [chars_per_token(f.meta["splits"][s]) for f in self.folders]
            if None not in ratios:
                splits[s]["chars_per_token"] = float(np.dot(self.weights, ratios))
        for name, f in zip(self.names, self.folders):
            splits[f"val/{name}"] = {k: f.meta["splits"]["val"].get(k, 0) for k in ("documents", "tokens", "chars")}
        meta = {k: v for k, v in self.folders[0].meta.items() if k not in ("splits", "sources", "coverage")}
        for key in ("input_bytes", "text_files", "empty_documents"):  # counts of every folder, not the first's
            meta[key] = sum(f.meta.get(key) or 0 for f in self.folders)
        meta["sources"] = [source for f in self.folders for source in f.meta.get("sources", [])]
        return {**meta, "splits": splits, "mixture": parts}

    def samplers(self, block_size: int, batch_size: int, grad_accum: int, seed: int, rank: int = 0,
                 world_size: int = 1) -> tuple["MixtureSampler", "MixtureSampler"]:
        per_folder = [_folder_samplers(f, block_size, batch_size * world_size, grad_accum, seed) for f in self.folders]
        train, val = (MixtureSampler([p[i] for p in per_folder], self.weights, batch_size, seed, rank, world_size)
                      for i in (0, 1))
        val.parts = {name: f.samplers(block_size, batch_size, grad_accum, seed, rank, world_size)[1]
                     for name, f in zip(self.names, self.folders)}  # each folder's own validation
        return train, val


def _names(paths: list[Path]) -> list[str]:
    """Short, distinct names for the folders (their own names, numbered where they repeat)."""
    names = [p.name or str(p) for p in paths]
    return [n if names.count(n) == 1 else f"{n}.{i}" for i, n in enumerate(names)]


class MixtureSampler:
    """Batches whose windows come from the folders' samplers, each window's folder drawn by
    weight. Under torchrun the global batch is drawn and each rank takes its slice."""

    def __init__(self, samplers: list[BatchSampler], weights: np.ndarray, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        self.samplers, self.weights, self.batch_size, self.seed = samplers, weights, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.block_size = samplers[0].block_size
        self.parts: dict[str, BatchSampler] = {}

    def get(self, step: int, micro: int = 0, stream: int = TRAIN_STREAM) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.batch_size * self.world_size
        rng = np.random.default_rng([self.seed, MIXTURE_STREAM_SALT, stream, step, micro])
        which = rng.choice(len(self.samplers), size=size, p=self.weights)
        rows = torch.empty((size, self.block_size + 1), dtype=torch.int64)
        for i, sampler in enumerate(self.samplers):
            at = np.flatnonzero(which == i)
            if len(at):
                x, y = sampler.get(step, micro, stream)  # a whole global batch of this folder's windows
                rows[at] = torch.cat([x[:len(at)], y[:len(at), -1:]], dim=1)
        mine = rows[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        return mine[:, :-1], mine[:, 1:]

    @property
    def tokens_per_epoch(self) -> int:
        return sum(s.tokens_per_epoch for s in self.samplers)

    def eval_batches(self, count: int):
        return (self.get(i, stream=EVAL_STREAM) for i in range(count))

    def state(self) -> dict:
        return {"kind": "stateless-seeded-mixture", "seed": self.seed, "world_size": self.world_size,
                "weights": [float(w) for w in self.weights], "block_size": self.block_size,
                "batch_size": self.batch_size}
