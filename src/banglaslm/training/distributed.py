"""Data parallelism through PyTorch's own engine: `torchrun` sets RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR / MASTER_PORT, and this module turns them into a process group.

    torchrun --nproc_per_node=4 -m banglaslm train --data D --out R ...             # one machine
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --master_port=29500 \\
             --nproc_per_node=8 -m banglaslm train ...                               # machine 0 of 2

Without those variables everything here is a no-op and training is a plain single process.
Backends: NCCL for CUDA devices, gloo for CPUs (what the tests use).
"""

from __future__ import annotations

import ctypes
import datetime
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def die_with_launcher() -> None:
    """Under torchrun (Linux): have the kernel kill this worker when its launcher dies. torchrun
    starts its workers in sessions of their own, so after a kill -9 of torchrun they ran on:
    one still joining the process group kept the run folder locked for the group's 30-minute
    timeout; one training went on writing checkpoints unseen. Killed, a worker is what a kill -9
    leaves: the run resumes from its last checkpoint."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    launcher = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != launcher or not _is_launcher(launcher):  # it died before the line above
        os.kill(os.getpid(), signal.SIGKILL)


def _is_launcher(pid: int) -> bool:
    """Whether `pid`, this worker's parent, is still its launcher. Only PID 1 is in doubt: an
    orphan's new parent, unless torchrun itself is PID 1 (a container's first process). A
    parent whose command line cannot be read is taken to be the launcher."""
    if pid != 1:
        return True
    try:
        command = Path("/proc/1/cmdline").read_bytes()
    except OSError:
        return True
    return b"torchrun" in command or b"torch.distributed" in command or b"torch/distributed" in command


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def setup(device_spec: str) -> tuple[DistEnv, str]:
    """Join the process group if launched by torchrun; return the env and the device to use."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv(), device_spec
    env = DistEnv(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = device_spec.startswith("cuda") or (device_spec == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(env.local_rank)
        device_spec = f"cuda:{env.local_rank}"
    elif device_spec == "auto":
        device_spec = "cpu"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                timeout=datetime.timedelta(minutes=30))
    return env, device_spec


# What a collective raises on the ranks left when another one died: gloo's TCP pair on the CPU,
# NCCL's DistBackendError on GPUs. Other backend errors (a CUDA fault, mismatched collectives)
# are bugs, left to their traceback.
_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "remote process exited")


def lost_a_peer(exc: BaseException) -> bool:
    """Whether `exc` is a collective failing because another process of the run stopped."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not isinstance(exc, RuntimeError):
        return False
    return any(s in str(exc) for s in _PEER_LOST)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def mean(value: float, env: DistEnv, device: torch.device) -> float:
    """Average a Python float over all ranks (identity in a single process)."""
    if not env.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / env.world_size


def total(value: float, env: DistEnv, device: torch.device) -> float:
    """Sum a Python float over all ranks (identity in a single process)."""
    return mean(value, env, device) * env.world_size


def from_main(value: float, env: DistEnv, device: torch.device) -> float:
    """Rank 0's value on every rank (e.g. its clock, so that all ranks decide alike)."""
    if not env.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t.item())


def any_rank(flag: bool, env: DistEnv, device: torch.device) -> bool:
    """True on every rank if it is true on any rank (e.g. one of them got Ctrl-C)."""
    if not env.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_rng_states(env: DistEnv) -> list[torch.Tensor]:
    """Every rank's torch RNG state (dropout differs per rank), collected on all ranks."""
    state = torch.get_rng_state()
    if not env.enabled:
        return [state]
    states: list = [None] * env.world_size
    dist.all_gather_object(states, state)
    return states


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()
