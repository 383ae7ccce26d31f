"""`metrics.jsonl` (one JSON record per logged step or evaluation) and its plots.

Step records: {"iter", "loss", "lr", "tokens_per_s", "grad_norm", "skipped_updates",
"elapsed_s"}; evaluation records: {"iter", "split", "loss", "bits_per_char", "elapsed_s"}; warning signs noticed
at an evaluation (`health`): {"iter", "event", "since", "evidence", "advice"}. On resume the log is
cut back to what the checkpoint had seen, so a resumed run's log reads like an uninterrupted
one. The trainer redraws the loss plot at every evaluation; the report reads the same file.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..fileio import atomic_path, atomic_write_text


def read_metrics(path: Path) -> list[dict]:
    """Every record of a metrics.jsonl, in order; a torn last line (a crash mid-write) is dropped."""
    records = []
    if Path(path).is_file():
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


class MetricsLog:
    def __init__(self, path: Path):
        self.path = path
        self.records = read_metrics(path)
        self._fh = None
        self.mirror = None  # a tracker's log(record), called with every appended record

    def truncate_to(self, resume_iter: int) -> None:
        """Keep steps before `resume_iter` and evaluations (and their events) up to it: they
        precede the save."""
        self.records = [r for r in self.records
                        if r["iter"] < resume_iter or (("split" in r or "event" in r) and r["iter"] == resume_iter)]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def reset(self) -> None:
        self.records = []
        atomic_write_text(self.path, "")

    def append(self, record: dict) -> None:
        self.records.append(record)
        if self._fh is not None and not self.path.exists():  # deleted under us: write it all again
            self.close()
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records[:-1]))
        if self._fh is None:
            self._fh = open(self.path, "a", encoding="utf-8")
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        if self.mirror is not None:
            self.mirror(record)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


# ---- plots ---------------------------------------------------------------------------------
def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Write `fig` as a PNG atomically and free it."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    pyplot().close(fig)


def _empty_note(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} recorded", ha="center", va="center", transform=ax.transAxes)


def plot_loss(records: list[dict], path: Path, title: str = "loss") -> None:
    """Train loss per step (thin), train and val loss per evaluation (thick), warning signs as
    dashed red lines where they began."""
    fig, ax = pyplot().subplots(figsize=(7, 4), dpi=100)
    steps = [r for r in records if "split" not in r and "loss" in r]
    for event in (r for r in records if "event" in r):  # warning signs, where they began
        ax.axvline(event["since"], color="tab:red", lw=1, ls="--", alpha=0.7)
        ax.annotate(event["event"], (event["since"], 1), xycoords=("data", "axes fraction"), rotation=90,
                    va="top", ha="right", fontsize=8, color="tab:red")
    if steps:
        ax.plot([r["iter"] for r in steps], [r["loss"] for r in steps], lw=0.8, alpha=0.4,
                color="tab:blue", label="train (per step)")
    parts = sorted({r["split"] for r in records if r.get("split", "").startswith("val/")})  # a mixture's folders
    for split, color in (("train", "tab:blue"), ("val", "tab:orange"), *((p, None) for p in parts)):
        evals = [r for r in records if r.get("split") == split]
        if evals:
            ax.plot([r["iter"] for r in evals], [r["loss"] for r in evals], lw=2 if color else 1, marker="o", ms=3,
                    color=color, ls="-" if color else "--", label=f"{split} (evaluation)")
    if records:
        ax.legend()
    else:
        _empty_note(ax, "losses")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_series(records: list[dict], key: str, ylabel: str, title: str, path: Path) -> None:
    """One per-step quantity (e.g. "lr", "tokens_per_s") against the iteration."""
    fig, ax = pyplot().subplots(figsize=(7, 3.5), dpi=100)
    points = [(r["iter"], r[key]) for r in records if "split" not in r and r.get(key) is not None]
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], lw=1.5, marker=".", color="tab:green")
    else:
        _empty_note(ax, ylabel)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
