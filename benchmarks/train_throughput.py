"""Training throughput of the presets on this machine: tokens/s, ms/iter, MFU, peak RSS, and a
Hugging Face transformers GPT-2 of the same shape beside each.

    python benchmarks/train_throughput.py [--presets tiny course-58m] [--iters 20] [--vocab 2048] [--rounds 3]
    python benchmarks/train_throughput.py --presets cpu-ref tiny small --vocab 8000 --peer
    python benchmarks/train_throughput.py --presets small --vocab 8000 --set model.arch=gpt --profile
    python benchmarks/train_throughput.py --presets cpu-ref tiny --vocab 2048 --peer --set train.compile=true --compile-peer

Runs real optimizer steps (forward, backward, clip, AdamW) on random tokens through the same
`Trainer._step` the CLI uses. With --peer, `transformers.GPT2LMHeadModel` of the same layers,
heads, width, block, vocabulary and dropout (its SDPA attention; head tied when ours is)
trains on the same batches with the same fused AdamW, clipping and autocast precision, in
rounds that alternate with ours (best round each); the ratio is ours / GPT-2 tokens/s. Our
"modern" arch (RoPE, RMSNorm, SwiGLU) is not GPT-2's, so its row compares the same width and
depth, not the same arithmetic. MFU is measured against this machine's own fp32 matmul peak
(a large square matmul timed here), so the figure is comparable across machines. `--profile`
adds where the time of the measured steps goes (torch.profiler, operators by self time,
grouped into matmuls / attention / activations / norms / optimizer / the rest; with
`train.compile=true` inductor's generated kernels count in the group their name says).
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
from banglaslm.data.loader import Prefetcher  # noqa: E402
from banglaslm.training.trainer import Trainer  # noqa: E402


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


# Operator name fragments → the share of time they stand for (first match wins).
GROUPS = (("matmuls", ("addmm", "aten::mm", "bmm", "matmul", "linear")),
          ("calling compiled kernels (inductor's Python wrapper)", ("compiledfxgraph", "compiledfunction")),
          ("loss (log-softmax, NLL)", ("cross_entropy", "nll_loss", "log_softmax")),
          ("dropout masks", ("bernoulli", "dropout")),
          ("attention", ("attention", "softmax")),
          ("activations (GELU/SiLU) and products", ("gelu", "silu", "aten::mul")),
          ("optimizer (fused AdamW) and clipping", ("adam", "vector_norm", "foreach", "clip")),
          ("norms", ("norm",)),
          ("copies and layout", ("copy_", "clone", "contiguous", "cat", "index", "gather", "embedding")))


def print_profile(preset: str, prof) -> None:
    """Self CPU time of five steps, by operator group, then the top operators."""
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    shares: dict[str, float] = {}
    for e in events:
        name = e.key.lower()
        group = next((g for g, keys in GROUPS if any(k in name for k in keys)), "other")
        shares[group] = shares.get(group, 0.0) + e.self_cpu_time_total / total
    print(f"  {preset}: where 5 steps spend their time (self CPU)")
    for group, share in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"    {share:6.1%}  {group}")
    print("    top operators: " + ", ".join(f"{e.key} {e.self_cpu_time_total / total:.0%}"
                                        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:6]))


def gpt2_peer(cfg, vocab: int, precision: str, compile: bool = False):
    """A step function training transformers' GPT-2 of `cfg`'s shape like our trainer does;
    `compile`: its forward through torch.compile, as `train.compile=true` does ours."""
    import torch.nn.functional as F
    from transformers import GPT2Config, GPT2LMHeadModel

    from banglaslm.training.optim import autocast_context

    m, t = cfg.model, cfg.train
    model = GPT2LMHeadModel(GPT2Config(
        vocab_size=vocab, n_positions=m.block_size, n_embd=m.n_embd, n_layer=m.n_layer, n_head=m.n_head,
        resid_pdrop=m.dropout, embd_pdrop=m.dropout, attn_pdrop=m.dropout, tie_word_embeddings=m.tied_head,
        bos_token_id=vocab - 1, eos_token_id=vocab - 1, attn_implementation="sdpa")).train()
    forward = torch.compile(model) if compile else model
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=t.learning_rate, betas=(t.beta1, t.beta2), fused=True)
    g = torch.Generator().manual_seed(0)

    def step():
        x = torch.randint(0, vocab, (t.batch_size, m.block_size), generator=g)
        y = torch.randint(0, vocab, (t.batch_size, m.block_size), generator=g)
        with autocast_context(torch.device("cpu"), precision):
            logits = forward(input_ids=x).logits
            loss = F.cross_entropy(logits.float().view(-1, vocab), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    return step


def timed(step, iters: int) -> float:
    """Seconds per call of `step` over `iters` calls (the last loss read, so the work is done)."""
    start = time.perf_counter()
    for _ in range(iters):
        loss = step()
    loss.item()
    return (time.perf_counter() - start) / iters


def timed_rounds(steps: dict, iters: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each of `steps` (name → step function) in each of `rounds` rounds:
    three warm-up calls each (allocator, oneDNN kernel selection), then the rounds alternating
    between them, so that a slower moment of a shared machine hits them all alike."""
    for step in steps.values():
        timed(step, 3)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(timed(step, iters))
    return times


def best_of_rounds(steps: dict, iters: int, rounds: int) -> dict[str, float]:
    """Seconds per call of each of `steps`: the best of `timed_rounds`."""
    return {name: min(t) for name, t in timed_rounds(steps, iters, rounds).items()}


def our_step(trainer: Trainer) -> tuple:
    """(a step function running the trainer's own `_step` on successive iterations, its prefetcher
    to close)."""
    trainer.model.train()
    prefetch = Prefetcher(trainer.train_batches, trainer.device)
    counter = iter(range(10**9))
    return (lambda: trainer._step(next(counter), prefetch)[0]), prefetch


def measure(preset: str, vocab: int, iters: int, overrides: dict, profile: bool = False, peer: bool = False,
            rounds: int = 1, compile_peer: bool = False) -> dict:
    cfg = build_config(preset, overrides=overrides)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        fake_data(data, vocab)
        trainer = Trainer(cfg, data, Path(tmp) / "run", progress=False)
        ours, prefetch = our_step(trainer)
        try:
            steps = {"ours": ours} | ({"peer": gpt2_peer(cfg, vocab, trainer.precision, compile_peer)} if peer else {})
            best = best_of_rounds(steps, iters, rounds)
            if profile:
                from torch.profiler import ProfilerActivity
                with torch.profiler.profile(activities=[ProfilerActivity.CPU]) as prof:
                    timed(ours, 5)
                print_profile(preset, prof)
        finally:
            prefetch.close()
        tokens = cfg.train.batch_size * cfg.train.grad_accum_steps * cfg.model.block_size
        return {"preset": preset, "params_M": trainer.model.num_params() / 1e6, "precision": trainer.precision,
                "ms_per_iter": best["ours"] * 1e3, "tokens_per_s": tokens / best["ours"],
                "peer_tokens_per_s": tokens / best["peer"] if peer else None,
                "flops_per_token": trainer.model.flops_per_token()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "course-58m"])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--vocab", type=int, default=None, help="default: 2048 for tiny (quick start), 32100 otherwise (BanglaT5)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--profile", action="store_true", help="also print where the time goes")
    ap.add_argument("--peer", action="store_true", help="also train transformers' GPT-2 of the same shape")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds; the best of each is kept")
    ap.add_argument("--compile-peer", action="store_true", help="torch.compile the GPT-2 peer too")
    args = ap.parse_args()
    overrides = dict(s.split("=", 1) for s in args.set)
    if args.profile:  # inductor's generated kernels appear in the profile by name, not as one call
        import torch._inductor.config as inductor_config
        inductor_config.cpp.enable_kernel_profile = True
    peak = matmul_peak_gflops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 matmul peak {peak:.0f} GFLOP/s")
    peer_head = f" {'GPT-2 tokens/s':>14} {'ours / GPT-2':>12}" if args.peer else ""
    print(f"{'preset':<12} {'params':>8} {'vocab':>6} {'prec':>5} {'ms/iter':>9} {'tokens/s':>10} {'MFU':>6} "
          f"{'peak RSS':>9}{peer_head}")
    for preset in args.presets:
        vocab = args.vocab or (2048 if preset == "tiny" else 32100)
        r = measure(preset, vocab, args.iters, overrides, args.profile, args.peer, args.rounds, args.compile_peer)
        mfu = r["tokens_per_s"] * r["flops_per_token"] / (peak * 1e9)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peer = (f" {r['peer_tokens_per_s']:>14,.0f} {r['tokens_per_s'] / r['peer_tokens_per_s']:>11.2f}x"
                if args.peer else "")
        print(f"{preset:<12} {r['params_M']:>7.1f}M {vocab:>6} {r['precision']:>5} {r['ms_per_iter']:>9.1f} "
              f"{r['tokens_per_s']:>10,.0f} {mfu:>6.1%} {rss:>7.0f}MB{peer}")


if __name__ == "__main__":
    main()
