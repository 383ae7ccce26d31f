"""Checkpoints: one safetensors file holding everything needed to continue a run exactly.

Tensors: `model.*` (weights), `optim.*` (AdamW moments and step counts), `rng.*` (the torch
CPU and CUDA generator states as byte tensors), `adapter.*` (a LoRA run's adapters). Everything else (config, iteration, optimizer
hyper-parameters, grad-scaler state, sampler state, loss history, tokenizer hash) is one JSON
string in the safetensors metadata. Nothing is pickled, so loading a checkpoint from a
stranger cannot run code.

One file means one atomic rename: after a crash or `kill -9` at any moment, `latest` is the
previous complete checkpoint or the new complete one. (FSDP runs write one such file per rank,
holding that rank's shards, and commit them together through a pointer file: see `fsdp`.)
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from .errors import UserError
from .fileio import write_safetensors

CHECKPOINT_FORMAT = "banglaslm-checkpoint"
ADAPTER_PREFIX = "adapter."  # a LoRA run's adapter tensors, named as in peft's files (without PEFT_PREFIX)
PEFT_PREFIX = "base_model.model."  # where peft's saved adapter files put the wrapped model's names
CHECKPOINT_VERSION = 1


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict with tied (shared) tensors stored once: safetensors forbids aliases."""
    seen: set[int] = set()
    out = {}
    for name, tensor in model.state_dict().items():
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen:
            continue
        seen.add(ptr)
        out[name] = tensor.detach().cpu().contiguous()
    return out


def rng_tensors() -> dict[str, torch.Tensor]:
    """This process's torch CPU and CUDA generator states, as byte tensors."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    return tensors


def checksum(tensor: torch.Tensor) -> str:
    """CRC-32 of a tensor's bytes (it catches every flipped bit; zlib computes it at GB/s)."""
    data = tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
    return f"{zlib.crc32(data):08x}"


def write_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """The one writer: `tensors` plus the JSON `state` and a checksum per tensor in the header,
    renamed into place atomically."""
    header = {"format": CHECKPOINT_FORMAT, "version": str(CHECKPOINT_VERSION),
              "state": json.dumps(state, ensure_ascii=False),
              "checksums": json.dumps({name: checksum(t) for name, t in tensors.items()})}
    write_safetensors(path, tensors, header)


def save_checkpoint(path: str | Path, model: torch.nn.Module | dict[str, torch.Tensor], state: dict[str, Any],
                    optimizer: torch.optim.Optimizer | None = None,
                    extra_tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Write model (a module, or its tensors by name; + optimizer, RNG, `extra_tensors`) and the
    JSON `state` atomically to `path`."""
    weights = model if isinstance(model, dict) else model_tensors(model)
    tensors = {f"model.{k}": v for k, v in weights.items()}
    tensors.update(extra_tensors or {})
    meta = dict(state)
    if optimizer is not None:
        opt = optimizer.state_dict()
        for idx, param_state in opt["state"].items():
            for key, value in param_state.items():
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
        meta["optimizer_groups"] = opt["param_groups"]
    tensors.update(rng_tensors())
    write_checkpoint(path, tensors, meta)


@dataclass
class Checkpoint:
    path: Path
    state: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    def model_state(self) -> dict[str, torch.Tensor]:
        return {k[len("model."):]: v for k, v in self.tensors.items() if k.startswith("model.")}

    def adapter(self) -> dict[str, torch.Tensor]:
        """A LoRA run's adapter tensors as peft names them (empty for any other run)."""
        return adapter_only(self.tensors)

    def fingerprint(self) -> str:
        """SHA-256 over the model tensors' names and checksums: equal for equal weights."""
        parts = sorted(f"{k}:{checksum(v)}" for k, v in self.model_state().items())
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def has_optimizer_state(self) -> bool:
        """False for weights alone (e.g. an imported model): training then starts a fresh AdamW."""
        return "optimizer_groups" in self.state

    def optimizer_state(self) -> dict[str, Any]:
        per_param: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in self.tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                per_param.setdefault(int(idx), {})[name] = value
        return {"state": per_param, "param_groups": self.state["optimizer_groups"]}

    def restore_rng(self) -> None:
        torch.set_rng_state(self.tensors["rng.torch"])
        cuda_states = [self.tensors[f"rng.cuda.{i}"] for i in range(torch.cuda.device_count())
                       if f"rng.cuda.{i}" in self.tensors]
        if cuda_states and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def read_state(path: str | Path) -> dict[str, Any] | None:
    """The JSON state of a checkpoint from its header alone (no tensors read); None when the
    file is missing or unreadable."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        return json.loads(header["state"]) if header.get("format") == CHECKPOINT_FORMAT else None
    except (SafetensorError, ValueError, KeyError, OSError, RuntimeError):
        return None


class DamagedCheckpoint(UserError):
    """A checkpoint file that cannot be read or fails its checksums; `advising` swaps the
    generic advice for a command's own (a resume reads `latest` only)."""

    def __init__(self, path: Path, reason: str, advice: str | None = None):
        other = {"best": "latest", "latest": "best"}.get(Path(path).stem)
        advice = advice or (f"use the other checkpoint (--checkpoint {other}) or train again" if other else "train again")
        super().__init__(f"checkpoint {path} is damaged or truncated ({reason}); {advice}")
        self.path, self.reason, self.advice = path, reason, advice

    def advising(self, advice: str) -> DamagedCheckpoint:
        return DamagedCheckpoint(self.path, self.reason, advice)

    def __reduce__(self):
        return type(self), (self.path, self.reason, self.advice)


def load_checkpoint(path: str | Path, weights_only: bool = False) -> Checkpoint:
    """Read a checkpoint; `weights_only` skips the optimizer and RNG tensors (for inference)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            if header.get("format") != CHECKPOINT_FORMAT:
                raise ValueError("not a banglaslm checkpoint")
            if int(header.get("version", 0)) > CHECKPOINT_VERSION:
                raise ValueError("written by a newer banglaslm")
            state = json.loads(header["state"])
            sums = json.loads(header.get("checksums", "{}"))  # (none in checkpoints from before them)
            keys = [k for k in f.keys() if not weights_only or k.startswith("model.")]
            tensors = {k: f.get_tensor(k) for k in keys}
        bad = [k for k, t in tensors.items() if k in sums and checksum(t) != sums[k]]
        if bad:
            raise ValueError(f"{len(bad)} tensor(s) fail their checksum, e.g. {bad[0]}")
    except (SafetensorError, ValueError, KeyError, OSError, RuntimeError) as exc:
        raise DamagedCheckpoint(path, str(exc)) from None
    return Checkpoint(path, state, tensors)


def tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape from a checkpoint's header, without reading any tensor."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise DamagedCheckpoint(Path(path), str(exc)) from None


def adapter_only(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The `adapter.*` tensors of a checkpoint's `tensors`, without the prefix."""
    return {k[len(ADAPTER_PREFIX):]: v for k, v in tensors.items() if k.startswith(ADAPTER_PREFIX)}
