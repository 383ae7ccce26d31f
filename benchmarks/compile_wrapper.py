"""Our compiled training step with inductor's default Python wrapper against its C++ wrapper
(`cpp_wrapper`: the generated kernels called from C++, not Python), beside transformers' GPT-2
trained eager, all three in one process in alternating rounds (best round of each kept):

    python benchmarks/compile_wrapper.py --presets cpu-ref tiny --vocab 2048 --iters 20 --rounds 5

Each variant is a `Trainer` with `train.compile=true` built while `torch.compile` is given the
variant's inductor options; the steps are the trainer's own `_step` on random tokens, as in
train_throughput.py (whose helpers this reuses). Prints tokens/s and the ratio to GPT-2 eager.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_throughput as tt  # noqa: E402

from banglaslm.config import build_config  # noqa: E402
from banglaslm.training.trainer import Trainer  # noqa: E402

VARIANTS = {"python wrapper": None, "C++ wrapper": {"cpp_wrapper": True}}


def measure(preset: str, vocab: int, iters: int, rounds: int) -> dict[str, float]:
    """tokens/s of each variant and of GPT-2 eager for `preset`."""
    cfg = build_config(preset, overrides={"train.compile": "true"})
    real_compile = torch.compile
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        tt.fake_data(data, vocab)
        steps, prefetchers = {}, []
        try:
            for name, options in VARIANTS.items():
                torch.compile = functools.partial(real_compile, options=options)
                trainer = Trainer(cfg, data, Path(tmp) / f"run-{len(steps)}", progress=False)
                steps[name], prefetch = tt.our_step(trainer)
                prefetchers.append(prefetch)
            torch.compile = real_compile
            steps["GPT-2 eager"] = tt.gpt2_peer(cfg, vocab, trainer.precision)
            best = tt.best_of_rounds(steps, iters, rounds)
        finally:
            torch.compile = real_compile
            for prefetch in prefetchers:
                prefetch.close()
    tokens = cfg.train.batch_size * cfg.train.grad_accum_steps * cfg.model.block_size
    return {name: tokens / seconds for name, seconds in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["cpu-ref", "tiny"])
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    # one forward function, compiled once per variant and preset: more entries than dynamo's default cache
    torch._dynamo.config.recompile_limit = 64
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 matmul peak "
          f"{tt.matmul_peak_gflops():.0f} GFLOP/s")
    print("| preset | " + " | ".join(f"{name}, tokens/s" for name in [*VARIANTS, "GPT-2 eager"])
          + " | " + " | ".join(f"{name} / GPT-2" for name in VARIANTS) + " |")
    print("|---" * (2 * len(VARIANTS) + 2) + "|")
    for preset in args.presets:
        speed = measure(preset, args.vocab, args.iters, args.rounds)
        print(f"| {preset} | " + " | ".join(f"{v:,.0f}" for v in speed.values()) + " | "
              + " | ".join(f"{speed[name] / speed['GPT-2 eager']:.2f}×" for name in VARIANTS) + " |", flush=True)


if __name__ == "__main__":
    main()
