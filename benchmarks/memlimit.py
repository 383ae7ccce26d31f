"""Run a command with less memory than the data it handles: a memory cgroup (v1 or v2) capped at
a given size, where this user may create one (root on most Linux machines); else no cap.

    from memlimit import run_limited
    result = run_limited(["python", "-c", "..."], limit_bytes=2 << 30)

`result` holds the command's stdout and, when the cap was set, the peak of the summed
resident memory of every process in the cgroup (sampled every 50 ms: the command and any
workers it starts), the cgroup's own peak usage (which also counts the page cache it touched,
so it sits at the cap once files larger than it are read) and how often the kernel had to act
on the cap (failcnt / OOM events). The cgroup is removed afterwards.
"""

from __future__ import annotations

import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

V1 = Path("/sys/fs/cgroup/memory")
V2 = Path("/sys/fs/cgroup")


@dataclass
class Limited:
    stdout: str
    capped: bool
    peak_rss_bytes: int | None = None
    cgroup_peak_bytes: int | None = None
    cap_hits: int | None = None


def _make_cgroup(limit_bytes: int) -> tuple[Path, str] | None:
    name = f"banglaslm-bench-{os.getpid()}"
    for root, limit_file in ((V1, "memory.limit_in_bytes"), (V2, "memory.max")):
        if not (root / limit_file).exists() and not (root / "cgroup.controllers").exists():
            continue
        group = root / name
        try:
            group.mkdir()
            (group / limit_file).write_text(str(limit_bytes))
            return group, limit_file
        except OSError:
            if group.exists():
                group.rmdir()
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    if path.name == "memory.events":
        return sum(int(line.split()[1]) for line in text.splitlines() if line.split()[0] in ("max", "oom"))
    return int(text.split()[0])


def run_limited(cmd: list[str], limit_bytes: int, **kwargs) -> Limited:
    """Run `cmd` (check=True) inside a memory cgroup capped at `limit_bytes` when one can be made."""
    made = _make_cgroup(limit_bytes)
    if made is None:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs).stdout
        return Limited(out, capped=False)
    group, limit_file = made
    procs = str(group / "cgroup.procs")

    def enter() -> None:  # runs in the child before exec: the command and its workers are capped
        with open(procs, "w") as fh:
            fh.write(str(os.getpid()))

    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], _tree_rss(group / "cgroup.procs"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, preexec_fn=enter, **kwargs).stdout
        v1 = limit_file == "memory.limit_in_bytes"
        usage = _read_int(group / ("memory.max_usage_in_bytes" if v1 else "memory.peak"))
        hits = _read_int(group / ("memory.failcnt" if v1 else "memory.events"))
        return Limited(out, capped=True, peak_rss_bytes=peak[0], cgroup_peak_bytes=usage, cap_hits=hits)
    finally:
        done.set()
        sampler.join()
        group.rmdir()


def _tree_rss(procs: Path) -> int:
    """The summed VmRSS of the processes listed in a cgroup.procs file, in bytes."""
    total = 0
    for pid in procs.read_text().split():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total
