"""Does any preset's default run stop on a real corpus? The update guard's sweep.

    python benchmarks/guard_sweep.py                               # tiny + cpu-ref, every corpus, 300 steps
    python benchmarks/guard_sweep.py --presets small --corpora all-bpe8000 all-char --steps 300
    python benchmarks/guard_sweep.py --presets course-58m --corpora all-bpe1000 --steps 60

Corpora (from ../shared/data/bangla-literature, prepared once into --work): each of the 25
books alone (BPE 1,000, split by paragraph: one book is one document otherwise), all books
with BPE 8,000 (the default vocabulary), BPE 1,000 and characters, and the two books of the
run the old guard stopped (`pagladashu+lipika`, BPE 1,000, prepared as that run did). Each run
is the preset with its default settings but `train.max_iters` (= --steps, the schedule
included; a run shorter than the preset's warm-up warms up for a tenth of its steps). Reported
per run: whether it stopped (and how), updates skipped (non-finite gradients) and spikes
clipped, and the last validation loss. Appends one JSON line per run to WORK/guard_sweep.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from banglaslm.config import PRESETS, build_config  # noqa: E402
from banglaslm.data.prepare import prepare  # noqa: E402
from banglaslm.errors import UserError  # noqa: E402
from banglaslm.training.trainer import train  # noqa: E402

LITERATURE = ROOT.parent / "shared" / "data" / "bangla-literature"


def corpora() -> dict[str, dict]:
    """name → prepare() arguments."""
    out = {f"book-{p.stem}": {"inputs": [str(p)], "vocab_size": 1000, "doc_split": "paragraph"}
           for p in sorted(LITERATURE.glob("*.txt"))}
    out["all-bpe8000"] = {"inputs": [str(LITERATURE)], "vocab_size": 8000}
    out["all-bpe1000"] = {"inputs": [str(LITERATURE)], "vocab_size": 1000}
    out["all-char"] = {"inputs": [str(LITERATURE)], "tokenizer": "char"}
    # the run that stopped at iteration ~47 under the old guard (two books, one document each)
    out["pagladashu+lipika"] = {"inputs": [str(LITERATURE / "SukumarRay_Prose_PaglaDashu.txt"),
                                          str(LITERATURE / "RabindranathTagore_Prose_Lipika.txt")], "vocab_size": 1000}
    return out


def data_folder(work: Path, name: str, spec: dict) -> Path:
    folder = work / "data" / name
    if not (folder / "meta.json").is_file():
        prepare(spec["inputs"], folder, **{k: v for k, v in spec.items() if k != "inputs"}, progress=False)
    return folder


def run_one(work: Path, data: Path, preset: str, steps: int) -> dict:
    run = work / "runs" / f"{data.name}-{preset}-{steps}"
    if run.exists():
        import shutil

        shutil.rmtree(run)
    started = time.perf_counter()
    config = build_config(preset)
    config.train.warmup_iters = min(config.train.warmup_iters, steps // 10) if steps < config.train.warmup_iters \
        else config.train.warmup_iters  # a run shorter than the warm-up gets a tenth of its steps
    try:
        result = train(data, run, config, max_iters=steps, progress=False)
        stopped, skipped, val = None, result.skipped_updates, result.last_eval.get("val")
    except UserError as exc:
        stopped, skipped, val = str(exc), None, None
    metrics = run / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines()] if metrics.is_file() else []
    clipped = max((r.get("clipped_spikes", 0) for r in records), default=0)
    return {"corpus": data.name, "preset": preset, "steps": steps, "stopped": stopped, "skipped": skipped,
            "clipped_spikes": clipped, "val_loss": val, "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "cpu-ref"], choices=list(PRESETS))
    parser.add_argument("--corpora", nargs="+", default=None, help="names (default: all); see the docstring")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--work", type=Path, default=Path("/tmp/banglaslm-guard-sweep"))
    args = parser.parse_args()
    if not LITERATURE.is_dir():
        sys.exit(f"skipped: the shared Bangla corpus is not at {LITERATURE}")
    specs = corpora()
    names = args.corpora or list(specs)
    unknown = sorted(set(names) - set(specs))
    if unknown:
        sys.exit(f"unknown corpora {unknown}; choose from {sorted(specs)}")
    args.work.mkdir(parents=True, exist_ok=True)
    print("| corpus | preset | steps | stopped | skipped | clipped spikes | last val loss | seconds |")
    print("|---|---|---:|---|---:|---:|---:|---:|")
    for name in names:
        data = data_folder(args.work, name, specs[name])
        for preset in args.presets:
            row = run_one(args.work, data, preset, args.steps)
            with open(args.work / "guard_sweep.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            val = "-" if row["val_loss"] is None else f"{row['val_loss']:.3f}"
            print(f"| {name} | {preset} | {args.steps} | {row['stopped'] or 'no'} | {row['skipped']} | "
                  f"{row['clipped_spikes']} | {val} | {row['seconds']} |", flush=True)


if __name__ == "__main__":
    main()
