"""Peak memory of training steps against `training/memory.py`'s estimate (which refuses configs
that cannot fit before anything is allocated).

    python benchmarks/train_memory.py

Each row runs in a fresh process: build the model and AdamW, take two training steps on random
ids, and report the growth of peak resident memory (ru_maxrss) against the estimate.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = [("tiny", 16, 8000), ("tiny", 64, 8000), ("tiny", 16, 32000), ("small", 4, 8000), ("small", 16, 8000),
         ("cpu-ref", 12, 100), ("course-58m", 8, 32100)]

CHILD = r"""
import json, resource, sys, torch
sys.path.insert(0, sys.argv[4])
from banglaslm.config import build_config
from banglaslm.model import GPT
from banglaslm.training.memory import training_bytes
from banglaslm.training.optim import make_optimizer
preset, batch, vocab = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cfg = build_config(preset, overrides={"model.vocab_size": vocab, "train.batch_size": batch})
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
model = GPT(cfg.model)
optimizer = make_optimizer(model, cfg.train)
x = torch.randint(0, vocab, (batch, cfg.model.block_size))
for _ in range(2):
    _, loss = model(x, x)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"measured": peak - base, "estimate": training_bytes(cfg), "params": model.num_params()}))
"""


def main() -> None:
    print("| preset | batch | vocab | parameters | measured peak (MiB) | estimate (MiB) | estimate / measured |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for preset, batch, vocab in CASES:
        out = subprocess.run([sys.executable, "-c", CHILD, preset, str(batch), str(vocab), str(ROOT / "src")],
                             capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"| {preset} | {batch} | {vocab:,} | {r['params']:,} | {r['measured'] / 2**20:,.0f} | "
              f"{r['estimate'] / 2**20:,.0f} | {r['estimate'] / r['measured']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
