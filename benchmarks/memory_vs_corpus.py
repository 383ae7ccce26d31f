"""Training memory does not grow with the corpus: peak RSS of the same short `tiny` run on a
small token file and on a multi-GB data folder of several shards (made here synthetically,
deleted afterwards), the large one run with less memory than its data (`--limit-gb`, a memory
cgroup: `memlimit.py`; uncapped, and said so, where none can be made).

    python benchmarks/memory_vs_corpus.py [--gigabytes 4] [--shards 8] [--limit-gb 2] [--iters 50]

The shards are memory-mapped and each batch gathers only its windows, so the operating system
keeps just the touched pages resident; RSS should be within a few MB either way.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memlimit import run_limited  # noqa: E402
from train_throughput import fake_data  # noqa: E402

CHILD = """
import resource, sys
from banglaslm.config import build_config
from banglaslm.training.trainer import train
cfg = build_config("tiny", overrides={"train.max_iters": int(sys.argv[3]), "train.eval_interval": 25})
train(sys.argv[1], sys.argv[2], cfg, progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def grow(folder: Path, gigabytes: float, vocab: int, shards: int) -> int:
    """Replace the training split by `shards` shards of random uint16 tokens, `gigabytes` GB in all."""
    rng = np.random.default_rng(1)
    chunk = 64 * 2**20  # tokens per write
    per_shard = int(gigabytes * 1e9 / 2 / shards)
    (folder / "train").mkdir()
    listed = []
    for k in range(shards):
        name = f"train/00000-{k:05d}.bin"
        with open(folder / name, "wb") as fh:
            for start in range(0, per_shard, chunk):
                rng.integers(0, vocab, min(chunk, per_shard - start), dtype=np.uint16).tofile(fh)
        listed.append({"file": name, "tokens": per_shard})
    (folder / "train.bin").unlink()
    meta = json.loads((folder / "meta.json").read_text())
    meta["version"] = 2
    meta["splits"]["train"] = {"tokens": per_shard * shards, "shards": listed}
    (folder / "meta.json").write_text(json.dumps(meta))
    return per_shard * shards


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gigabytes", type=float, default=4.0)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--limit-gb", type=float, default=2.0, help="memory cap of the large run")
    ap.add_argument("--iters", type=int, default=50)
    args = ap.parse_args()
    vocab = 1024
    print(f"{'train split':>12} {'shards':>6} {'tokens':>15} {'memory cap':>11} {'peak RSS':>9} {'seconds':>8}")
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        for label, gb in (("small", None), ("large", args.gigabytes)):
            data = Path(tmp) / label
            data.mkdir()
            fake_data(data, vocab, n_tokens=1_000_000)
            tokens = grow(data, gb, vocab, args.shards) if gb else 1_000_000
            size = sum(p.stat().st_size for p in data.rglob("*.bin") if "val" not in p.name)
            cmd = [sys.executable, "-c", CHILD, str(data), str(Path(tmp) / f"run-{label}"), str(args.iters)]
            start = time.perf_counter()
            if gb:
                result = run_limited(cmd, int(args.limit_gb * 2**30))
                out, cap = result.stdout, f"{args.limit_gb:g} GiB" if result.capped else "none"
            else:
                out, cap = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout, "none"
            rss_mb = int(out.split()[-1]) / 1024
            print(f"{size / 1e9:>10.3f}GB {args.shards if gb else 1:>6} {tokens:>15,} {cap:>11} {rss_mb:>7.0f}MB "
                  f"{time.perf_counter() - start:>8.1f}")
            shutil.rmtree(data)


if __name__ == "__main__":
    main()
