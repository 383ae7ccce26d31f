"""The C decode step alone: microseconds per step for float32, int8 and bf16 weights, at batch 1
and 16, as this CPU builds it and as CPUs with fewer instruction sets would.

    python benchmarks/decode_step.py [RUN_DIR] [--batch 1 16] [--builds native avx2 portable] [--repeats 5]
    git show REV:src/banglaslm/generation/csrc/decode.c > /tmp/old.c
    python benchmarks/decode_step.py --builds native --against /tmp/old.c   # a change, side by side

`CpuDecoder.step` in a loop of 100 steps from a 16-token cache, best of --repeats rounds that
run every (build, kind) in turn. Builds: `native` is what banglaslm uses (-march=native);
`avx2` the same source with AVX-512 turned off (a CPU with AVX2 + FMA only); `portable`
x86-64-v2 (no AVX2: the portable loops the compiler vectorizes by itself). `--against FILE`
adds FILE (another version of decode.c) built as `native`, timed in the same rounds.
Without RUN_DIR: the `small` shape, modern architecture, vocab 8000, random weights.
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from banglaslm.config import build_config  # noqa: E402
from banglaslm.generation import cpu_decode  # noqa: E402
from banglaslm.generation.cpu_decode import CpuDecoder  # noqa: E402
from banglaslm.model import GPT  # noqa: E402
from banglaslm.quantize import quantize_model  # noqa: E402

BUILDS = {"native": [], "avx2": ["-mno-avx512f"], "portable": ["-march=x86-64-v2"]}
KINDS = ("none", "int8", "bf16")


def models(run: str | None) -> dict[str, GPT]:
    if run:
        from banglaslm.runfolder import load_model

        return {kind: load_model(run, quantize=kind).model for kind in KINDS}
    cfg = build_config(overrides={"arch": "modern", "n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256,
                                  "dropout": 0.0, "vocab_size": 8000})
    torch.manual_seed(0)
    base = GPT(cfg.model).eval()
    return {kind: quantize_model(copy.deepcopy(base), kind) for kind in KINDS}


def step_seconds(model: GPT, lib, batch: int, steps: int = 100) -> float:
    decoder = CpuDecoder(model, lib)
    cache = model.new_cache(batch)
    model(torch.ones(batch, 16, dtype=torch.long), cache=cache)
    tokens = torch.full((batch,), 5)
    start = time.perf_counter()
    for _ in range(steps):
        decoder.step(cache, tokens)
    return (time.perf_counter() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", nargs="?")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--builds", nargs="+", default=list(BUILDS), choices=list(BUILDS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--against", type=Path, help="another decode.c, built as native beside the others")
    args = ap.parse_args()
    builds = [(name, BUILDS[name], cpu_decode.SOURCE) for name in args.builds]
    builds += [("against", [], args.against)] if args.against else []
    with tempfile.TemporaryDirectory() as tmp:
        libs = {}
        for name, flags, source in builds:
            out = Path(tmp) / f"{name}.so"
            subprocess.run(["cc", *cpu_decode.FLAGS, *flags, str(source), "-o", str(out), "-lm"], check=True)
            libs[name] = cpu_decode.load(out)
        stored = models(args.run_dir)
        cells = [(b, n, k) for b in args.batch for n in libs for k in KINDS]
        best = dict.fromkeys(cells, float("inf"))
        with torch.inference_mode():
            for b, n, k in cells:  # warm-up: first-touch of buffers and weights
                step_seconds(stored[k], libs[n], b, steps=5)
            for _ in range(args.repeats):
                for b, n, k in cells:
                    best[b, n, k] = min(best[b, n, k], step_seconds(stored[k], libs[n], b))
    print(f"{args.run_dir or 'random small modern model'}; {torch.get_num_threads()} threads; "
          f"µs per step, best of {args.repeats}")
    print(f"{'batch':>5} {'build':>9} " + " ".join(f"{k:>8}" for k in KINDS) + "  int8 / none")
    for b in args.batch:
        for n in libs:
            row = [best[b, n, k] for k in KINDS]
            print(f"{b:>5} {n:>9} " + " ".join(f"{1e6 * t:>8.0f}" for t in row) + f"  {row[0] / row[1]:>10.2f}x")


if __name__ == "__main__":
    main()
