"""How fast this machine reads memory: the ceiling of batch-1 decoding, which must read every
weight once per token.

    python benchmarks/memory_bandwidth.py [--sizes-mb 2 8 20 55 110] [--repeats 30]

For each size, the best time of `torch.sum` over a float32 buffer of that size, read again and
again (as a decoder reads its weights token after token), with 1 thread and with all of
torch's threads. While the buffer fits in the caches the read is fast; once it does not, the
speed drops to what memory delivers. The 13.7 M-parameter model of generate_speed.py has
55 MB of matmul weights.
"""

from __future__ import annotations

import argparse
import time

import torch


def best_read_seconds(buffer: torch.Tensor, repeats: int) -> float:
    buffer.sum()  # fault the pages in, warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes-mb", type=float, nargs="+", default=[2, 8, 20, 55, 110])
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, float32 sums, best of {args.repeats}\n")
    print(f"{'MB':>6}  {'1 thread GB/s':>14}  {f'{threads} threads GB/s':>15}")
    for mb in args.sizes_mb:
        buffer = torch.randn(int(mb * 2**20) // 4)
        speeds = []
        for n in (1, threads):
            torch.set_num_threads(n)
            speeds.append(buffer.numel() * 4 / best_read_seconds(buffer, args.repeats) / 1e9)
        torch.set_num_threads(threads)
        print(f"{mb:6g}  {speeds[0]:14.1f}  {speeds[1]:15.1f}")


if __name__ == "__main__":
    main()
