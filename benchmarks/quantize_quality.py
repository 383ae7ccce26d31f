"""What `--quantize` costs in quality: bits per character on held-out text, and how often greedy
continuations of a fixed set of Bangla prompts stay the same as float32's.

    python benchmarks/quantize_quality.py RUN_DIR --text BOOK.txt [--new-tokens 64] [--stride N]

For each kind (none, int8, bf16): `banglaslm eval`'s bits per character on every --text file
(sliding window, default stride half the block) and its ratio to float32; then greedy
continuations (`--new-tokens`, the engine as `banglaslm generate --greedy` runs it) of the
PROMPTS below, against float32's: how many are identical, and the share of tokens before the
first difference. Greedy decoding amplifies any change (one flipped near-tie changes the rest
of the continuation), so agreement is a strict measure; bits per character is the average one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from banglaslm.config import SamplingParams  # noqa: E402
from banglaslm.evaluation.perplexity import evaluate_file  # noqa: E402
from banglaslm.generation.engine import Engine  # noqa: E402
from banglaslm.runfolder import load_model  # noqa: E402

# Openings of everyday Bangla sentences, written for this benchmark.
PROMPTS = [
    "একদিন সকালে", "আমাদের গ্রামের নদী", "বৃষ্টি নামল", "মা বললেন", "স্কুলের মাঠে",
    "সন্ধ্যাবেলা আকাশে", "রাজা তাঁর মন্ত্রীকে", "বাজারে গিয়ে দেখি", "সে চিঠিটা খুলে", "পুরোনো বাড়িটার",
    "শীতের রাতে", "ছেলেটি দৌড়ে", "নৌকা ভাসিয়ে", "কবি লিখেছেন", "আমি জানি না কেন",
    "তখন সবাই চুপ", "দূরে একটা পাখি", "বইয়ের পাতা উল্টে", "গানের সুরে", "শহরের রাস্তায়",
]


def continuations(loaded, new: int) -> list[list[int]]:
    engine = Engine(loaded.model, loaded.tokenizer)
    return [c.token_ids for [c] in engine.generate(PROMPTS, SamplingParams(max_new_tokens=new, greedy=True))]


def agreement(ours: list[list[int]], ref: list[list[int]]) -> tuple[int, float]:
    """(identical continuations, share of reference tokens before the first difference)."""
    same = sum(a == b for a, b in zip(ours, ref))
    lead = sum(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
               for a, b in zip(ours, ref))
    return same, lead / max(1, sum(len(b) for b in ref))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--text", nargs="+", required=True, help="held-out text files")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--stride", type=int, default=None)
    args = ap.parse_args()
    rows, ref = [], None
    for kind in ("none", "int8", "bf16"):
        loaded = load_model(args.run_dir, quantize=kind)
        start = time.perf_counter()
        bpc = [evaluate_file(loaded, path, stride=args.stride).bits_per_char for path in args.text]
        seconds = time.perf_counter() - start
        ids = continuations(loaded, args.new_tokens)
        ref = ref or (bpc, ids)
        rows.append((kind, bpc, agreement(ids, ref[1]), seconds))
    print(f"run {args.run_dir}; {len(PROMPTS)} prompts x {args.new_tokens} greedy tokens")
    print(f"{'--quantize':>10}  " + "  ".join(f"{Path(p).stem[:24]:>24}" for p in args.text)
          + f"  {'greedy identical':>16}  {'leading tokens equal':>20}  {'eval s':>6}")
    for kind, bpc, (same, lead), seconds in rows:
        cells = "  ".join(f"{b:.4f} bpc ({b / r - 1:+.2%})".rjust(24) for b, r in zip(bpc, ref[0]))
        print(f"{kind:>10}  {cells}  {f'{same}/{len(PROMPTS)}':>16}  {lead:>20.1%}  {seconds:>6.1f}")


if __name__ == "__main__":
    main()
