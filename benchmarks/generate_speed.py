"""Generation speed on this machine: tokens/s of our KV-cached engine (with its C decode step,
and with PyTorch alone), of a full forward per token (no cache), and of Hugging Face
transformers' GPT-2 `generate(use_cache=True)`.

    python benchmarks/generate_speed.py [--new-tokens 200] [--prompt-tokens 16] [--repeats 15] [--threads N]

Batch 1, fp32, greedy, random weights, all in this process under torch.inference_mode. Our
model is the "gpt" arch at 6 layers x 6 heads x 384 wide, vocab 8000, block 256: 13.7 M
weights in its matmuls, like the GPT-2 it is compared with (which ties its output head to the
token embedding, so it reports fewer parameters for the same work per token). The time of a
run includes the prompt's prefill; tokens/s = new tokens / seconds, best of `--repeats`
rounds that run every contender in turn (on a shared machine the best of several rounds is
the closest to an idle one, and every contender gets the same chances).

The last row is a reference, not a generator: PyTorch's mat-vec over every weight matrix, one
token at a time, and nothing else. At batch 1 in fp32 a step must read ~55 MB of weights, so
that row is about what the weight reads alone cost; a decoder near it spends little elsewhere
(Python, attention, norms, sampling).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from banglaslm.config import (
    SamplingParams,  # noqa: E402
    build_config,  # noqa: E402
)
from banglaslm.generation.engine import Engine  # noqa: E402
from banglaslm.model import GPT  # noqa: E402
from banglaslm.tokenizer import EOD, Tokenizer  # noqa: E402

VOCAB, BLOCK, LAYERS, HEADS, WIDTH = 8000, 256, 6, 6, 384


def fake_tokenizer(vocab: int) -> Tokenizer:
    """A word-level tokenizer with `vocab` ids (the text does not matter for speed)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    vocab_map = {f"t{i}": i for i in range(vocab - 1)} | {EOD: vocab - 1}
    return Tokenizer(HFTokenizer(models.WordLevel(vocab_map, unk_token="t0")), "bench")


def ours(model: GPT, tok: Tokenizer, prompt: list[int], new: int, kernel: bool = True) -> list[int]:
    engine = Engine(model, tok, use_kernel=kernel)
    # Our models stop at end-of-document; with random weights that is a rare accident, but an
    # end token would cut a run short, so make sure none can win.
    [[c]] = engine.generate_ids([prompt], SamplingParams(max_new_tokens=new, greedy=True))
    return c.token_ids


def ours_uncached(model: GPT, prompt: list[int], new: int) -> list[int]:
    """Generation as it was before the engine: a full forward over the (cropped) context per token."""
    context, out = list(prompt), []
    block = model.config.block_size
    for _ in range(new):
        logits, _ = model(torch.tensor([context[-block:]]))
        token = int(logits[0, -1].argmax())
        out.append(token)
        context.append(token)
    return out


def matvec_floor(model: GPT, new: int) -> list[int]:
    """Only the weight matrix-vector products of `new` one-token steps, by PyTorch (no attention,
    norms or sampling): at batch 1 each step must read every matmul weight once."""
    linears = [(m.weight, m.bias) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = {w.shape[1]: torch.randn(1, w.shape[1]) for w, _ in linears}
    for _ in range(new):
        for w, b in linears:
            torch.nn.functional.linear(inputs[w.shape[1]], w, b)
    return []


def hf_model():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=VOCAB, n_positions=BLOCK, n_embd=WIDTH, n_layer=LAYERS, n_head=HEADS,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=VOCAB - 1,
                     eos_token_id=VOCAB - 1, pad_token_id=VOCAB - 1)
    torch.manual_seed(0)
    return GPT2LMHeadModel(cfg).eval()


def hf(model, prompt: list[int], new: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                         do_sample=False, use_cache=True)
    return out[0, len(prompt):].tolist()


def interleaved_best(contenders: dict, repeats: int) -> dict[str, float]:
    """Best wall time of each contender over `repeats` rounds; each round runs every contender
    once, so they all see the same background load (on a shared machine the best of several
    rounds is the closest to an idle machine)."""
    for fn, warmup in contenders.values():
        warmup()  # first-call allocations and kernel selection
    best = dict.fromkeys(contenders, float("inf"))
    for _ in range(repeats):
        for name, (fn, _) in contenders.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    new = args.new_tokens

    cfg = build_config(overrides={"arch": "gpt", "n_layer": LAYERS, "n_head": HEADS, "n_embd": WIDTH,
                                  "block_size": BLOCK, "vocab_size": VOCAB, "dropout": 0.0})
    torch.manual_seed(0)
    model = GPT(cfg.model).eval()
    with torch.no_grad():
        model.lm_head.weight[VOCAB - 1] = 0  # no end-of-document: every run is `new` tokens long
    tok = fake_tokenizer(VOCAB)
    prompt = [tok.eod_id] + torch.randint(0, VOCAB - 1, (args.prompt_tokens - 1,),
                                          generator=torch.Generator().manual_seed(0)).tolist()
    gpt2 = hf_model()
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    print(f"model: {LAYERS} layers x {HEADS} heads x {WIDTH}, vocab {VOCAB}, block {BLOCK}; "
          f"{matmul / 1e6:.1f} M matmul weights ({model.num_params() / 1e6:.1f} M parameters, "
          f"GPT-2 {gpt2.num_parameters() / 1e6:.1f} M tied)")
    print(f"batch 1, fp32, greedy, {len(prompt)}-token prompt, {new} new tokens, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")

    import transformers

    transformers.logging.set_verbosity_error()  # its pad-token advice does not apply to batch 1
    from banglaslm.generation.cpu_decode import CpuDecoder

    if CpuDecoder.for_model(model) is None:
        sys.exit("the C decode kernel is unavailable here (see the line above): nothing to compare")
    names = {"ours": "banglaslm Engine (KV cache, C decode step)",
             "torch": "banglaslm Engine (KV cache, PyTorch only)",
             "hf": f"transformers {transformers.__version__} GPT2 generate(use_cache=True)",
             "floor": "PyTorch mat-vecs over the weights alone (no attention, no loop)",
             "uncached": "banglaslm, no cache (full forward per token)"}
    with torch.inference_mode():
        ids, ref, hf_ids = ours(model, tok, prompt, new), ours_uncached(model, prompt, new), hf(gpt2, prompt, new)
        assert ids == ref == ours(model, tok, prompt, new, kernel=False), "greedy tokens differ"
        assert len(ids) == len(hf_ids) == new
        fast = {"ours": (lambda: ours(model, tok, prompt, new),) * 2,
                "torch": (lambda: ours(model, tok, prompt, new, kernel=False),) * 2,
                "hf": (lambda: hf(gpt2, prompt, new),) * 2,
                "floor": (lambda: matvec_floor(model, new),) * 2}
        best = interleaved_best(fast, args.repeats)
        # The uncached loop is ~10x slower: fewer rounds.
        best |= interleaved_best({"uncached": (lambda: ours_uncached(model, prompt, new), lambda: None)},
                                 max(1, args.repeats // 3))
    rows = [(names[k], best[k]) for k in ("ours", "torch", "uncached", "hf", "floor")]
    t, t_torch, t_ref, t_hf, t_floor = (best[k] for k in ("ours", "torch", "uncached", "hf", "floor"))

    width = max(len(name) for name, _ in rows)
    print(f"\n{'':{width}}  {'tokens/s':>9}  {'ms/token':>9}")
    for name, seconds in rows:
        print(f"{name:{width}}  {new / seconds:9.1f}  {1000 * seconds / new:9.2f}")
    print(f"\nours / transformers: {t_hf / t:.2f}x    ours, PyTorch only / transformers: {t_hf / t_torch:.2f}x    "
          f"ours / no cache: {t_ref / t:.2f}x    mat-vecs alone / ours: {t_floor / t:.2f}")


if __name__ == "__main__":
    main()
