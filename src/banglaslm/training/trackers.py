"""Experiment trackers: the records of metrics.jsonl mirrored into TensorBoard (`train.logger`).

Why a mirror and not a second source: metrics.jsonl stays the run's own record (plots, the
report and resume read it); a tracker gets exactly the same numbers as they are written, so
the two cannot disagree. A resumed run continues the same curves: TensorBoard is told to
purge anything written after the step the run resumes from.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import bad_param

TENSORBOARD_DIR = "tensorboard"  # RUN_DIR/tensorboard/: `tensorboard --logdir RUN_DIR`
STEP_SCALARS = ("loss", "lr", "tokens_per_s", "grad_norm", "skipped_updates", "clipped_spikes")


def check_logger(logger: str) -> None:
    """UserError naming the extra to install when the chosen tracker's library is missing."""
    if logger == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise bad_param("train.logger", "tensorboard needs the tensorboard package: "
                                            "pip install 'banglaslm[tensorboard]'") from None


class TensorBoardTracker:
    """Writes each metrics record as TensorBoard scalars (train/*, eval/*) and warning signs as text."""

    def __init__(self, run_dir: Path, config: dict, resume_iter: int | None, kept: list[dict] = ()):
        """`kept`: the metrics records a resumed run keeps; those of `resume_iter` itself (its
        evaluation) are written again, since TensorBoard purges everything from that step on."""
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR), purge_step=resume_iter)
        if resume_iter is None:
            self.writer.add_text("config", f"```\n{json.dumps(config, indent=2)}\n```", 0)
        for record in kept:
            if record["iter"] == resume_iter:
                self.log(record)

    def log(self, record: dict) -> None:
        it = record["iter"]
        if "split" in record:
            self.writer.add_scalar(f"eval/{record['split']}_loss", record["loss"], it)
        elif "event" in record:
            self.writer.add_text("health", f"{record['event']} since step {record['since']}: {record['evidence']}", it)
        else:
            for key in STEP_SCALARS:
                if record.get(key) is not None:
                    self.writer.add_scalar(f"train/{key}", record[key], it)

    def close(self) -> None:
        self.writer.close()
