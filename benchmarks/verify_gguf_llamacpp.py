"""Check GGUF export with llama.cpp itself (through llama-cpp-python).

    python benchmarks/verify_gguf_llamacpp.py [RUN_DIR ...] [--iters 40] [--new-tokens 32]
                                              [--kv f32|f16] [--keep DIR]

For each run (without RUN_DIR: one "modern" and one "gpt" run trained here for `--iters`
steps on the shared Bangla books, or the embedded corpus where they are absent), export f32,
f16 and q8_0 GGUF files into a temp folder, load each with `llama_cpp.Llama`, and compare
with our model on normalized Bangla prompts:

(a) tokenization: llama.cpp's `tokenize(text, special=False)` (its default, which puts the
    file's BOS, our end-of-document token, first) against ours after that token, on the
    prompts and on real paragraphs (`--paragraphs`);
(b) greedy continuation: our engine's greedy tokens (prompt after the end-of-document token,
    as `banglaslm generate` does, `--new-tokens`) against llama.cpp's argmax decoding of the same
    ids; "greedy equal" counts the prompts whose whole continuation is identical (in brackets:
    how many of ours ended with the end-of-document token before `--new-tokens`), "leading
    tokens equal" the tokens that agree before the first difference, over all prompts;
(c) the largest |logit difference| at the first generated position (and over every prompt
    position) and the largest |logit| there, for scale;
(d) the smallest top-1 minus top-2 logit along our greedy continuations: where it is far above
    the logit difference, equal greedy tokens are expected, not luck.

"gpt" runs are exported with `approximate_gelu=True`: llama.cpp's GPT-2 evaluates GELU as the
tanh approximation through an f16 table, where ours is exact. For them the script also reruns
our model with that GELU emulated (rows "ours with llama.cpp's GELU", f32 only), which
separates the GELU's effect from the export's.

Exit status 1 when any file disagrees on tokenization, a "modern" f32 / f16 file on a greedy
continuation, or an emulated-GELU "gpt" f32 file on anything (q8_0 is reported, not required to
match: it moves each weight by up to 0.4% of its block's largest; plain "gpt" rows are reported,
see above). `--kv` is llama.cpp's KV-cache type (default f32, to test the file; llama.cpp's own
default is f16). llama.cpp rounds its context up to 256 and may warn that it exceeds the
training context; no sequence here goes past block_size. Needs `pip install llama-cpp-python gguf`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from banglaslm.config import (
    SamplingParams,  # noqa: E402
    build_config,  # noqa: E402
)
from banglaslm.data.corpus import corpus_files  # noqa: E402
from banglaslm.generation.engine import Engine  # noqa: E402
from banglaslm.interop.gguf_export import export_gguf  # noqa: E402
from banglaslm.runfolder import load_model  # noqa: E402
from banglaslm.text import normalize  # noqa: E402

LITERATURE = ROOT.parent / "shared" / "data" / "bangla-literature"
# Normalized before use. They end mid-sentence, so that the continuations run on rather than
# stopping at once with the end-of-document token.
PROMPTS = [
    "একদিন সকালে",
    "আমার সোনার বাংলা, আমি তোমায়",
    "রবীন্দ্রনাথ ঠাকুর",
    "নদীর ধারে ছোট্ট একটি গ্রাম ছিল। সেই গ্রামে",
    "বৃষ্টি পড়ে টাপুর টুপুর,",
    "শিক্ষা জাতির",
    "১৯৭১ সালে",
    "তিনি বললেন, \"আজ আর",
]
DTYPES = ("f32", "f16", "q8_0")


def train_run(arch: str, root: Path, iters: int) -> Path:
    from banglaslm.data.prepare import prepare
    from banglaslm.training.trainer import train

    data = root / "data"
    if not data.exists():
        if LITERATURE.is_dir():
            books = [str(p) for p in sorted(LITERATURE.glob("*.txt"))[:8]]
        else:
            books = [str(p) for p in corpus_files()]
        prepare(books, data, vocab_size=2000, doc_split="paragraph", progress=False)
    settings = {
        "model.arch": arch, "model.n_layer": 4, "model.n_head": 4, "model.n_embd": 128,
        "model.block_size": 128, "model.dropout": 0.0, "train.batch_size": 16,
        "train.max_iters": iters, "train.warmup_iters": min(50, iters // 4),
        "train.eval_interval": max(1, iters // 2), "train.eval_iters": 4,
        "train.log_interval": max(1, iters // 10),
        # the untied "gpt" arch skips too many spiky updates at 2e-3
        "train.learning_rate": 2e-3 if arch == "modern" else 1e-3,
        "train.precision": "fp32",
    }
    run = root / f"run-{arch}"
    t = time.time()
    train(data, run, build_config(overrides=settings), progress=False)
    print(f"trained {arch} for {iters} iterations in {time.time() - t:.0f} s", file=sys.stderr)
    return run


def real_paragraphs(n: int) -> list[str]:
    files = sorted(LITERATURE.glob("*.txt")) if LITERATURE.is_dir() else corpus_files()
    out = []
    for f in files:
        paras = [normalize(p) for p in f.read_text(encoding="utf-8").split("\n\n")]
        out += [p for p in paras if len(p) > 20][: max(1, n // len(files) + 1)]
    return out[:n]


def llama_greedy(llm, context: list[int], new: int, eod: int) -> tuple[list[int], np.ndarray, np.ndarray]:
    """llama.cpp argmax decoding from `context`; also the logits of every prompt position."""
    llm.reset()
    llm.eval(context)
    prompt_logits = np.array(llm.scores[: len(context)], dtype=np.float64)
    out, logits = [], prompt_logits[-1]
    for _ in range(new):
        token = int(np.argmax(logits))
        out.append(token)
        if token == eod:
            break
        llm.eval([token])
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
    return out, prompt_logits[-1], prompt_logits


@contextmanager
def llama_cpp_gelu():
    """Our model's GELU replaced by ggml's CPU GELU: input rounded to f16, tanh formula, output
    rounded to f16 (ggml-cpu's `ggml_vec_gelu_f32` with GGML_GELU_FP16), identity above 10."""
    exact = F.gelu

    def gelu(x, approximate="none"):
        h = x.half().float()
        y = (0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * h * (1 + 0.044715 * h * h)))).half().float()
        return torch.where(x <= -10, torch.zeros_like(x), torch.where(x >= 10, x, y))

    F.gelu = gelu
    try:
        yield
    finally:
        F.gelu = exact


def our_side(model, tok, contexts: list[list[int]], new: int):
    """Our engine's greedy tokens per context (a final end-of-document counted as a token), our
    logits over each context, and the smallest top-1 minus top-2 logit along those continuations."""
    engine, eod = Engine(model, tok), tok.eod_id
    ours = []
    for c in contexts:
        [[comp]] = engine.generate_ids([c], SamplingParams(greedy=True, max_new_tokens=new))
        ours.append(comp.token_ids + ([eod] if comp.finish_reason == "stop" and len(comp.token_ids) < new else []))
    with torch.no_grad():
        logits = [model(torch.tensor([c]))[0][0].double().numpy() for c in contexts]
        margin = float("inf")
        for c, o in zip(contexts, ours):
            top2 = model(torch.tensor([c + o[:-1]]))[0][0, len(c) - 1:].topk(2, dim=-1).values
            margin = min(margin, float((top2[:, 0] - top2[:, 1]).min()))
    return ours, logits, margin


def check_run(run: Path, args, tmp: Path, emulate: bool = False) -> list[dict]:
    import llama_cpp

    loaded = load_model(run)
    model, tok, cfg = loaded.model, loaded.tokenizer, loaded.config.model
    eod, block = tok.eod_id, cfg.block_size
    new = min(args.new_tokens, block // 2)
    prompts = [normalize(p) for p in PROMPTS]
    contexts = [[eod] + tok.encode(p, normalized=True) for p in prompts]
    contexts = [c[: block - new] for c in contexts]  # the whole continuation stays in the block
    with llama_cpp_gelu() if emulate else nullcontext():
        ours, our_logits, margin = our_side(model, tok, contexts, new)
    stopped = sum(bool(o) and o[-1] == eod for o in ours)
    texts = prompts + real_paragraphs(args.paragraphs)
    our_ids = [tok.encode(t, normalized=True) for t in texts]
    kv = {"f32": 0, "f16": 1}[args.kv]  # GGML_TYPE_F32 / GGML_TYPE_F16

    rows = []
    for dtype in DTYPES[:1] if emulate else DTYPES:
        path = export_gguf(run, tmp / f"{run.name}-{dtype}.gguf", dtype=dtype, overwrite=True,
                           approximate_gelu=cfg.arch == "gpt")
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=block, n_batch=block, n_ubatch=block,
                              n_threads=args.threads, n_threads_batch=args.threads, logits_all=True,
                              type_k=kv, type_v=kv, verbose=False)
        assert llm.n_vocab() == cfg.vocab_size and llm.token_bos() == eod and llm.token_eos() == eod
        tok_equal = sum(llm.tokenize(t.encode("utf-8"), special=False) == [eod, *ids]
                        for t, ids in zip(texts, our_ids))
        same, lead, total, first_diff, all_diff, scale = 0, 0, 0, 0.0, 0.0, 0.0
        samples = []
        for c, want, ol in zip(contexts, ours, our_logits):
            got, first, prompt_logits = llama_greedy(llm, c, new, eod)
            same += got == want
            lead += next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            total += len(want)
            first_diff = max(first_diff, float(np.abs(first - ol[-1]).max()))
            all_diff = max(all_diff, float(np.abs(prompt_logits - ol).max()))
            scale = max(scale, float(np.abs(ol[-1]).max()))
            samples.append((c, got, want))
        llm.close()
        rows.append({"run": run.name, "arch": cfg.arch + (" (ours with llama.cpp's GELU)" if emulate else ""),
                     "exact": cfg.arch == "modern" or emulate, "iter": loaded.iteration, "dtype": dtype,
                     "size": path.stat().st_size, "tok": f"{tok_equal}/{len(texts)}",
                     "tok_ok": tok_equal == len(texts), "greedy": f"{same}/{len(contexts)}",
                     "greedy_ok": same == len(contexts), "lead": f"{lead}/{total}",
                     "first": first_diff, "all": all_diff, "scale": scale, "margin": margin,
                     "stopped": stopped})
        if dtype == "f32" and args.show:
            for c, got, want in samples[:2]:
                print(f"  [{cfg.arch}] {tok.decode(c)!r} -> {tok.decode(want)!r}", file=sys.stderr)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", type=Path, help="run folders (default: train one modern and one gpt run)")
    ap.add_argument("--iters", type=int, default=40, help="training steps when no run is given")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--paragraphs", type=int, default=200, help="real paragraphs for the tokenization check")
    ap.add_argument("--kv", choices=("f32", "f16"), default="f32", help="llama.cpp KV-cache type")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--keep", type=Path, help="train into / keep files in this folder")
    ap.add_argument("--show", action="store_true", help="print two f32 continuations per run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import llama_cpp
    except ImportError:
        print("this check runs llama.cpp through its Python binding: pip install llama-cpp-python==0.3.36 gguf",
              file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as t:
        tmp = args.keep or Path(t)
        tmp.mkdir(parents=True, exist_ok=True)
        runs = args.runs or [r if r.exists() else train_run(a, tmp, args.iters)
                             for a, r in (("modern", tmp / "run-modern"), ("gpt", tmp / "run-gpt"))]
        rows = [row for run in runs for row in check_run(run, args, tmp)]
        rows += [row for run in runs if load_model(run).config.model.arch == "gpt"
                 for row in check_run(run, args, tmp, emulate=True)]
    print(f"llama-cpp-python {llama_cpp.__version__}, KV cache {args.kv}, {args.new_tokens} new tokens, "
          f"{len(PROMPTS)} prompts\n")
    print("| arch | iter | format | file | tokenization equal | greedy equal (ended at EOD) | leading tokens equal "
          "| max abs logit diff, 1st step | over all prompt positions | max abs logit | smallest greedy margin |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arch']} | {r['iter']} | {r['dtype']} | {r['size'] / 1e6:.2f} MB | {r['tok']} "
              f"| {r['greedy']} ({r['stopped']}) | {r['lead']} | {r['first']:.2e} | {r['all']:.2e} | {r['scale']:.1f} "
              f"| {r['margin']:.2e} |")
    bad = [r for r in rows if not r["tok_ok"] or (r["exact"] and r["dtype"] in ("f32", "f16") and not r["greedy_ok"])]
    for r in bad:
        print(f"MISMATCH: {r['run']} {r['dtype']}: tokenization {r['tok']}, greedy {r['greedy']}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
