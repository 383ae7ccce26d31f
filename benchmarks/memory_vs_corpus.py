"""Training memory does not grow with the corpus: peak RSS of the same short `tiny` run on a
small token file and on a multi-GB one (made here synthetically, deleted afterwards).

    python benchmarks/memory_vs_corpus.py [--gigabytes 4] [--iters 50]

The bins are memory-mapped and each batch gathers only its windows, so the operating system
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
from train_throughput import fake_data  # noqa: E402

CHILD = """
import resource, sys
from banglaslm.config import build_config
from banglaslm.training.trainer import train
cfg = build_config("tiny", overrides={"train.max_iters": int(sys.argv[3]), "train.eval_interval": 25})
train(sys.argv[1], sys.argv[2], cfg, progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def grow(folder: Path, gigabytes: float, vocab: int) -> int:
    """Append random uint16 tokens to train.bin until it holds `gigabytes` GB."""
    rng = np.random.default_rng(1)
    chunk = 64 * 2**20  # tokens per write
    n = int(gigabytes * 1e9 / 2)
    with open(folder / "train.bin", "wb") as fh:
        for start in range(0, n, chunk):
            rng.integers(0, vocab, min(chunk, n - start), dtype=np.uint16).tofile(fh)
    meta = json.loads((folder / "meta.json").read_text())
    meta["splits"]["train"]["tokens"] = n
    (folder / "meta.json").write_text(json.dumps(meta))
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gigabytes", type=float, default=4.0)
    ap.add_argument("--iters", type=int, default=50)
    args = ap.parse_args()
    vocab = 1024
    print(f"{'train.bin':>12} {'tokens':>15} {'peak RSS':>10} {'seconds':>8}")
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        for label, gb in (("small", None), ("large", args.gigabytes)):
            data = Path(tmp) / label
            data.mkdir()
            fake_data(data, vocab, n_tokens=1_000_000)
            tokens = grow(data, gb, vocab) if gb else 1_000_000
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", CHILD, str(data), str(Path(tmp) / f"run-{label}"), str(args.iters)],
                                 check=True, capture_output=True, text=True).stdout
            rss_mb = int(out.split()[-1]) / 1024
            size = (data / "train.bin").stat().st_size
            print(f"{size / 1e9:>10.2f}GB {tokens:>15,} {rss_mb:>8.0f}MB {time.perf_counter() - start:>8.1f}")
            shutil.rmtree(data)


if __name__ == "__main__":
    main()
