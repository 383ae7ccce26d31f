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

A second table (`--quantized`, on by default) decodes a "modern" model of the same shape
(llama.cpp runs it as a Llama) with float32, int8 and bf16 weights (`--quantize`), and, where
`llama-cpp-python` is installed, llama.cpp itself on the same weights exported to GGUF f32, f16
and q8_0 (llama.cpp's own defaults otherwise: f16 KV cache). Every contender there is the same
bare loop: prefill the prompt, then one decode step per token and an argmax in Python, for
exactly `--new-tokens` tokens (no end-of-document stop); the decode steps alone are timed.
llama.cpp gets the prompt one token at a time: llama-cpp-python 0.3.36 built natively on a CPU
with AMX crashed evaluating several q8_0 tokens at once. The model is `--run RUN_DIR` (a
trained "modern" run, vocab 8000, as in BENCHMARKS.md), or else one trained for one step on
the shared books (random weights; speed does not depend on them).
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


def modern_run(root: Path) -> Path:
    """A "modern" run of the benchmark's shape trained for one step (prepared from the shared
    books, or the embedded corpus where they are absent): a real BPE tokenizer for the export."""
    from banglaslm.data.corpus import corpus_files
    from banglaslm.data.prepare import prepare
    from banglaslm.training.trainer import train

    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "bangla-literature"
    books = sorted(shared.glob("*.txt"))[:8] or corpus_files()
    prepare([str(p) for p in books], root / "data", vocab_size=VOCAB, doc_split="paragraph", progress=False)
    settings = {"model.arch": "modern", "model.n_layer": LAYERS, "model.n_head": HEADS, "model.n_embd": WIDTH,
                "model.block_size": BLOCK, "model.dropout": 0.0, "train.max_iters": 1, "train.batch_size": 1,
                "train.eval_iters": 1, "train.warmup_iters": 0}
    train(root / "data", root / "run", build_config(overrides=settings), progress=False)
    return root / "run"


def decode_loop(model: GPT, prompt: list[int], new: int, kernel: bool) -> tuple[list[int], float]:
    """Prefill, then `new` one-token steps (the C step, or model.forward with the cache), argmax;
    the tokens and the seconds the steps took."""
    from banglaslm.generation.cpu_decode import CpuDecoder

    decoder = CpuDecoder.for_model(model) if kernel else None
    cache = model.new_cache(1)
    logits = model(torch.tensor([prompt]), cache=cache)[0][0, -1]
    out, start = [], time.perf_counter()
    for _ in range(new):
        out.append(int(logits.argmax()))
        step = torch.tensor([out[-1]])
        logits = decoder.step(cache, step)[0] if decoder else model(step[None], cache=cache)[0][0, -1]
    return out, time.perf_counter() - start


def llama_loop(llm, prompt: list[int], new: int) -> tuple[list[int], float]:
    """The same loop on llama.cpp (the prompt one token at a time: see the module docstring)."""
    import numpy as np

    def last_logits():  # llama.cpp's own buffer: eval copies logits into llm.scores only with logits_all
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))

    llm.reset()
    for token in prompt:
        llm.eval([token])
    out, start = [], time.perf_counter()
    for _ in range(new):
        out.append(int(np.argmax(last_logits())))
        llm.eval([out[-1]])
    return out, time.perf_counter() - start


def prefill_times(model: GPT, lengths: tuple[int, ...], repeats: int) -> list[tuple[float, float]]:
    """(PyTorch forward, C steps one token at a time) seconds to prefill each of `lengths`."""
    from banglaslm.generation.cpu_decode import CpuDecoder

    decoder = CpuDecoder.for_model(model)
    out = []
    for n in lengths:
        ids = torch.arange(1, n + 1)
        best = [float("inf"), float("inf")]
        for _ in range(repeats):
            for i, run in enumerate((lambda c: model(ids[None], cache=c),
                                     lambda c: [decoder.step(c, ids[t:t + 1]) for t in range(n)])):
                cache = model.new_cache(1)
                start = time.perf_counter()
                run(cache)
                best[i] = min(best[i], time.perf_counter() - start)
        out.append(tuple(best))
    return out


def quantized_table(run: Path, prompt_tokens: int, new: int, repeats: int, tmp: Path) -> None:
    """Batch-1 decoding of the run's model stored as float32, int8 and bf16, and llama.cpp on it."""
    from banglaslm.runfolder import load_model

    loaded = {kind: load_model(run, quantize=kind) for kind in ("none", "int8", "bf16")}
    cfg = loaded["none"].config.model
    if prompt_tokens + new > cfg.block_size:
        sys.exit(f"--prompt-tokens + --new-tokens must fit the run's block ({cfg.block_size})")
    eod = loaded["none"].tokenizer.eod_id
    prompt = [eod] + torch.randint(0, cfg.vocab_size, (prompt_tokens - 1,),
                                   generator=torch.Generator().manual_seed(0)).tolist()
    contenders = {f"ours {k}": lambda m=lo.model: decode_loop(m, prompt, new, True) for k, lo in loaded.items()}
    contenders["ours int8, PyTorch only"] = lambda: decode_loop(loaded["int8"].model, prompt, new, False)
    try:
        import llama_cpp
    except ImportError:
        llama_cpp = None
        print("llama-cpp-python is not installed: no llama.cpp rows (pip install llama-cpp-python gguf)")
    if llama_cpp is not None:
        from banglaslm.interop.gguf_export import export_gguf

        for dtype in ("f32", "f16", "q8_0"):
            path = export_gguf(run, tmp / f"model-{dtype}.gguf", dtype=dtype, overwrite=True)
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=cfg.block_size, n_batch=cfg.block_size, n_ubatch=cfg.block_size,
                                  n_threads=torch.get_num_threads(), n_threads_batch=torch.get_num_threads(),
                                  verbose=False)
            contenders[f"llama.cpp {dtype}"] = lambda llm=llm: llama_loop(llm, prompt, new)
    with torch.inference_mode():
        tokens = {name: fn()[0] for name, fn in contenders.items()}  # also the warm-up
        best = dict.fromkeys(contenders, float("inf"))
        for _ in range(repeats):  # rounds that run every contender in turn, as interleaved_best
            for name, fn in contenders.items():
                best[name] = min(best[name], fn()[1])
    matmul = sum(m.numel() for n, m in loaded["none"].model.state_dict().items()
                 if n.endswith("weight") and m.dim() == 2 and not n.startswith("lm_head"))
    print(f"\nmodel: {run} ({cfg.arch}, {cfg.n_layer} x {cfg.n_head} x {cfg.n_embd}, vocab {cfg.vocab_size}, "
          f"{matmul / 1e6:.1f} M weights in matrices); bare loop, {prompt_tokens}-token prompt, {new} new tokens, "
          f"decode steps timed, best of {repeats} rounds, {torch.get_num_threads()} threads")
    print(f"llama-cpp-python {llama_cpp.__version__}" if llama_cpp else "")
    width = max(map(len, contenders))
    print(f"{'':{width}}  {'tokens/s':>9}  {'ms/token':>9}  {'greedy tokens = ours none':>26}")
    for name, seconds in best.items():
        same = sum(a == b for a, b in zip(tokens[name], tokens["ours none"]))
        print(f"{name:{width}}  {new / seconds:9.1f}  {1000 * seconds / new:9.2f}  {same:>20}/{new}")
    print(f"ours int8 / ours none: {best['ours none'] / best['ours int8']:.2f}x    "
          f"ours bf16 / ours none: {best['ours none'] / best['ours bf16']:.2f}x")
    lengths = (1, 4, 8, 16, 32)
    print(f"\nprefill of one prompt, ms (PyTorch forward / C steps one token at a time), best of {repeats}:")
    print(f"{'tokens':>10}  " + "  ".join(f"{n:>15}" for n in lengths))
    with torch.inference_mode():
        for kind, lo in loaded.items():
            cells = [f"{1e3 * a:6.2f} / {1e3 * b:6.2f}" for a, b in prefill_times(lo.model, lengths, repeats)]
            print(f"{kind:>10}  " + "  ".join(f"{c:>15}" for c in cells))
    if llama_cpp is not None:
        q8, f16, f32 = (best[f"llama.cpp {d}"] for d in ("q8_0", "f16", "f32"))
        print(f"ours int8 / llama.cpp q8_0: {q8 / best['ours int8']:.2f}x    ours bf16 / llama.cpp f16: "
              f"{f16 / best['ours bf16']:.2f}x    ours none / llama.cpp f32: {f32 / best['ours none']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--run", type=Path, default=None, help="a trained modern run for the quantized table")
    ap.add_argument("--only-quantized", action="store_true", help="skip the first table")
    ap.add_argument("--no-quantized", action="store_true", help="skip the second table")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    new = args.new_tokens
    if not args.only_quantized:
        fp32_table(args)
    if not args.no_quantized:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            run = args.run or modern_run(Path(tmp))
            quantized_table(run, args.prompt_tokens, new, args.repeats, Path(tmp))


def fp32_table(args) -> None:
    """Our engine against transformers' GPT-2, PyTorch alone and a full forward per token."""
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
