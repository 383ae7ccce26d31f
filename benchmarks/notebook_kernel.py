"""Training speed inside a Jupyter kernel, with OpenMP's default (spinning) wait policy and with
OMP_WAIT_POLICY=passive, beside the same training in a plain process. Why the Colab notebook
sets the passive policy before torch loads.

    python benchmarks/notebook_kernel.py [--steps 20] [--rounds 2] [--busy 1]

Each measurement is a fresh process (a kernel started by nbclient, or `python -c`) that trains
the `tiny` preset for --steps steps on the embedded corpus and reports the seconds the
training call took. Rounds alternate the three setups. `--busy N` keeps N other processes
doing PyTorch matrix work meanwhile (a shared machine; a Colab CPU is two hyperthreads).
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAIN = """
import time
from banglaslm import build_config, prepare, train
from banglaslm.data.corpus import corpus_dir
prepare([str(corpus_dir())], {data!r}, vocab_size=1024, progress=False)
config = build_config("tiny", overrides={{"train.max_iters": {steps}, "train.warmup_iters": 5,
                                          "train.eval_interval": 1000}})
start = time.perf_counter()
train({data!r}, {run!r}, config, progress=False)
print("SECONDS", time.perf_counter() - start)
"""


def in_kernel(code: str, env: dict) -> float:
    import nbclient
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(code)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    old = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        nbclient.NotebookClient(nb, timeout=1800, kernel_name="python3").execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    text = "".join(o.get("text", "") for o in nb.cells[0].outputs)
    return float(text.split("SECONDS")[1].split()[0])


def in_process(code: str, env: dict) -> float:
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    return float(out.split("SECONDS")[1].split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--busy", type=int, default=0, help="other CPU-bound processes running meanwhile")
    args = parser.parse_args()
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(args.busy)]
    try:
        measure(args)
    finally:
        for proc in busy:
            proc.kill()


BUSY = "import torch\nx = torch.randn(512, 512)\nwhile True: x = torch.tanh(x @ x)"


def measure(args) -> None:
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    setups = {"plain process": (in_process, base), "kernel, default wait policy": (in_kernel, base),
              "kernel, OMP_WAIT_POLICY=passive": (in_kernel, {**base, "OMP_WAIT_POLICY": "passive"})}
    times: dict[str, list[float]] = {name: [] for name in setups}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for i, (name, (runner, env)) in enumerate(setups.items()):
                folder = Path(tmp) / f"round{r}-setup{i}"
                code = TRAIN.format(data=str(folder / "data"), run=str(folder / "run"), steps=args.steps)
                times[name].append(runner(code, env))
    best_plain = min(times["plain process"])
    print(f"tiny preset, {args.steps} steps, best of {args.rounds} alternating rounds, {args.busy} busy "
          f"process(es) beside, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs\n")
    print("| setup | seconds (best) | all rounds | x plain process |")
    print("|---|---:|---|---:|")
    for name, values in times.items():
        print(f"| {name} | {min(values):.1f} | {', '.join(f'{v:.1f}' for v in values)} | "
              f"{min(values) / best_plain:.2f} |")


if __name__ == "__main__":
    main()
