"""The 10-minute speed run: how low does val bits/character go in a fixed wall-clock budget,
against nanoGPT's README CPU setup trained for the same time in the same invocation?

    python benchmarks/speedrun.py                                # the `tiny` preset and the baseline, 10 minutes each
    python benchmarks/speedrun.py --minutes 3 --label lr3e-3 --set train.learning_rate=3e-3 --no-baseline
    python benchmarks/speedrun.py --vocab 4096 --label vocab4096
    python benchmarks/speedrun.py --no-baseline --bpe-dropout 0.1:4 --label bpe-dropout

Trains on ../shared/data/bangla-literature without the --held-out book (default *Chokher
Baali*, about 452,000 characters) with the toolkit's own `train` (`train.time_limit_min`: the
LR schedule runs on the clock and training stops when the time is up, evaluations and
checkpoints included). The data is prepared once per tokenizer and cached under --work (not
counted in the budget). A document is a page (`doc_split` "page": consecutive paragraphs of one
book, joined by their blank lines, up to 2,000 characters), so that the 5% validation set samples every
book rather than being one or two whole books (the same pages for every tokenizer: the split is
seeded per document), and so that the models learn paragraph breaks, which the held-out book,
scored whole, is full of. `--docs paragraphs` makes each paragraph a document, as runs before
2026-12-01 (twelfth session) did: their models never saw a paragraph break and paid about
9 bits for each one in the book (docs/speedrun-log.md).

The baseline (unless --no-baseline) is nanoGPT's README CPU run (4 layers x 4 heads x 128,
block 64, batch 12, dropout 0, tied embedding, AdamW at 1e-3 with beta2 0.99, 100 warm-up
steps and cosine decay, character level): our `cpu-ref` preset on a character tokenizer,
with its cosine schedule stretched over the same time budget as ours. Both are scored the same way: bits per character
over the whole validation split and over the whole held-out book (normalized text), sliding
window, stride half the block; the ratios printed are ours / baseline.

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
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "src"))  # after PYTHONPATH: a patched copy given there is the one that runs

from banglaslm.config import build_config, parse_set_args  # noqa: E402
from banglaslm.data.folder import DataFolder  # noqa: E402
from banglaslm.data.prepare import prepare  # noqa: E402
from banglaslm.evaluation.perplexity import evaluate_file, score_tokens  # noqa: E402
from banglaslm.runfolder import load_model  # noqa: E402
from banglaslm.training.trainer import train  # noqa: E402

LITERATURE = ROOT.parent / "shared" / "data" / "bangla-literature"


def books(held_out: str) -> list[str]:
    """The shared books except `held_out` (a file name there, or '' for none)."""
    return [str(p) for p in sorted(LITERATURE.glob("*.txt")) if p.name != held_out]


def data_folder(work: Path, vocab: int, tokenizer: str = "bpe", held_out: str = "", docs: str = "pages") -> Path:
    """The books (without `held_out`) as `docs` (pages or paragraphs), prepared with our
    byte-level BPE, characters, or a SentencePiece unigram model of the same size trained on
    the same training documents (so they differ only in the tokenizer)."""
    folder = work / (f"data-{tokenizer}{vocab if tokenizer != 'char' else ''}"
                     + (f"-without-{Path(held_out).stem}" if held_out else "") + ("-pages" if docs == "pages" else ""))
    if (folder / "meta.json").is_file():
        return folder
    t = time.perf_counter()
    split = {"pages": "page", "paragraphs": "paragraph"}[docs]
    if tokenizer in ("bpe", "char"):
        sizes = {"vocab_size": vocab} if tokenizer == "bpe" else {}
        prepare(books(held_out), folder, tokenizer=tokenizer, doc_split=split, progress=False, **sizes)
    else:
        model = unigram_model(work, vocab, held_out, docs)
        prepare(books(held_out), folder, tokenizer=str(model), doc_split=split, allow_unknown=True, progress=False)
    print(f"prepared {folder} in {time.perf_counter() - t:.0f} s (not counted)")
    return folder


def unigram_model(work: Path, vocab: int, held_out: str, docs: str) -> Path:
    """A SentencePiece unigram model of `vocab` pieces trained on the BPE folder's training split."""
    import sentencepiece

    bpe = DataFolder(data_folder(work, vocab, "bpe", held_out, docs))
    texts = [text.replace("\n", " ") for text, _ in training_documents(bpe)]
    corpus = work / f"unigram{vocab}-{bpe.path.name}-train.txt"
    corpus.write_text("\n".join(d for d in texts if d), encoding="utf-8")  # one training document per line
    prefix = work / f"unigram{vocab}-{bpe.path.name}"
    sentencepiece.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(prefix), vocab_size=vocab,
                                             model_type="unigram", character_coverage=0.9999, minloglevel=2,
                                             max_sentence_length=1 << 20, hard_vocab_limit=False)
    return prefix.with_suffix(".model")


def training_documents(data: DataFolder) -> list[tuple[str, list[int]]]:
    """(text, ids) of each document of a folder's training split (the ids between two EODs)."""
    tok, ids = data.tokenizer(), data.tokens("train").read()
    cuts = np.flatnonzero(ids == tok.eod_id)
    return [(tok.decode(ids[a + 1:b].tolist()), ids[a + 1:b].tolist()) for a, b in zip(cuts[:-1], cuts[1:])]


def bpe_dropout_folder(folder: Path, p: float, copies: int) -> Path:
    """A copy of a BPE data folder whose training split holds its documents `copies` times: as
    stored, then re-encoded with BPE-dropout `p` (each merge skipped with probability p, so each
    copy splits words differently: data augmentation). Validation is untouched. Not seeded:
    `tokenizers` draws the dropout from its own generator."""
    from tokenizers import Tokenizer as HFTokenizer

    from banglaslm.data.folder import ShardWriter, split_stats, write_meta

    out = folder.with_name(f"{folder.name}-bpedropout{p}x{copies}")
    if (out / "meta.json").is_file():
        return out
    data = DataFolder(folder)
    tok, dtype, docs = data.tokenizer(), np.dtype(data.meta["dtype"]).type, training_documents(data)
    dropping = HFTokenizer.from_file(str(data.tokenizer_path))
    dropping.model.dropout = p
    out.mkdir()
    for name in ("tokenizer.json", "val"):
        (shutil.copytree if name == "val" else shutil.copy)(folder / name, out / name)
    writer = ShardWriter(out, "train", "00000", tok.eod_id, dtype, 10**10)
    writer.add(docs)
    for _ in range(copies - 1):
        writer.add([(text, e.ids) for (text, _), e in zip(docs, dropping.encode_batch([t for t, _ in docs]))])
    kept = {k: v for k, v in data.meta.items() if k not in ("format", "version", "normalization", "tokenizer",
                                                            "dtype", "splits", "split_by")}
    splits = {"train": split_stats(writer.close()), "val": data.meta["splits"]["val"]}
    write_meta(out, tok, dtype, splits, kept)
    return out


def val_bits_per_char(run: Path, data: DataFolder) -> float:
    """Every validation token scored once (sliding window, stride = block/2), in bits per character."""
    loaded = load_model(run, "latest")
    ids = data.tokens("val").read().astype(np.int64).tolist()
    with torch.inference_mode():
        nats = score_tokens(loaded.model.eval(), ids, max(1, loaded.config.model.block_size // 2))
    return nats / math.log(2) / data.meta["splits"]["val"]["chars"]


def book_bits_per_char(run: Path, book: Path) -> float:
    """The whole book, as `banglaslm eval` scores it (normalized, stride = block/2)."""
    return evaluate_file(load_model(run, "latest"), book).bits_per_char


def speed_run(label: str, preset: str, minutes: float, data_path: Path, sets: list[str], work: Path) -> tuple:
    """Train `preset` for `minutes` on `data_path`; (run folder, TrainResult, val curve)."""
    data = DataFolder(data_path)
    overrides = {"train.time_limit_min": minutes, "train.max_iters": 10**9, **parse_set_args(sets)}
    run = work / "runs" / f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    result = train(data_path, run, build_config(preset, overrides=overrides), progress=False)
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
    return run, result, curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--vocab", type=int, default=2048, help="vocabulary size of the prepared data")
    ap.add_argument("--tokenizer", default="bpe", choices=("bpe", "unigram"),
                    help="our byte-level BPE, or a SentencePiece unigram model of the same size (the course's kind)")
    ap.add_argument("--bpe-dropout", default=None, metavar="P:COPIES",
                    help="train ours on COPIES copies of the training split, all but the first re-encoded with "
                         "BPE-dropout P (an experiment; docs/speedrun-log.md)")
    ap.add_argument("--docs", default="pages", choices=("pages", "paragraphs"),
                    help="what a document is: a page of consecutive paragraphs (default), or one paragraph, "
                         "as runs before 2026-12-01's twelfth session had it")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    ap.add_argument("--label", default=None, help="name of this run in results.jsonl")
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "speedrun", help="cache and run folders")
    ap.add_argument("--held-out", default="RabindranathTagore_Prose_ChokherBaali.txt",
                    help="a book of the shared folder left out of training and scored whole")
    ap.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                    help="also train nanoGPT's README CPU setup for the same time (default: yes)")
    ap.add_argument("--baseline-set", action="append", default=[], metavar="KEY=VALUE",
                    help="config overrides for the baseline (e.g. train.precision=fp32, as for ours)")
    args = ap.parse_args()
    print(f"banglaslm from {Path(sys.modules['banglaslm'].__file__).parent}")
    if not LITERATURE.is_dir():
        sys.exit(f"the shared Bangla corpus is not at {LITERATURE}; this benchmark needs it")
    label = args.label or f"{args.preset}-{args.tokenizer}{args.vocab}" + "".join(f"-{s}" for s in args.set)
    args.work.mkdir(parents=True, exist_ok=True)
    book = LITERATURE / args.held_out
    ours = data_folder(args.work, args.vocab, args.tokenizer, args.held_out, args.docs)
    if args.bpe_dropout:
        p, copies = args.bpe_dropout.split(":")
        ours = bpe_dropout_folder(ours, float(p), int(copies))
    contenders = [(label, args.preset, ours, args.set)]
    if args.baseline:
        contenders.append(("nanogpt-cpu-ref-char", "cpu-ref", data_folder(args.work, 0, "char", args.held_out, args.docs),
                           args.baseline_set))
    scores = []
    for name, preset, data_path, sets in contenders:
        run, result, curve = speed_run(name, preset, args.minutes, data_path, sets, args.work)
        t = time.perf_counter()
        data = DataFolder(data_path)
        val, held = val_bits_per_char(run, data), book_bits_per_char(run, book)
        print(f"whole validation split ({data.meta['splits']['val']['chars']:,} characters): {val:.4f} bits/char; "
              f"held-out {book.name}: {held:.4f} bits/char (scored in {time.perf_counter() - t:.0f} s, not counted)")
        scores.append((name, result.iterations, val, held))
        record = {"label": name, "minutes": args.minutes, "preset": preset, "data": data_path.name, "set": sets,
                  "iterations": result.iterations, "seconds": round(result.seconds, 1),
                  "val_bits_per_char": round(val, 4), "held_out": args.held_out, "held_out_bits_per_char": round(held, 4),
                  "curve": [[round(e, 1), i, round(b, 4)] for e, i, b in curve],
                  "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads()}
        with open(args.work / "results.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    print(f"\n| {args.minutes:g} minutes | steps | val bits/char | {args.held_out} bits/char |\n|---|---|---|---|")
    for name, steps, val, held in scores:
        print(f"| {name} | {steps:,} | {val:.4f} | {held:.4f} |")
    if len(scores) == 2:
        (_, _, val, held), (_, _, base_val, base_held) = scores
        print(f"\nours / baseline: validation {val / base_val:.3f} ({val / base_val - 1:+.1%}), "
              f"held-out book {held / base_held:.3f} ({held / base_held - 1:+.1%})")


if __name__ == "__main__":
    main()
