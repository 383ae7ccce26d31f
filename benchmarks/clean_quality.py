"""How well `banglaslm clean` removes what it should and keeps what it should, on real books.

    python benchmarks/clean_quality.py [--books N] [--workers W] [--seed S]

The original paragraphs are the distinct paragraphs (after normalization, at least
MIN_WORDS words, not Markdown front matter or fenced verse) of the first N prose books of ../shared/data/bangla-literature. Planted after
them: exact copies of some paragraphs, near copies (2-3 words replaced, inserted or deleted)
of others, and noise (English prose, code, number spam, one Bangla line repeated). Each planted
kind has the step meant to catch it; the table gives, per step, its precision (the share of
what it removed that was planted of its kind) and recall (the share of its kind it removed),
then the share of original paragraphs removed by any step, and the throughput.

Paragraphs are short documents, so the run uses `CleanOptions.preset("literature")` (the
thresholds for books; `--preset web` for FineWeb-2's web-page ones, unrelaxed).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from banglaslm.data.clean import CLEAN_PRESETS, CleanOptions, clean  # noqa: E402
from banglaslm.data.sources import read_text_file  # noqa: E402
from banglaslm.text import normalize  # noqa: E402

BOOKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "bangla-literature"
PROSE = ("SukumarRay_Prose_PaglaDashu.txt", "GaganendranathTagore_Prose_BhondorBahadur.txt",
         "RabindranathTagore_Prose_AdhunikSahitya.txt", "AbanindranathTagore_Prose_BuroAngla.txt",
         "RabindranathTagore_Prose_JibanSmriti.txt", "RabindranathTagore_Prose_ChokherBaali.txt",
         "RabindranathTagore_Prose_GalpaGuchchha_1.txt")
MIN_WORDS = 10  # an original paragraph has at least this many words (the literature preset's min_words)
TARGET = {"exact": ("exact_dedup",), "near": ("near_dedup",),
          "noise": ("script", "gopher_quality", "gopher_repetition")}


def original_paragraphs(books: int) -> list[str]:
    seen: dict[str, None] = {}
    for name in PROSE[:books]:
        for raw in read_text_file(str(BOOKS / name), "paragraph"):
            text = normalize(raw)
            if len(text.split()) >= MIN_WORDS and not is_markup(text):
                seen.setdefault(text)
    return list(seen)


def is_markup(text: str) -> bool:
    """The books' Markdown rather than their text: the front matter, and verse quoted in
    ```` fences (the fence lines would count as repeated lines)."""
    return text.startswith("---") or "```" in text


def near_copy(text: str, vocabulary: list[str], rng: random.Random) -> str:
    """`text` with 2-3 edits: a word replaced, a word inserted, a word deleted."""
    words = text.split(" ")
    for _ in range(rng.randint(2, 3)):
        i, edit = rng.randrange(len(words)), rng.choice(("replace", "insert", "delete"))
        if edit == "replace":
            words[i] = rng.choice(vocabulary)
        elif edit == "insert":
            words.insert(i, rng.choice(vocabulary))
        elif len(words) > MIN_WORDS + 2:
            del words[i]
    return normalize(" ".join(words))


ENGLISH = ["The quarterly report shows that revenue grew by {n} percent while costs stayed flat.",
           "Click here to subscribe to our newsletter and get {n} free e-books every month.",
           "Our privacy policy explains how we collect, store and share your personal data.",
           "Free shipping on all orders over {n} dollars, limited time offer, terms apply."]
CODE = ["def handler_{n}(request):\n    data = json.loads(request.body)\n    return {{'status': {n}, 'ok': True}}",
        "for (int i = 0; i < {n}; i++) {{\n    sum += arr[i] * {n};\n}}\nreturn sum;",
        "<div class=\"row-{n}\"><span id=\"x{n}\">{n}</span></div>\n<script src=\"app{n}.js\"></script>"]
REPEATED = ["আমাদের নতুন অফার দেখতে এখানে ক্লিক করুন", "সেরা দামে মোবাইল কিনুন আজই অর্ডার করুন",
            "বিনামূল্যে ডাউনলোড করুন এবং শেয়ার করুন"]


def noise(count: int, rng: random.Random) -> list[str]:
    """Distinct non-Bangla or junk documents of four kinds, in turn."""
    out = []
    for i in range(count):
        n = rng.randint(10, 99_999)
        kind = i % 4
        if kind == 0:
            out.append(" ".join(rng.choice(ENGLISH).format(n=n + j) for j in range(4)))
        elif kind == 1:
            out.append(rng.choice(CODE).format(n=n))
        elif kind == 2:
            out.append(" ".join(str(rng.randint(0, 10**6)) for _ in range(40)).translate(
                str.maketrans("0123456789", "০১২৩৪৫৬৭৮৯") if i % 8 == 2 else {}))
        else:
            out.append("\n".join([rng.choice(REPEATED) + f" {n}"] * rng.randint(6, 12)))
    return [normalize(t) for t in out]


def planted_corpus(books: int, seed: int = 0, exact: int = 60, near: int = 60, junk: int = 40):
    """(originals, planted [(kind, text)]): planted copies come from distinct originals with
    at least 20 words (near) or any (exact); every planted text is new to the corpus."""
    rng = random.Random(seed)
    originals = original_paragraphs(books)
    vocabulary = sorted({w for t in originals for w in t.split()})
    chosen = rng.sample(range(len(originals)), exact + near * 3)
    planted = [("exact", originals[i]) for i in chosen[:exact]]
    seen = set(originals)
    for i in chosen[exact:]:
        if sum(kind == "near" for kind, _ in planted) == near:
            break
        if len(originals[i].split()) >= 20:
            copy = near_copy(originals[i], vocabulary, rng)
            if copy not in seen:
                seen.add(copy)
                planted.append(("near", copy))
    planted += [("noise", t) for t in noise(junk, rng)]
    return originals, planted


def write_corpus(folder: Path, originals: list[str], planted: list[tuple[str, str]]) -> list[str]:
    """originals.jsonl then planted.jsonl in `folder`; the input paths, in order."""
    paths = [folder / "1-originals.jsonl", folder / "2-planted.jsonl"]
    for path, texts in zip(paths, (originals, [t for _, t in planted])):
        path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return [str(p) for p in paths]


def removed_ids(out: Path) -> dict[str, set[int]]:
    """step -> ids (input positions) it removed, from removed/STEP.jsonl."""
    return {path.stem: {int(json.loads(line)["id"]) for line in open(path, encoding="utf-8")}
            for path in (out / "removed").glob("*.jsonl")}


def score(originals: list[str], planted: list[tuple[str, str]], removed: dict[str, set[int]]) -> dict:
    kinds = {len(originals) + i: kind for i, (kind, _) in enumerate(planted)}
    rows = {}
    for kind, steps in TARGET.items():
        total = sum(k == kind for k in kinds.values())
        for step in steps:
            ids = removed.get(step, set())
            hits = sum(kinds.get(i) == kind for i in ids)
            rows[step] = {"kind": kind, "removed": len(ids), "hits": hits, "planted": total,
                          "precision": hits / len(ids) if ids else float("nan"), "recall": hits / total}
        caught = set().union(*(removed.get(s, set()) for s in steps))
        rows[f"all {kind} steps"] = {"kind": kind, "recall": sum(kinds.get(i) == kind for i in caught) / total}
    every = set().union(*removed.values())
    rows["planted removed (any step)"] = sum(i in every for i in kinds) / len(kinds)
    rows["originals removed"] = sum(i < len(originals) for i in every) / len(originals)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--books", type=int, default=len(PROSE))
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", choices=list(CLEAN_PRESETS), default="literature", help="clean's thresholds")
    ap.add_argument("--minhash-bands", type=int, default=None, help="override CleanOptions' MinHash bands")
    ap.add_argument("--minhash-rows", type=int, default=None, help="override CleanOptions' MinHash hashes per band")
    args = ap.parse_args()
    if not BOOKS.is_dir():
        sys.exit(f"{BOOKS} is missing (the shared data folder)")
    originals, planted = planted_corpus(args.books, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        inputs = write_corpus(Path(tmp), originals, planted)
        start = time.perf_counter()
        minhash = {k: v for k, v in (("minhash_bands", args.minhash_bands), ("minhash_rows", args.minhash_rows))
                   if v is not None}
        options = CleanOptions.preset(args.preset, **minhash)
        result = clean(inputs, Path(tmp) / "out", options,
                       workers=args.workers,
                       keep_removed=True)
        seconds = time.perf_counter() - start
        rows = score(originals, planted, removed_ids(Path(tmp) / "out"))
    print(f"{len(originals):,} original paragraphs from {args.books} books, {len(planted)} planted "
          f"({', '.join(f'{sum(k == kind for k, _ in planted)} {kind}' for kind in TARGET)}); workers {args.workers}, "
          f"preset {args.preset}\n")
    print("| step | targets | removed | of them planted targets | precision | recall |")
    print("|---|---|---|---|---|---|")
    for step, r in rows.items():
        if isinstance(r, dict) and "removed" in r:
            print(f"| {step} | {r['kind']} ({r['planted']}) | {r['removed']} | {r['hits']} | "
                  f"{r['precision']:.3f} | {r['recall']:.3f} |")
    for step, r in rows.items():
        if isinstance(r, dict) and "removed" not in r:
            print(f"| {step} | {r['kind']} | | | | {r['recall']:.3f} |")
    print(f"\nplanted items removed by any step: {rows['planted removed (any step)']:.1%}; "
          f"original paragraphs removed: {rows['originals removed']:.2%}")
    print(f"{result.input_bytes / 1e6:.2f} MB of normalized text in {seconds:.1f} s: "
          f"{result.input_bytes / 1e6 / seconds:.2f} MB/s (whole command, datatrove start-up included)")


if __name__ == "__main__":
    main()
