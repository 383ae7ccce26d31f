"""`prepare`'s peak memory on documents far longer than a page: the same text as one line with
no line break, as one multi-line document (`--doc-split file`), and as paragraphs.

    python benchmarks/prepare_long_documents.py [--mb 20] [--tokenizer char|bpe] [--src PATH]

The text is the shared Bangla books' words, repeated to `--mb` MB. Each prepare runs in its own
process (`python -m banglaslm prepare`, 1 worker); its peak resident memory is read from
`wait4`. `--src` runs another checkout's `src` folder instead of the installed package (to
measure a version before a change side by side).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BOOKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "bangla-literature"


def texts(mb: float) -> tuple[dict[str, tuple[str, str]], str]:
    """(file text, --doc-split) per shape, each about `mb` MB of UTF-8; and the text of a small
    second file, 100 paragraphs (a split needs two documents)."""
    paragraphs = [p.strip() for book in sorted(BOOKS.glob("*.txt"))
                  for p in book.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    other = "\n\n".join(paragraphs[:100])
    body = "\n\n".join(paragraphs)
    body = body * max(1, round(mb * 1e6 / len(body.encode("utf-8"))))
    return {"one line, no line break": (" ".join(body.split()), "page"),
            "one multi-line document": (body, "file"),
            "paragraphs": (body, "paragraph")}, other


def run(src: str | None, paths: list[Path], out: Path, split: str, tokenizer: str) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of one prepare."""
    env = {**os.environ, **({"PYTHONPATH": src} if src else {})}
    cmd = [sys.executable, "-m", "banglaslm", "prepare", *map(str, paths), "--out", str(out), "--doc-split", split,
           "--tokenizer", tokenizer, "--val-fraction", "0.1"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"prepare failed: {proc.stderr.read().decode()}")
    return usage.ru_maxrss / 1024, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=20)
    ap.add_argument("--tokenizer", default="char", choices=("char", "bpe"), help="bpe: 8,000 (prepare's default)")
    ap.add_argument("--src", help="a checkout's src folder to run instead of the installed package")
    args = ap.parse_args()
    if not BOOKS.is_dir():
        raise SystemExit(f"needs the shared books in {BOOKS}")
    print(f"| input ({args.mb:g} MB) | --doc-split | peak RSS (MB) | seconds |\n|---|---|---|---|")
    shapes, other = texts(args.mb)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "other.txt").write_text(other, encoding="utf-8")
        for i, (shape, (text, split)) in enumerate(shapes.items()):
            path = Path(tmp) / f"{i}.txt"
            path.write_text(text, encoding="utf-8")
            rss, seconds = run(args.src, [path, Path(tmp) / "other.txt"], Path(tmp) / f"out{i}", split,
                               args.tokenizer)
            print(f"| {shape} | {split} | {rss:,.0f} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
