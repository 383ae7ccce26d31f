"""The 10-minute speed run: how low does val bits/character go in a fixed wall-clock budget?

    python benchmarks/speedrun.py                                # the `tiny` preset, 10 minutes
    python benchmarks/speedrun.py --minutes 3 --label lr3e-3 --set train.learning_rate=3e-3
    python benchmarks/speedrun.py --vocab 4096 --label vocab4096

Trains on ../shared/data/bangla-literature (25 books, 2.98 M characters) with the toolkit's own
`train` (`train.time_limit_min`: the LR schedule runs on the clock and training stops when the
time is up, evaluations and checkpoints included). The data is prepared once per vocabulary
size and cached under --work (not counted in the budget); it is split by paragraph, so the 5%
validation set samples every book rather than being one or two whole books.

Reported: val bits/character against time (from the run's periodic evaluations, converted
with the validation split's tokens per character) and, at the end, bits/character over the
*whole* validation split scored once with a sliding window (stride = half the block). Bits per
character do not depend on the tokenizer, so runs with different vocabularies compare. Each
run appends one JSON line to WORK/results.jsonl; docs/speedrun-log.md records what was tried.

Measure on an otherwise idle machine: the budget is wall time, so anything else running steals
from it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from banglaslm.config import build_config, parse_set_args  # noqa: E402
from banglaslm.data.folder import DataFolder  # noqa: E402
from banglaslm.data.prepare import prepare  # noqa: E402
from banglaslm.evaluation.perplexity import score_tokens  # noqa: E402
from banglaslm.runfolder import load_model  # noqa: E402
from banglaslm.training.trainer import train  # noqa: E402

LITERATURE = ROOT.parent / "shared" / "data" / "bangla-literature"


def data_folder(work: Path, vocab: int, tokenizer: str = "bpe") -> Path:
    """The books prepared with our byte-level BPE, or with a SentencePiece unigram model of the
    same size trained on the same training paragraphs (so the two differ only in the tokenizer)."""
    folder = work / f"data-{tokenizer}{vocab}"
    if (folder / "meta.json").is_file():
        return folder
    t = time.perf_counter()
    if tokenizer == "bpe":
        prepare([str(LITERATURE)], folder, tokenizer="bpe", vocab_size=vocab, doc_split="paragraph", progress=False)
    else:
        model = unigram_model(work, vocab)
        prepare([str(LITERATURE)], folder, tokenizer=str(model), doc_split="paragraph", allow_unknown=True,
                progress=False)
    print(f"prepared {folder} in {time.perf_counter() - t:.0f} s (not counted)")
    return folder


def unigram_model(work: Path, vocab: int) -> Path:
    """A SentencePiece unigram model of `vocab` pieces trained on the BPE folder's training split."""
    import sentencepiece

    bpe = DataFolder(data_folder(work, vocab, "bpe"))
    tok = bpe.tokenizer()
    ids = bpe.tokens("train").read()
    cuts = np.flatnonzero(ids == tok.eod_id)
    docs = [tok.decode(ids[a + 1:b].tolist()).replace("\n", " ") for a, b in zip(cuts[:-1], cuts[1:])]
    corpus = work / f"unigram{vocab}-train.txt"
    corpus.write_text("\n".join(d for d in docs if d), encoding="utf-8")  # one training paragraph per line
    prefix = work / f"unigram{vocab}"
    sentencepiece.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(prefix), vocab_size=vocab,
                                             model_type="unigram", character_coverage=0.9999, minloglevel=2,
                                             max_sentence_length=1 << 20, hard_vocab_limit=False)
    return prefix.with_suffix(".model")


def val_bits_per_char(run: Path, data: DataFolder) -> float:
    """Every validation token scored once (sliding window, stride = block/2), in bits per character."""
    loaded = load_model(run, "latest")
    ids = data.tokens("val").read().astype(np.int64).tolist()
    with torch.inference_mode():
        nats = score_tokens(loaded.model.eval(), ids, max(1, loaded.config.model.block_size // 2))
    return nats / math.log(2) / data.meta["splits"]["val"]["chars"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--vocab", type=int, default=2048, help="vocabulary size of the prepared data")
    ap.add_argument("--tokenizer", default="bpe", choices=("bpe", "unigram"),
                    help="our byte-level BPE, or a SentencePiece unigram model of the same size (the course's kind)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    ap.add_argument("--label", default=None, help="name of this run in results.jsonl")
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "speedrun", help="cache and run folders")
    args = ap.parse_args()
    if not LITERATURE.is_dir():
        sys.exit(f"the shared Bangla corpus is not at {LITERATURE}; this benchmark needs it")
    label = args.label or f"{args.preset}-{args.tokenizer}{args.vocab}" + "".join(f"-{s}" for s in args.set)
    args.work.mkdir(parents=True, exist_ok=True)
    data_path = data_folder(args.work, args.vocab, args.tokenizer)
    data = DataFolder(data_path)
    overrides = {"train.time_limit_min": args.minutes, "train.max_iters": 10**9, **parse_set_args(args.set)}
    cfg = build_config(args.preset, overrides=overrides)
    run = args.work / "runs" / f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    result = train(data_path, run, cfg, progress=False)

    val = data.meta["splits"]["val"]
    tokens_per_char = val["tokens"] / val["chars"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["elapsed_s"], r["iter"], r["loss"] / math.log(2) * tokens_per_char)
             for r in rows if r.get("split") == "val"]
    print(f"\n{label}: {result.iterations} iterations in {result.seconds:.0f} s, "
          f"{result.tokens_per_s:,.0f} tokens/s at the end, {torch.get_num_threads()} threads")
    print(f"{'time (s)':>9} {'iter':>7} {'val bits/char (sampled)':>24}")
    for elapsed, it, bpc in curve:
        print(f"{elapsed:>9.0f} {it:>7} {bpc:>24.4f}")
    t = time.perf_counter()
    full = val_bits_per_char(run, data)
    print(f"whole validation split ({val['chars']:,} characters): {full:.4f} bits/char "
          f"(scored in {time.perf_counter() - t:.0f} s, not counted)")
    record = {"label": label, "minutes": args.minutes, "preset": args.preset, "vocab": args.vocab,
              "tokenizer": args.tokenizer, "set": args.set,
              "iterations": result.iterations, "seconds": round(result.seconds, 1),
              "val_bits_per_char": round(full, 4), "curve": [[round(e, 1), i, round(b, 4)] for e, i, b in curve],
              "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads()}
    with open(args.work / "results.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
