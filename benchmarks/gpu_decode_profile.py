"""Where batch-1 decode time goes on a GPU: a bare cached forward step's time, a profile of 30
engine steps (CPU and CUDA time per operator), and tokens/s of our engine beside transformers'
GPT-2 `generate` of the same shape at batch 1 and 16 (random weights, greedy, 100 new tokens;
the tokenizer: BPE 8,000 of the embedded corpus, as gpu_throughput.py's decode).

    python benchmarks/gpu_decode_profile.py

Without CUDA it says so and exits 0.
"""

from __future__ import annotations

import time

import torch


def main() -> None:
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to measure")
        return
    from gpu_throughput import embedded_tokenizer
    from torch.profiler import ProfilerActivity, profile
    from transformers import GPT2Config, GPT2LMHeadModel

    from banglaslm.config import SamplingParams, build_config
    from banglaslm.generation.engine import Engine
    from banglaslm.model import GPT

    tok = embedded_tokenizer()
    cfg = build_config("course-58m", overrides={"model.vocab_size": tok.vocab_size, "model.dropout": 0.0})
    model = GPT(cfg.model).cuda().eval()
    engine = Engine(model, tok)
    ctx = [[tok.eod_id] + tok.encode("একদিন সকালে আমরা নদীর ধারে হাঁটতে গেলাম")[:15]]

    def params(n: int) -> SamplingParams:
        return SamplingParams(greedy=True, max_new_tokens=n, logit_bias={tok.eod_id: -100.0})

    engine.generate_ids(ctx, params(100))  # warm-up
    with torch.inference_mode():
        cache = model.new_cache(1)
        engine.forward(cache, torch.tensor(ctx, device="cuda"))
        step = torch.tensor([[5]], device="cuda")
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(50):
            engine.forward(cache, step)
        torch.cuda.synchronize()
    print(f"bare cached forward: {(time.perf_counter() - start) / 50 * 1e3:.2f} ms/step")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        engine.generate_ids(ctx, params(30))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))

    m = cfg.model
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=tok.vocab_size, n_positions=m.block_size, n_embd=m.n_embd,
                                    n_layer=m.n_layer, n_head=m.n_head)).cuda().eval()
    x = torch.tensor(ctx, device="cuda")
    for batch in (1, 16):
        xb = x.repeat(batch, 1)
        hf.generate(xb, max_new_tokens=20, do_sample=False, min_new_tokens=20)
        torch.cuda.synchronize()
        start = time.perf_counter()
        hf.generate(xb, max_new_tokens=100, do_sample=False, min_new_tokens=100)
        torch.cuda.synchronize()
        print(f"transformers GPT-2 generate batch {batch}: {batch * 100 / (time.perf_counter() - start):,.0f} tokens/s")
        torch.cuda.synchronize()
        start = time.perf_counter()
        engine.generate_ids(ctx * batch, params(100))
        torch.cuda.synchronize()
        print(f"banglaslm engine batch {batch}: {batch * 100 / (time.perf_counter() - start):,.0f} tokens/s")


if __name__ == "__main__":
    main()
