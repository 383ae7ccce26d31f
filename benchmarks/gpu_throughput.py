"""The course model on a GPU: training tokens/s and MFU, eager and compiled, beside Hugging Face
transformers' GPT-2 of the same shape with the same optimizer, in one run; peak memory; decode
tokens/s at batch 1 and 16.

    python benchmarks/gpu_throughput.py [--batch-size 64] [--steps 30] [--out results.json]

MFU = model FLOPs per token (PaLM's count, `GPT.flops_per_token`) x tokens/s / the GPU's own bf16
peak, measured here with large bf16 matmuls (so it is what this GPU sustains, not a datasheet
figure). Contenders alternate rounds; each round times `--steps` optimizer steps after warm-up
on random tokens (throughput only). Prints a markdown table; `--out` also writes JSON.
Without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def matmul_peak(n: int = 8192, repeats: int = 20) -> float:
    """Sustained bf16 matmul FLOP/s of this GPU: the best of a few timed batches of n x n products."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    best = 0.0
    for _ in range(3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        torch.cuda.synchronize()
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start))
    return best


def ours(vocab: int, compiled: bool):
    from banglaslm.config import build_config
    from banglaslm.model import GPT
    from banglaslm.training.optim import make_optimizer

    cfg = build_config("course-58m", overrides={"model.vocab_size": vocab, "model.dropout": 0.0})
    model = GPT(cfg.model).cuda()
    flops = model.flops_per_token()
    optimizer = make_optimizer(model, cfg.train)
    forward = torch.compile(model) if compiled else model

    def step(x, y):
        with torch.autocast("cuda", torch.bfloat16):
            _, loss = forward(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, flops, cfg.model.block_size


def transformers_gpt2(vocab: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    from banglaslm.config import build_config

    m = build_config("course-58m").model
    config = GPT2Config(vocab_size=vocab, n_positions=m.block_size, n_embd=m.n_embd, n_layer=m.n_layer,
                        n_head=m.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)

    def step(x, y):
        with torch.autocast("cuda", torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def timed(step, batch: int, block: int, vocab: int, steps: int) -> tuple[float, int]:
    """(tokens/s, peak bytes) over `steps` steps after 5 of warm-up (compilation included there)."""
    x = torch.randint(0, vocab, (batch, block), device="cuda")
    y = torch.randint(0, vocab, (batch, block), device="cuda")
    for _ in range(5):
        step(x, y)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    torch.cuda.synchronize()
    return batch * block * steps / (time.perf_counter() - start), torch.cuda.max_memory_allocated()


def embedded_tokenizer():
    """A BPE tokenizer (8,000) of the embedded corpus, for the decode measurement."""
    import tempfile
    from pathlib import Path

    from banglaslm.data.corpus import corpus_dir
    from banglaslm.data.prepare import prepare
    from banglaslm.tokenizer import Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        prepare([str(corpus_dir())], Path(tmp) / "data", vocab_size=8000, progress=False)
        return Tokenizer.from_file(Path(tmp) / "data" / "tokenizer.json")


def decode_speed(tok, batch: int, new_tokens: int = 200) -> float:
    """Generated tokens/s of our KV-cache engine on the GPU: the course shape with `tok`'s
    vocabulary (random weights, greedy, 16-token prompts)."""
    from banglaslm.config import SamplingParams, build_config
    from banglaslm.generation.engine import Engine
    from banglaslm.model import GPT

    cfg = build_config("course-58m", overrides={"model.vocab_size": tok.vocab_size, "model.dropout": 0.0})
    engine = Engine(GPT(cfg.model).cuda().eval(), tok)
    contexts = [[tok.eod_id] + tok.encode("একদিন সকালে আমরা নদীর ধারে হাঁটতে গেলাম")[:15] for _ in range(batch)]
    params = SamplingParams(greedy=True, max_new_tokens=new_tokens, logit_bias={tok.eod_id: -100.0})
    engine.generate_ids(contexts, params)  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = engine.generate_ids(contexts, params)
    torch.cuda.synchronize()
    return sum(len(c[0].token_ids) for c in out) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=32100, help="BanglaT5's vocabulary, as the course uses")
    parser.add_argument("--out")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to measure")
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    peak = matmul_peak()
    contenders = {}
    step, flops, block = ours(args.vocab, compiled=False)
    contenders["banglaslm, eager"] = step
    contenders["banglaslm, torch.compile"] = ours(args.vocab, compiled=True)[0]
    try:
        contenders["transformers GPT-2, eager"] = transformers_gpt2(args.vocab)
    except ImportError:
        print("transformers is not installed: its GPT-2 is left out")
    results: dict[str, list] = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, fn in contenders.items():
            results[name].append(timed(fn, args.batch_size, block, args.vocab, args.steps))
    rows = {}
    for name, values in results.items():
        tokens_s = max(v[0] for v in values)
        rows[name] = {"tokens_per_s": tokens_s, "mfu": tokens_s * flops / peak, "peak_gib": max(v[1] for v in values) / 2**30}
    tok = embedded_tokenizer()
    decode = {batch: decode_speed(tok, batch) for batch in (1, 16)}
    name = torch.cuda.get_device_name(0)
    print(f"{name}; measured bf16 matmul peak {peak / 1e12:.0f} TFLOP/s; course-58m shape, vocab {args.vocab}, "
          f"batch {args.batch_size} x block {block}; best of {args.rounds} alternating rounds of {args.steps} steps\n")
    print("| contender | tokens/s | MFU | peak memory GiB |")
    print("|---|---:|---:|---:|")
    for contender, row in rows.items():
        print(f"| {contender} | {row['tokens_per_s']:,.0f} | {row['mfu']:.1%} | {row['peak_gib']:.2f} |")
    print(f"\ndecode (greedy, KV cache, 200 new tokens, vocab {tok.vocab_size}): batch 1 {decode[1]:,.0f} "
          f"tokens/s, batch 16 {decode[16]:,.0f} tokens/s")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"gpu": name, "peak_flops": peak, "flops_per_token": flops, "train": rows,
                       "decode_tokens_per_s": decode, "decode_vocab": tok.vocab_size,
                       "args": vars(args)}, f, indent=2)


if __name__ == "__main__":
    main()
