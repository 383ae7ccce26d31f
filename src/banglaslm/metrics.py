"""`metrics.jsonl` (one JSON record per logged step or evaluation) and the loss-curve PNG.

Step records: {"iter", "loss", "lr", "tokens_per_s"}; evaluation records: {"iter", "split",
"loss"}. On resume the log is cut back to what the checkpoint had seen, so a resumed run's
log reads exactly like an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path

from .fileio import atomic_path, atomic_write_text


class MetricsLog:
    def __init__(self, path: Path):
        self.path = path
        self.records: list[dict] = []
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    self.records.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a torn last line from a crash: drop it
        self._fh = None

    def truncate_to(self, resume_iter: int) -> None:
        """Keep steps before `resume_iter` and evaluations up to it (they precede the save)."""
        self.records = [r for r in self.records
                        if r["iter"] < resume_iter or ("split" in r and r["iter"] == resume_iter)]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def reset(self) -> None:
        self.records = []
        atomic_write_text(self.path, "")

    def append(self, record: dict) -> None:
        self.records.append(record)
        if self._fh is None:
            self._fh = open(self.path, "a", encoding="utf-8")
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def plot(self, png: Path, title: str = "") -> None:
        """Train loss per step (thin), train and val loss per evaluation (thick)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [r for r in self.records if "split" not in r]
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        if steps:
            ax.plot([r["iter"] for r in steps], [r["loss"] for r in steps], lw=0.8, alpha=0.4,
                    color="tab:blue", label="train (per step)")
        for split, color in (("train", "tab:blue"), ("val", "tab:orange")):
            evals = [r for r in self.records if r.get("split") == split]
            if evals:
                ax.plot([r["iter"] for r in evals], [r["loss"] for r in evals], lw=2, marker="o",
                        ms=3, color=color, label=f"{split} (evaluation)")
        ax.set_xlabel("iteration")
        ax.set_ylabel("cross-entropy loss (nats/token)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with atomic_path(png) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
