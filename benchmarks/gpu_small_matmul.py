"""What one small matmul costs on a GPU, with and without CUBLAS_WORKSPACE_CONFIG set: the
per-call time of a batch-1 nn.Linear (512 -> 2048, a decode step's shape) and of the bare
matmul, 500 calls after 10 of warm-up.

    python benchmarks/gpu_small_matmul.py [cublas|cublaslt]
    CUBLAS_WORKSPACE_CONFIG=:4096:8 python benchmarks/gpu_small_matmul.py

(BENCHMARKS.md, "On a GPU": the variable made each call ~8x dearer on an H200.) Without CUDA it
says so and exits 0.
"""

from __future__ import annotations

import os
import sys
import time

import torch


def per_call_us(fn, calls: int = 500) -> float:
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to measure")
        return
    library = sys.argv[1] if len(sys.argv) > 1 else "default"
    if library != "default":
        torch.backends.cuda.preferred_blas_library(library)
    setting = os.environ.get("CUBLAS_WORKSPACE_CONFIG", "unset")
    with torch.inference_mode():
        x, lin = torch.randn(1, 512, device="cuda"), torch.nn.Linear(512, 2048).cuda()
        for name, fn in (("F.linear+bias", lambda: lin(x)), ("mm only", lambda: x @ lin.weight.t())):
            print(f"CUBLAS_WORKSPACE_CONFIG {setting:>8}, blas {library}: {name}: {per_call_us(fn):.1f} us/call")


if __name__ == "__main__":
    main()
