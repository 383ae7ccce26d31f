"""`banglaslm eval` speed: windows scored one per forward pass against batched (the default),
side by side in one run, on a whole shared book.

    python benchmarks/eval_speed.py RUN_DIR [--book NAME] [--rounds 2]

RUN_DIR is any trained run (e.g. `banglaslm quickstart`'s quickstart/run). The book is read
from ../shared/data/bangla-literature (default: the largest). Both settings score the same
windows (stride = half the block, `banglaslm eval`'s default); the table gives the seconds, the
characters per second and the ratio, and checks the two totals agree. Then the same model's
training speed (`--train-steps` optimizer steps of the run's batch size and block on random
tokens: forward, backward, fused AdamW, in the run's precision) beside eval's tokens/s; eval
scores each token once per window it is new in and runs no backward pass, so it should be the
faster of the two.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from banglaslm.evaluation.perplexity import TOKENS_PER_PASS, score_tokens
from banglaslm.runfolder import load_model
from banglaslm.text import normalize

BOOKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "bangla-literature"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--book", help="file name in ../shared/data/bangla-literature (default: the largest)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=10, help="optimizer steps timed (best one kept)")
    args = parser.parse_args()
    book = BOOKS / args.book if args.book else max(BOOKS.glob("*.txt"), key=lambda p: p.stat().st_size)
    text = normalize(book.read_text(encoding="utf-8"))
    loaded = load_model(args.run_dir)
    block = loaded.config.model.block_size
    ids = [loaded.tokenizer.eod_id] + loaded.tokenizer.encode(text, normalized=True)
    settings = {"one window per pass": block, f"batched ({TOKENS_PER_PASS} tokens per pass)": TOKENS_PER_PASS}
    times: dict[str, list[float]] = {name: [] for name in settings}
    totals: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, per_pass in settings.items():
            start = time.perf_counter()
            totals[name] = score_tokens(loaded.model, ids, max(1, block // 2), tokens_per_pass=per_pass)
            times[name].append(time.perf_counter() - start)
    base = min(times["one window per pass"])
    print(f"{book.name}: {len(text):,} characters, {len(ids) - 1:,} tokens; run {args.run_dir} "
          f"(block {block}, {loaded.model.num_params():,} parameters); {torch.get_num_threads()} threads; "
          f"best of {args.rounds} alternating rounds; {time.strftime('%Y-%m-%d')}\n")
    print("| setting | seconds | characters/s | speed-up |")
    print("|---|---:|---:|---:|")
    for name, values in times.items():
        best = min(values)
        print(f"| {name} | {best:.1f} | {len(text) / best:,.0f} | {base / best:.2f}x |")
    a, b = totals.values()
    print(f"\ntotal nats: {a:,.3f} and {b:,.3f} (relative difference {abs(a - b) / abs(a):.1e})")
    evaluated = (len(ids) - 1) / min(times[list(settings)[1]])
    trained = training_tokens_per_s(loaded, args.train_steps)
    print(f"eval (batched) {evaluated:,.0f} tokens/s; training the same model {trained:,.0f} tokens/s "
          f"({loaded.config.train.batch_size} x {block} tokens per step); eval / training {evaluated / trained:.2f}x")


def training_tokens_per_s(loaded, steps: int) -> float:
    """Tokens/s of optimizer steps on the run's model, batch size, block and precision."""
    from banglaslm.training.optim import (
        autocast_context,
        make_optimizer,
        resolve_precision,
    )

    model, cfg = loaded.model.train(), loaded.config
    device = torch.device("cpu")
    precision = resolve_precision(cfg.train.precision, device, cfg.model.n_embd)
    optimizer = make_optimizer(model, cfg.train)
    shape = (cfg.train.batch_size, cfg.model.block_size)
    g = torch.Generator().manual_seed(0)
    best = float("inf")
    for i in range(steps + 2):  # two warm-up steps
        x, y = (torch.randint(0, cfg.model.vocab_size, shape, generator=g) for _ in range(2))
        start = time.perf_counter()
        with autocast_context(device, precision):
            _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= 2:
            best = min(best, time.perf_counter() - start)
    model.eval()
    return shape[0] * shape[1] / best


if __name__ == "__main__":
    main()
