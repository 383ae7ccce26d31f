"""Fine-tuning throughput and packing on the embedded instruction set: full fine-tuning and LoRA.

    python benchmarks/finetune_speed.py                  # base: the quick start's model (trained here, cached)
    python benchmarks/finetune_speed.py --base RUN_DIR --steps 60 --lora-rank 8

For each variant: the padding share and the conversations cut because they were longer than a
block (from the run's data_meta.json), the training speed in block tokens per second as the
trainer logs it (padding included; the median of its logged windows after the first), and the
same in assistant tokens per second (the positions that carry loss). Evaluation is off during
the measured steps.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from finetune_learning import base_run  # noqa: E402

from banglaslm.data.instructions import instruction_files  # noqa: E402
from banglaslm.runfolder import RunFolder  # noqa: E402
from banglaslm.training.finetune import finetune, finetune_config  # noqa: E402


def measure(base: Path, out: Path, steps: int, lora_rank: int) -> dict:
    """Fine-tune `base` on the embedded set for `steps` steps into `out`; the figures of the table."""
    overrides = {"train.max_iters": steps, "train.eval_interval": steps, "train.eval_iters": 1,
                 "train.log_interval": 5, "train.checkpoint_interval": 0}
    if lora_rank:
        overrides["finetune.lora_rank"] = lora_rank
    if out.exists():
        shutil.rmtree(out)
    config = finetune_config(RunFolder(base).load_config(), overrides=overrides)
    finetune(base, [str(p) for p in instruction_files()], out, config, progress=False, say=lambda line: None)
    train = json.loads((out / "data_meta.json").read_text())["splits"]["train"]
    block = json.loads((out / "data_meta.json").read_text())["block_size"]
    logged = [r["tokens_per_s"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if "tokens_per_s" in r][1:]
    tokens_per_s = statistics.median(logged)
    return {"variant": f"LoRA r={lora_rank}" if lora_rank else "full", "conversations": train["conversations"],
            "block": block, "padding": train["padding_share"], "split": train["split"], "dropped": train["dropped"],
            "tokens_per_s": tokens_per_s,
            "assistant_per_s": tokens_per_s * train["trained"] / (train["blocks"] * block)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default=None, help="run folder to fine-tune (default: a quick-start model)")
    ap.add_argument("--base-iters", type=int, default=1200, help="steps of the quick-start base when trained here")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--work", default="/tmp/banglaslm-finetune-learning")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base = Path(args.base) if args.base else base_run(work, args.base_iters)
    rows = [measure(base, work / f"speed-r{rank}", args.steps, rank) for rank in (0, args.lora_rank)]
    print(f"base: {base}; {args.steps} steps each")
    print("| variant | training conversations | block | padding | cut (longer than a block) | pieces dropped "
          "| tokens/s (all) | assistant tokens/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['conversations']} | {r['block']} | {r['padding']:.1%} | {r['split']} | "
              f"{r['dropped']} | {r['tokens_per_s']:,.0f} | {r['assistant_per_s']:,.0f} |")


if __name__ == "__main__":
    main()
