"""Training throughput of the presets on this machine: tokens/s, ms/iter, MFU, peak RSS.

    python benchmarks/train_throughput.py [--presets tiny course-58m] [--iters 20] [--vocab 2048]

Runs real optimizer steps (forward, backward, clip, AdamW) on random tokens through the same
`Trainer._step` the CLI uses. MFU is measured against this machine's own fp32 matmul peak
(a large square matmul timed here), so the figure is comparable across machines.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from banglaslm.config import build_config  # noqa: E402
from banglaslm.trainer import Trainer  # noqa: E402


def matmul_peak_gflops(dtype=torch.float32, n=2048, reps=10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def fake_data(folder: Path, vocab: int, n_tokens: int = 2_000_000) -> None:
    """A data folder of random tokens (throughput does not depend on the text)."""
    rng = np.random.default_rng(0)
    from tokenizers import Tokenizer, models

    vocab_map = {f"t{i}": i for i in range(vocab - 1)} | {"<|endoftext|>": vocab - 1}
    Tokenizer(models.WordLevel(vocab_map, unk_token="t0")).save(str(folder / "tokenizer.json"))
    from banglaslm.tokenizer import Tokenizer as Tok

    sha = Tok.from_file(folder / "tokenizer.json").sha256
    for split, n in (("train", n_tokens), ("val", 100_000)):
        rng.integers(0, vocab, n, dtype=np.uint16).tofile(folder / f"{split}.bin")
    meta = {"format": "banglaslm-data", "version": 1, "dtype": "uint16",
            "tokenizer": {"file": "tokenizer.json", "sha256": sha, "vocab_size": vocab, "eod_id": vocab - 1, "kind": "bench"},
            "splits": {"train": {"file": "train.bin", "tokens": n_tokens}, "val": {"file": "val.bin", "tokens": 100_000}}}
    (folder / "meta.json").write_text(json.dumps(meta))


def measure(preset: str, vocab: int, iters: int, overrides: dict) -> dict:
    cfg = build_config(preset, overrides=overrides)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        fake_data(data, vocab)
        trainer = Trainer(cfg, data, Path(tmp) / "run", progress=False)
        trainer.model.train()
        for it in range(3):  # warm-up: allocator, oneDNN kernel selection
            trainer._step(it)
        start = time.perf_counter()
        for it in range(iters):
            loss, _, _ = trainer._step(it)
        loss.item()
        seconds = (time.perf_counter() - start) / iters
        tokens = cfg.train.batch_size * cfg.train.grad_accum_steps * cfg.model.block_size
        return {"preset": preset, "params_M": trainer.model.num_params() / 1e6, "precision": trainer.precision,
                "ms_per_iter": seconds * 1e3, "tokens_per_s": tokens / seconds,
                "flops_per_token": trainer.model.flops_per_token()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "course-58m"])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--vocab", type=int, default=None, help="default: 2048 for tiny (quick start), 32100 otherwise (BanglaT5)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    overrides = dict(s.split("=", 1) for s in args.set)
    peak = matmul_peak_gflops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 matmul peak {peak:.0f} GFLOP/s")
    print(f"{'preset':<12} {'params':>8} {'vocab':>6} {'prec':>5} {'ms/iter':>9} {'tokens/s':>10} {'MFU':>6} {'peak RSS':>9}")
    for preset in args.presets:
        vocab = args.vocab or (2048 if preset == "tiny" else 32100)
        r = measure(preset, vocab, args.iters, overrides)
        mfu = r["tokens_per_s"] * r["flops_per_token"] / (peak * 1e9)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{preset:<12} {r['params_M']:>7.1f}M {vocab:>6} {r['precision']:>5} {r['ms_per_iter']:>9.1f} "
              f"{r['tokens_per_s']:>10,.0f} {mfu:>6.1%} {rss:>7.0f}MB")


if __name__ == "__main__":
    main()
