"""Fully sharded data parallelism (PyTorch's FSDP2, `fully_shard`) and its sharded checkpoints.

Each rank stores 1/N of the weights, gradients and AdamW moments and gathers a block's full
weights only while that block computes. Checkpoints are one safetensors file per rank,
committed together through a pointer file, so a `kill -9` at any moment leaves a complete
set; the protocol and the limits (same process count on resume, no fp16) are in
docs/training.md.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from ..checkpoint import Checkpoint, load_checkpoint, rng_tensors, write_checkpoint
from ..errors import UserError
from ..fileio import atomic_write_json, read_json_or_fail
from ..runfolder import RunFolder
from . import distributed
from .distributed import DistEnv

POINTER = "sharded.json"
POINTER_FORMAT = "banglaslm-sharded-checkpoint"


# ---- wrapping ----------------------------------------------------------------------------
def mixed_precision(precision: str) -> MixedPrecisionPolicy:
    """Compute in bf16/fp16, but average gradients across ranks in fp32 (exact enough to sum)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:  # fp32: no casting at all
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


def check_setup(env: DistEnv, precision: str) -> None:
    """FSDP needs a process group to shard over, and a loss scaler that is not shard-aware
    (fp16's GradScaler decides per rank) would let ranks disagree about skipping a step."""
    if not env.enabled:
        raise UserError("train.parallel=fsdp needs 2+ processes under torchrun "
                        "(e.g. torchrun --nproc_per_node=2 -m banglaslm train ...); "
                        "a single process trains with the default train.parallel=ddp")
    if precision == "fp16":
        raise UserError("train.parallel=fsdp supports train.precision bf16 or fp32, not fp16; "
                        "set --set train.precision=bf16 (or fp32)")


def shard_model(model: torch.nn.Module, precision: str) -> None:
    """Shard in place: each transformer block is its own group (gathered just for its
    forward/backward), then the root takes the rest. The embedding and the head stay in the
    root group, so a tied matrix remains one shared parameter."""
    policy = mixed_precision(precision)
    for block in model.blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    if model.config.tied_head:
        assert model.lm_head.weight is model.tok_emb.weight, "FSDP broke the tied embedding"


# ---- the tensors of one rank -------------------------------------------------------------
def _unique_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers by name, a tied parameter once (under its first name).
    `keep_vars` returns the live objects, so identity finds ties even for sharded DTensors."""
    seen: set[int] = set()
    out = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            out[name] = tensor
    return out


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (the tensor itself otherwise), ready for safetensors."""
    if isinstance(tensor, DTensor):
        tensor = tensor.to_local()
    return tensor.detach().cpu().contiguous()


def _params_in_optimizer_order(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    # optimizer.state_dict() numbers parameters in this order.
    return [p for group in optimizer.param_groups for p in group["params"]]


def full_weights(model: torch.nn.Module, keep: bool) -> dict[str, torch.Tensor]:
    """Gather every full weight (a collective: all ranks call it); returned where `keep`.
    One tensor at a time, so no rank ever holds more than one gathered weight besides its shards."""
    out = {}
    for name, tensor in _unique_state(model).items():
        full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
        if keep:  # (the sharded master weights stay fp32 under mixed precision)
            out[name] = full.detach().cpu().contiguous()
    return out


# ---- saving ------------------------------------------------------------------------------
def _pointer_path(run: RunFolder) -> Path:
    return run.checkpoints / POINTER


def read_pointer(run: RunFolder) -> dict[str, Any] | None:
    path = _pointer_path(run)
    return read_json_or_fail(path) if path.is_file() else None


def _rank_file(folder: Path, rank: int) -> Path:
    return folder / f"rank{rank}.safetensors"


def _save_shard(path: Path, model, optimizer, state: dict[str, Any], env: DistEnv) -> None:
    """One rank's file: its local model and AdamW shards, its own RNG, and the JSON state."""
    tensors = {f"model.{k}": _local(v) for k, v in _unique_state(model).items()}
    opt = optimizer.state_dict()
    sharded = []  # which optimizer entries were DTensors (moments), vs plain (the step count)
    for idx, param_state in opt["state"].items():
        for key, value in param_state.items():
            if isinstance(value, DTensor):
                sharded.append(f"{idx}.{key}")
            tensors[f"optim.{idx}.{key}"] = _local(value)
    tensors.update(rng_tensors())
    shard = {"rank": env.rank, "world_size": env.world_size, "sharded_optim": sharded}
    write_checkpoint(path, tensors, {**state, "optimizer_groups": opt["param_groups"], "shard": shard})


def save(run: RunFolder, it: int, model, optimizer, state: dict[str, Any], env: DistEnv,
         improved: bool) -> Path:
    """Write a sharded checkpoint for iteration `it` plus the consolidated weights (see the
    protocol in docs/training.md). Every rank calls this."""
    committed = read_pointer(run)
    folder = run.checkpoints / f"step-{it:08d}"
    # Saving the iteration that is already committed (Ctrl-C right after a resume) would
    # rewrite a live checkpoint file by file; its content is identical, so keep it.
    if committed is None or committed["folder"] != folder.name:
        if env.is_main:
            shutil.rmtree(folder, ignore_errors=True)  # leftovers of a save killed half-way
            folder.mkdir(parents=True)
        distributed.barrier(env)
        _save_shard(_rank_file(folder, env.rank), model, optimizer, state, env)
    weights = full_weights(model, keep=env.is_main)
    distributed.barrier(env)  # every shard of this checkpoint is on disk: commit it
    latest = run.checkpoint("latest")
    if env.is_main:
        tensors = {f"model.{k}": v for k, v in weights.items()}
        best = run.checkpoint("best")
        best_first = improved and best.is_file()  # as Replicated.save: a failed write never leaves a record
        if best_first:  # of weights `best` does not hold; the first `best` comes after the commit
            write_checkpoint(best, tensors, state)
        atomic_write_json(_pointer_path(run), {"format": POINTER_FORMAT, "version": 1, "folder": folder.name,
                                               "iter": it, "world_size": env.world_size})
        write_checkpoint(latest, tensors, state)
        if improved and not best_first:
            write_checkpoint(best, tensors, state)
        for old in run.checkpoints.glob("step-*"):
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)
    distributed.barrier(env)  # nobody starts the next save's folder before the clean-up
    return latest


# ---- resuming ----------------------------------------------------------------------------
def load(run: RunFolder, env: DistEnv) -> Checkpoint:
    """This rank's file of the committed sharded checkpoint; same world size or a UserError."""
    pointer = read_pointer(run)
    if pointer is None or pointer.get("format") != POINTER_FORMAT:
        raise UserError(f"nothing to resume: no committed FSDP checkpoint ({_pointer_path(run)} is missing "
                        "or not a pointer file); start without `resume`")
    if pointer["world_size"] != env.world_size:
        raise UserError(f"{run.path} holds an FSDP checkpoint sharded over {pointer['world_size']} processes, "
                        f"but this resume has {env.world_size}; resume with torchrun "
                        f"--nproc_per_node={pointer['world_size']} (re-sharding is not supported)")
    return load_checkpoint(_rank_file(run.checkpoints / pointer["folder"], env.rank))


def restore(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ckpt: Checkpoint) -> None:
    """Copy this rank's saved shards into the live DTensors' local tensors, and rebuild
    AdamW's state with its moments sharded exactly like their parameters."""
    saved = ckpt.model_state()
    with torch.no_grad():
        for name, param in _unique_state(model).items():
            target = param.to_local() if isinstance(param, DTensor) else param
            if target.shape != saved[name].shape:
                raise UserError(f"{ckpt.path}: shard {name} has shape {tuple(saved[name].shape)}, "
                                f"expected {tuple(target.shape)}; the checkpoint is from another setup")
            target.copy_(saved[name])
    state = ckpt.optimizer_state()
    params = _params_in_optimizer_order(optimizer)
    sharded = set(ckpt.state["shard"]["sharded_optim"])
    for idx, param_state in state["state"].items():
        for key, local in param_state.items():
            if f"{idx}.{key}" in sharded:
                # zeros_like a DTensor parameter is a DTensor with the same sharding (what
                # AdamW itself creates on its first step); fill in this rank's part.
                moment = torch.zeros_like(params[idx])
                moment.to_local().copy_(local)
                param_state[key] = moment
    optimizer.load_state_dict(state)
