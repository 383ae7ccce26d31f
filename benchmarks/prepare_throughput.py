"""`prepare` throughput on the shared Bangla literature (25 books, 7.2 MB).

    python benchmarks/prepare_throughput.py [--vocab-size 8000]

Three measurements: the whole `prepare` with BPE training, the same with the tokenizer it
produced reused (`--tokenizer PATH`: read + normalize + encode + write, no training), and the
character tokenizer. MB/s counts UTF-8 bytes of the input files.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from banglaslm.data.prepare import prepare  # noqa: E402

BOOKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "bangla-literature"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab-size", type=int, default=8000)
    args = ap.parse_args()
    if not BOOKS.is_dir():
        sys.exit(f"shared corpus not found at {BOOKS}")
    size = sum(p.stat().st_size for p in BOOKS.glob("*.txt"))
    print(f"input: {BOOKS} ({size / 1e6:.2f} MB)")
    print(f"{'mode':<28} {'seconds':>8} {'MB/s':>7} {'tokens':>11} {'chars/token':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("bpe (train + encode)", {"tokenizer": "bpe", "vocab_size": args.vocab_size}, "bpe"),
                ("bpe, tokenizer reused", {"tokenizer": str(Path(tmp) / "bpe" / "tokenizer.json")}, "reuse"),
                ("char", {"tokenizer": "char"}, "char")]
        for label, kwargs, out in runs:
            start = time.perf_counter()
            r = prepare([str(BOOKS)], Path(tmp) / out, progress=False, **kwargs)
            seconds = time.perf_counter() - start
            tokens = sum(s["tokens"] for s in r.meta["splits"].values())
            chars = sum(s["chars"] for s in r.meta["splits"].values())
            print(f"{label:<28} {seconds:>8.2f} {size / 1e6 / seconds:>7.2f} {tokens:>11,} {chars / tokens:>12.2f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
