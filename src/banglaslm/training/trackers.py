"""Experiment trackers: the records of metrics.jsonl mirrored into TensorBoard or Weights &
Biases (`train.logger`).

Why a mirror and not a second source: metrics.jsonl stays the run's own record (plots, the
report and resume read it); a tracker gets exactly the same numbers as they are written, so
the two cannot disagree. A resumed run continues the same curves: TensorBoard is told to purge
anything written after the step the run resumes from; W&B resumes the same run id (kept in
RUN_DIR/wandb/), and its server keeps the first value logged at a step.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from ..errors import bad_param
from ..fileio import atomic_write_text

TENSORBOARD_DIR = "tensorboard"  # RUN_DIR/tensorboard/: `tensorboard --logdir RUN_DIR`
WANDB_DIR = "wandb"              # RUN_DIR/wandb/: W&B's own files, and the run id
STEP_SCALARS = ("loss", "lr", "tokens_per_s", "grad_norm", "skipped_updates", "clipped_spikes")


def check_logger(logger: str) -> None:
    """UserError naming the extra to install when the chosen tracker's library is missing."""
    try:
        if logger == "tensorboard":
            import tensorboard  # noqa: F401
        elif logger == "wandb":
            import wandb  # noqa: F401
    except ImportError:
        raise bad_param("train.logger", f"{logger} needs the {logger} package: "
                                        f"pip install 'banglaslm[{logger}]'") from None


def scalars(record: dict) -> dict[str, float]:
    """A metrics record's numbers under the trackers' names: train/* for a step, eval/* for an
    evaluation (loss and bits per character of its split)."""
    if "split" in record:
        out = {f"eval/{record['split']}_loss": record["loss"]}
        if record.get("bits_per_char") is not None:
            out[f"eval/{record['split']}_bits_per_char"] = record["bits_per_char"]
        return out
    if "event" in record:
        return {}
    return {f"train/{key}": record[key] for key in STEP_SCALARS if record.get(key) is not None}


def health_text(record: dict) -> str:
    return f"{record['event']} since step {record['since']}: {record['evidence']}"


def make_tracker(logger: str, run_dir: Path, config: dict, resume_iter: int | None, kept: list[dict]):
    """The tracker `logger` names, or None for "none"."""
    if logger == "tensorboard":
        return TensorBoardTracker(run_dir, config, resume_iter, kept)
    if logger == "wandb":
        return WandbTracker(run_dir, config, resume_iter)
    return None


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
        if "event" in record:
            self.writer.add_text("health", health_text(record), record["iter"])
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, record["iter"])

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """Logs each metrics record to a W&B run at step = iteration (warning signs as `health`
    text), with the run config. Offline unless WANDB_MODE says otherwise: no account or network
    needed, and `wandb sync RUN_DIR/wandb/offline-run-*` uploads it later."""

    def __init__(self, run_dir: Path, config: dict, resume_iter: int | None):
        """A resumed run (`resume_iter` set) logs what it adds to metrics.jsonl into the run id it
        had. Steps it redoes after a kill were logged before; W&B keeps those first values, the
        same losses (resume is exact) with the first attempt's timings."""
        import wandb

        folder = Path(run_dir) / WANDB_DIR
        id_file = folder / "run_id"
        resumed = resume_iter is not None and id_file.is_file()
        run_id = id_file.read_text(encoding="utf-8").strip() if resumed else uuid.uuid4().hex[:12]
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(id_file, run_id + "\n")
        try:
            self.run = wandb.init(
                dir=str(run_dir), id=run_id, resume="allow" if resumed else None, config=config,
                project=os.environ.get("WANDB_PROJECT", "banglaslm"), name=Path(run_dir).absolute().name,
                mode=os.environ.get("WANDB_MODE", "offline"),
                settings=wandb.Settings(console="off", x_disable_stats=True, silent=True))
        except wandb.errors.Error as e:  # online without a login, an unreachable server, ...
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise bad_param("train.logger", f"wandb could not start ({first}); run `wandb login`, or unset "
                                            "WANDB_MODE to log offline") from None

    def log(self, record: dict) -> None:
        values = {"health": health_text(record)} if "event" in record else scalars(record)
        if values:
            self.run.log(values, step=record["iter"])

    def close(self) -> None:
        self.run.finish()
