"""Our compiled training step under different inductor options, beside transformers' GPT-2
trained eager, all in one process in alternating rounds:

    python benchmarks/compile_options.py --presets cpu-ref tiny --vocab 2048 --iters 20 --rounds 5
    python benchmarks/compile_options.py --variants default "no asserts" "chunk 4096" --rounds 15

Each variant (VARIANTS: the default Python wrapper; the backward compiled whole by compiled
autograd; `cpp_wrapper`, the generated kernels called from C++; the wrapper's size and alignment checks off; larger or single-threaded chunks for the
generated loops) is a `Trainer` with `train.compile=true` built while `torch.compile` is given the
variant's inductor options; the steps are the trainer's own `_step` on random tokens, as in
train_throughput.py (whose helpers this reuses). Prints tokens/s of each (best round) and its
ratio to GPT-2 eager twice: from the best rounds, and the median with the range of the ratios
within each round, which a machine whose speed drifts over minutes moves less.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_throughput as tt  # noqa: E402

from banglaslm.config import build_config  # noqa: E402
from banglaslm.training.trainer import Trainer  # noqa: E402

PEER = "GPT-2 eager"
COMPILED_AUTOGRAD = "compiled autograd"
VARIANTS = {
    "default": None,
    # the backward as one graph traced at run time (torch._dynamo.compiled_autograd), not the
    # autograd engine calling each compiled region's backward: the default's options
    COMPILED_AUTOGRAD: None,
    "C++ wrapper": {"cpp_wrapper": True},
    "no asserts": {"size_asserts": False, "scalar_asserts": False, "alignment_asserts": False},
    "chunk 4096": {"cpp.min_chunk_size": 4096},
    "1-thread kernels": {"cpp.threads": 1},
}


def with_compiled_autograd(step):
    """`step` with its backward compiled whole by compiled autograd (torch 2.4+; a private API in
    torch 2.13, which is why the trainer does not use it: BENCHMARKS.md measured no steady gain)."""
    def step_compiled_backward():
        with torch._dynamo.compiled_autograd._enable(torch.compile):
            return step()
    return step_compiled_backward


def measure(preset: str, vocab: int, iters: int, rounds: int, variants: list[str]) -> dict[str, list[float]]:
    """Seconds per step of each variant and of GPT-2 eager for `preset`, one entry per round."""
    cfg = build_config(preset, overrides={"train.compile": "true"})
    real_compile = torch.compile
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        tt.fake_data(data, vocab)
        steps, prefetchers = {}, []
        try:
            for name in variants:
                torch.compile = functools.partial(real_compile, options=VARIANTS[name])
                trainer = Trainer(cfg, data, Path(tmp) / f"run-{len(steps)}", progress=False)
                steps[name], prefetch = tt.our_step(trainer)
                if name == COMPILED_AUTOGRAD:
                    steps[name] = with_compiled_autograd(steps[name])
                prefetchers.append(prefetch)
            torch.compile = real_compile
            steps[PEER] = tt.gpt2_peer(cfg, vocab, trainer.precision)
            return tt.timed_rounds(steps, iters, rounds)
        finally:
            torch.compile = real_compile
            for prefetch in prefetchers:
                prefetch.close()


def row(preset: str, times: dict[str, list[float]], tokens: int, variants: list[str]) -> str:
    """One table row: best-round tokens/s of each, best-round ratios, per-round ratio medians (range)."""
    speeds = [f"{tokens / min(times[name]):,.0f}" for name in [*variants, PEER]]
    best = [f"{min(times[PEER]) / min(times[name]):.2f}×" for name in variants]
    per_round = []
    for name in variants:
        ratios = [peer / ours for peer, ours in zip(times[PEER], times[name])]
        per_round.append(f"{statistics.median(ratios):.2f}× ({min(ratios):.2f}-{max(ratios):.2f})")
    return f"| {preset} | " + " | ".join(speeds + best + per_round) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["cpu-ref", "tiny"])
    ap.add_argument("--variants", nargs="+", default=["default", "C++ wrapper"], choices=list(VARIANTS))
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    # one forward function, compiled once per variant and preset: more entries than dynamo's default cache
    torch._dynamo.config.recompile_limit = 64
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 matmul peak "
          f"{tt.matmul_peak_gflops():.0f} GFLOP/s")
    names = args.variants
    print("| preset | " + " | ".join(f"{n}, tokens/s" for n in [*names, PEER])
          + " | " + " | ".join(f"{n} / GPT-2, best rounds" for n in names)
          + " | " + " | ".join(f"{n} / GPT-2, median of rounds (range)" for n in names) + " |")
    print("|---" * (3 * len(names) + 2) + "|")
    for preset in args.presets:
        cfg = build_config(preset)
        tokens = cfg.train.batch_size * cfg.train.grad_accum_steps * cfg.model.block_size
        print(row(preset, measure(preset, args.vocab, args.iters, args.rounds, names), tokens, names), flush=True)


if __name__ == "__main__":
    main()
