"""Where a model's bits go on a whole text: tokens holding a line break, the token after one,
and the rest, in bits per character of the text, for each run given:

    python benchmarks/line_break_cost.py RUN_DIR [RUN_DIR ...] [--text FILE]

The text is scored as `banglaslm eval --text` scores it (normalized, paragraphs joined by blank
lines, sliding window, stride half the block). Written for the speed run's finding that models
trained on single paragraphs, which never see a paragraph break, pay about 9 bits for each one
in a book scored whole (docs/speedrun-log.md, 2026-12-01).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from banglaslm.data.sources import read_text_file  # noqa: E402
from banglaslm.evaluation.perplexity import token_logprobs  # noqa: E402
from banglaslm.runfolder import load_model  # noqa: E402
from banglaslm.text import normalize  # noqa: E402

BOOK = ROOT.parent / "shared" / "data" / "bangla-literature" / "RabindranathTagore_Prose_ChokherBaali.txt"


def breakdown(run: Path, text: str) -> dict[str, float]:
    """Bits per character of `text` under `run`'s latest checkpoint, split three ways, and the
    number of line-break tokens and their mean bits."""
    loaded = load_model(run, "latest")
    tok = loaded.tokenizer
    ids = [tok.eod_id] + tok.encode(text, normalized=True)
    bits = {"line-break tokens": 0.0, "token after one": 0.0, "rest": 0.0}
    breaks, after_break = 0, False
    for (logprob, _), token in zip(token_logprobs(loaded.model.eval(), ids), ids[1:]):
        is_break = "\n" in tok.decode([token])
        part = "line-break tokens" if is_break else "token after one" if after_break else "rest"
        bits[part] += -logprob / math.log(2)
        breaks, after_break = breaks + is_break, is_break
    out = {name: b / len(text) for name, b in bits.items()}
    return {"total": sum(out.values()), **out, "breaks": breaks,
            "bits per break": bits["line-break tokens"] / max(breaks, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--text", type=Path, default=BOOK, help="the text to score (default: the speed run's held-out book)")
    args = ap.parse_args()
    text = normalize("\n\n".join(read_text_file(str(args.text), "file")))
    print(f"{args.text.name}: {len(text):,} characters\n")
    print("| run | total bits/char | line-break tokens | token after one | rest | line-break tokens (n) | bits per break |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for run in args.runs:
        b = breakdown(run, text)
        print(f"| {run.name} | {b['total']:.4f} | {b['line-break tokens']:.4f} | {b['token after one']:.4f} | "
              f"{b['rest']:.4f} | {b['breaks']:,} | {b['bits per break']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
