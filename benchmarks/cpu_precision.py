"""When does bf16 pay on this CPU? Training steps in fp32 and in bf16 autocast, side by side in
alternating rounds, across model widths: the figures behind `precision=auto`'s rule on CPUs with
native bf16 (AVX512_BF16 / AMX), which picks bf16 only from `BF16_CPU_MIN_WIDTH` up.

    python benchmarks/cpu_precision.py [--widths 128 192 256 384] [--iters 10] [--rounds 3]

Each width is the `tiny` preset (4 layers, block 128, batch 16, modern arch) at that width, with
heads of 32, on random tokens of a 2,048 vocabulary, through the trainer's own `_step` (forward,
backward, clipping, fused AdamW). On a CPU without native bf16 the script says so and stops.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_throughput import best_of_rounds, fake_data, our_step  # noqa: E402

from banglaslm.config import build_config  # noqa: E402
from banglaslm.training.optim import BF16_CPU_MIN_WIDTH, cpu_has_native_bf16  # noqa: E402
from banglaslm.training.trainer import Trainer  # noqa: E402


def tokens_per_s(width: int, vocab: int, iters: int, rounds: int) -> dict[str, float]:
    """Best-round tokens/s of the `tiny` shape at `width`, per precision, rounds alternating."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        fake_data(data, vocab)
        steps, prefetchers = {}, []
        for precision in ("fp32", "bf16"):
            cfg = build_config("tiny", overrides={"model.n_embd": width, "model.n_head": width // 32,
                                                  "train.precision": precision})
            steps[precision], prefetch = our_step(Trainer(cfg, data, Path(tmp) / precision, progress=False))
            prefetchers.append(prefetch)
        try:
            best = best_of_rounds(steps, iters, rounds)
        finally:
            for prefetch in prefetchers:
                prefetch.close()
        tokens = cfg.train.batch_size * cfg.model.block_size
        return {name: tokens / seconds for name, seconds in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=int, nargs="+", default=[128, 192, 256, 384])
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not cpu_has_native_bf16():
        print("this CPU has no native bf16 (AVX512_BF16 or AMX): precision=auto is fp32 here at every width")
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; auto picks bf16 from width "
          f"{BF16_CPU_MIN_WIDTH}")
    print(f"{'width':>6} {'fp32 tokens/s':>14} {'bf16 tokens/s':>14} {'bf16 / fp32':>12}")
    for width in args.widths:
        r = tokens_per_s(width, args.vocab, args.iters, args.rounds)
        print(f"{width:>6} {r['fp32']:>14,.0f} {r['bf16']:>14,.0f} {r['bf16'] / r['fp32']:>11.2f}x")


if __name__ == "__main__":
    main()
