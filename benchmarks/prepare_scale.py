"""`prepare` beyond one process: MB/s with 1 and 2 workers, and peak memory on a corpus larger
than the memory the process is given.

    python benchmarks/prepare_scale.py [--copies 4] [--big-mb 1000] [--limit-mb 768]

1. Throughput: the shared Bangla books, `--copies` times (each copy's paragraphs in another
   seeded order, as 8 JSONL files), prepared with BPE 8,000 as 1 task, as 2 tasks run by 1
   worker, and as 2 tasks run by 2 workers; then the same with the tokenizer given (read,
   normalize, encode and write only: the part tasks share out). MB/s counts UTF-8 bytes of
   normalized text.
2. Memory: a synthetic corpus of `--big-mb` MB (16 JSONL files of the books' paragraphs in
   seeded orders) prepared with 2 workers inside a memory cgroup capped at `--limit-mb` MB
   (`memlimit.py`; without the rights to make one, uncapped and said so). Reported: the peak
   of the summed resident memory of prepare and its workers, and the input size.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from memlimit import run_limited  # noqa: E402

from banglaslm.data.prepare import prepare  # noqa: E402

BOOKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "bangla-literature"
CHILD = """
import sys
from banglaslm.data.prepare import prepare
r = prepare([sys.argv[1]], sys.argv[2], workers=2, tokenizer_sample=int(sys.argv[3]), progress=False)
print(r.input_bytes, r.seconds)
"""


def paragraphs() -> list[str]:
    return [p for book in sorted(BOOKS.glob("*.txt")) for p in book.read_text(encoding="utf-8").split("\n\n")
            if p.strip()]


def write_corpus(folder: Path, paras: list[str], n_files: int, target_bytes: int, seed: int) -> int:
    """JSONL files of the paragraphs in seeded orders, about `target_bytes` in all."""
    folder.mkdir(parents=True)
    rng, written = np.random.default_rng(seed), 0
    handles = [open(folder / f"part-{i:03d}.jsonl", "w", encoding="utf-8") for i in range(n_files)]
    try:
        while written < target_bytes:
            for i in rng.permutation(len(paras)):
                line = json.dumps({"text": paras[i]}, ensure_ascii=False) + "\n"
                handles[written % n_files].write(line)
                written += len(line.encode("utf-8"))
                if written >= target_bytes:
                    break
    finally:
        for h in handles:
            h.close()
    return written


def throughput(tmp: Path, paras: list[str], copies: int) -> None:
    size = sum(len(p.encode("utf-8")) for p in paras) * copies
    corpus = tmp / "corpus"
    write_corpus(corpus, paras, 8, size, seed=1)
    print(f"1. throughput: {copies} copies of the shared books ({size / 1e6:.1f} MB of paragraphs), BPE 8,000")
    print(f"{'setup':<40} {'seconds':>8} {'MB/s':>7} {'shards':>7}")
    given = {"tokenizer": str(tmp / "out-1-1" / "tokenizer.json")}
    for label, workers, tasks, extra in (("1 task", 1, 1, {}), ("2 tasks, 1 worker", 1, 2, {}),
                                         ("2 tasks, 2 workers", 2, 2, {}),
                                         ("tokenizer given: 1 task", 1, 1, given),
                                         ("tokenizer given: 2 tasks, 2 workers", 2, 2, given)):
        start = time.perf_counter()
        r = prepare([str(corpus)], tmp / f"out-{workers}-{tasks}{'-given' if extra else ''}", workers=workers,
                    tasks=tasks, doc_split="paragraph", progress=False, **extra)
        seconds = time.perf_counter() - start
        shards = sum(len(s["shards"]) for s in r.meta["splits"].values())
        print(f"{label:<40} {seconds:>8.1f} {r.input_bytes / 1e6 / seconds:>7.2f} {shards:>7}")


def memory(tmp: Path, paras: list[str], big_mb: int, limit_mb: int) -> None:
    corpus = tmp / "big"
    size = write_corpus(corpus, paras, 16, big_mb * 10**6, seed=2)
    result = run_limited([sys.executable, "-c", CHILD, str(corpus), str(tmp / "big-out"), "20000000"],
                         limit_bytes=limit_mb * 2**20)
    input_bytes, seconds = result.stdout.split()
    cap = f"capped at {limit_mb} MiB" if result.capped else "NOT capped (no memory cgroup could be made)"
    print(f"\n2. memory: {size / 1e6:.0f} MB synthetic corpus (16 JSONL files), 2 workers, tokenizer sample "
          f"20 M characters, {cap}")
    print(f"{'input MB':>9} {'seconds':>8} {'MB/s':>6} {'peak RSS, all processes':>24} {'cgroup peak':>12} {'cap hits':>9}")
    peak = f"{result.peak_rss_bytes / 2**20:.0f} MiB" if result.peak_rss_bytes else "-"
    usage = f"{result.cgroup_peak_bytes / 2**20:.0f} MiB" if result.cgroup_peak_bytes else "-"
    print(f"{int(input_bytes) / 1e6:>9.0f} {float(seconds):>8.1f} {int(input_bytes) / 1e6 / float(seconds):>6.2f} "
          f"{peak:>24} {usage:>12} {result.cap_hits if result.cap_hits is not None else '-':>9}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--big-mb", type=int, default=1000)
    ap.add_argument("--limit-mb", type=int, default=768)
    ap.add_argument("--skip", choices=("throughput", "memory"), default=None)
    args = ap.parse_args()
    if not BOOKS.is_dir():
        sys.exit(f"shared corpus not found at {BOOKS}")
    paras = paragraphs()
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        if args.skip != "throughput":
            throughput(Path(tmp), paras, args.copies)
        if args.skip != "memory":
            memory(Path(tmp), paras, args.big_mb, args.limit_mb)


if __name__ == "__main__":
    main()
