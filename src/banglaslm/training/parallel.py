"""The one place where single-process, DDP and FSDP training differ.

`choose()` picks a strategy once, from `train.parallel` and the torchrun environment; the
trainer then calls the same methods whatever runs underneath: shard the model before the
optimizer exists, wrap it for the forward pass, decide whether a micro-batch synchronises
gradients, read the global gradient norm, save, find and restore checkpoints.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ..errors import UserError
from ..fileio import atomic_copy
from ..runfolder import RunFolder
from . import distributed
from .distributed import DistEnv


class Replicated:
    """Every process holds the whole model: one process, or DDP under torchrun. Rank 0 writes
    one checkpoint holding every rank's RNG state (dropout masks differ per rank)."""

    def __init__(self, env: DistEnv, run: RunFolder):
        self.env, self.run = env, run

    def check(self, precision: str) -> None:
        """Refuse settings this strategy cannot run (before any work)."""

    def shard(self, model: torch.nn.Module, precision: str) -> None:
        """Split the model across processes in place (before the optimizer is built)."""

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        if not self.env.enabled:
            return model
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def micro_batch(self, forward_model: torch.nn.Module, last: bool):
        """DDP averages gradients across ranks on the last micro-batch of a step only."""
        if last or not isinstance(forward_model, DistributedDataParallel):
            return contextlib.nullcontext()
        return forward_model.no_sync()

    def global_norm(self, total_norm: torch.Tensor) -> float:
        """The global gradient norm as a float (one host sync), the same on every rank."""
        return float(total_norm)

    def has_checkpoint(self) -> bool:
        """Whether the folder holds a run's weights: a new run there would replace them (its best
        checkpoint too, when the latest one was lost)."""
        return any(self.run.checkpoint(which).is_file() for which in ("latest", "best"))

    def load(self) -> Checkpoint:
        latest = self.run.checkpoint("latest")
        if not latest.is_file():
            if self.run.checkpoint("best").is_file():
                raise UserError(f"nothing to resume from: {latest} is missing; {self.run.resume_advice(latest)}")
            raise UserError(f"nothing to resume: {latest} does not exist; start without `resume`")
        ckpt = load_checkpoint(latest)
        saved = int(ckpt.state.get("world_size", 1))
        if saved != self.env.world_size:  # each process draws its own batches from its saved place in the data
            how = f"torchrun --nproc_per_node={saved}" if saved > 1 else "one process (without torchrun)"
            raise UserError(f"{self.run.path} was trained by {saved} process(es) and this resume has "
                            f"{self.env.world_size}; a run resumes with its number of processes (each one's place "
                            f"in the data and batch size are saved), so resume it with {how}, "
                            f"or start a new run from its weights with --init-from {self.run.path}")
        return ckpt

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, ckpt: Checkpoint) -> None:
        """Weights, AdamW state (a checkpoint without it, e.g. an import, starts a fresh
        optimizer) and this rank's RNG state."""
        model.load_state_dict(ckpt.model_state(), strict=False)
        if ckpt.has_optimizer_state():
            optimizer.load_state_dict(ckpt.optimizer_state())
        ckpt.restore_rng()
        rank_state = ckpt.tensors.get(f"rng.torch.rank{self.env.rank}")
        if rank_state is not None and ckpt.state.get("world_size", 1) == self.env.world_size:
            torch.set_rng_state(rank_state)

    def save(self, it: int, model, optimizer, state: dict[str, Any], improved: bool,
             extra: dict[str, torch.Tensor] | None = None) -> Path:
        """Write `latest` (and `best` when `improved`) with `model` (a module, or its tensors by
        name) and `extra` tensors; a collective call under DDP."""
        rng_states = distributed.gather_rng_states(self.env)
        latest = self.run.checkpoint("latest")
        if self.env.is_main:
            extra = dict(extra or {})
            if self.env.enabled:
                extra.update({f"rng.torch.rank{r}": s for r, s in enumerate(rng_states)})
            # Replacing a `best`, write it first: a write that fails (a full disk) then leaves
            # `latest`, and the best_val it records, as they were, never recording weights that
            # `best` does not hold. The first `best` comes after `latest` (which readers use
            # while there is none), so that a run killed in between can be resumed.
            best = self.run.checkpoint("best")
            first = best if improved and best.is_file() else latest
            save_checkpoint(first, model, state, optimizer, extra_tensors=extra)
            if improved:
                atomic_copy(first, latest if first == best else best)
        distributed.barrier(self.env)
        return latest


class Sharded(Replicated):
    """FSDP: weights, gradients and AdamW state sharded across the processes (see `fsdp`)."""

    def __init__(self, env: DistEnv, run: RunFolder):
        super().__init__(env, run)
        # Imported only here: torch's FSDP and DTensor add about a second to start-up.
        from . import fsdp

        self.fsdp = fsdp

    def check(self, precision: str) -> None:
        self.fsdp.check_setup(self.env, precision)

    def shard(self, model: torch.nn.Module, precision: str) -> None:
        self.fsdp.shard_model(model, precision)

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        return model  # sharded in place already

    def micro_batch(self, forward_model: torch.nn.Module, last: bool):
        # FSDP reduces every micro-batch: skipping it would keep full gradients on each rank.
        return contextlib.nullcontext()

    def global_norm(self, total_norm: torch.Tensor) -> float:
        return float(total_norm.full_tensor())  # a replicated DTensor: the same on every rank

    def has_checkpoint(self) -> bool:
        return super().has_checkpoint() or self.fsdp.read_pointer(self.run) is not None

    def load(self) -> Checkpoint:
        return self.fsdp.load(self.run, self.env)  # this rank's shards

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, ckpt: Checkpoint) -> None:
        self.fsdp.restore(model, optimizer, ckpt)
        ckpt.restore_rng()

    def save(self, it: int, model, optimizer, state: dict[str, Any], improved: bool,
             extra: dict[str, torch.Tensor] | None = None) -> Path:
        if extra:
            raise ValueError("FSDP checkpoints hold no extra tensors (config.validate refuses what needs them)")
        return self.fsdp.save(self.run, it, model, optimizer, state, self.env, improved)


def choose(parallel: str, env: DistEnv, run: RunFolder) -> Replicated:
    """The strategy for `train.parallel` ("ddp" or "fsdp") in this process group."""
    return Sharded(env, run) if parallel == "fsdp" else Replicated(env, run)
