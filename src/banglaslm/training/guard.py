"""The update guard: an update whose gradient is not finite, or far larger than usual, is
skipped instead of poisoning the weights, and too many skips in a row stop the run.

Every rank sees the same (all-reduced) gradient norm, so every rank decides alike. Under fp16
the gradient scaler handles overflow itself (it skips the step and lowers its scale), so a
non-finite norm is normal there and left to it.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from pathlib import Path

from ..config import TrainConfig
from ..errors import UserError

NORM_HISTORY = 50  # gradient norms the spike rule takes its median over
MIN_HISTORY = 10   # norms needed before the spike rule applies


class TrainingDiverged(UserError):
    """Too many updates in a row had non-finite or outlier gradients."""


class UpdateGuard:
    def __init__(self, cfg: TrainConfig, precision: str, last_checkpoint: Path):
        self.cfg, self.precision, self.last_checkpoint = cfg, precision, last_checkpoint
        self.norms: deque[float] = deque(maxlen=NORM_HISTORY)
        self.skipped_total = 0
        self.skipped_in_row = 0

    def state(self) -> dict:
        return {"grad_norms": list(self.norms), "skipped_updates": self.skipped_total}

    def restore(self, state: dict) -> None:
        self.norms.extend(state.get("grad_norms", []))
        self.skipped_total = int(state.get("skipped_updates", 0))

    def skip(self, norm: float) -> bool:
        """Whether to skip the update whose global gradient norm is `norm`; raises
        TrainingDiverged after `max_skipped_updates` skips in a row."""
        bad = self._bad(norm)
        if not bad:
            self.skipped_in_row = 0
            return False
        self.skipped_total += 1
        self.skipped_in_row += 1
        if self.skipped_in_row >= self.cfg.max_skipped_updates:
            raise TrainingDiverged(
                f"{self.skipped_in_row} updates in a row were skipped (last gradient norm {norm:.3g}); "
                f"the last good checkpoint is {self.last_checkpoint}; lower train.learning_rate and continue "
                "with --resume")
        return True

    def _bad(self, norm: float) -> bool:
        if not math.isfinite(norm):
            return self.precision != "fp16"
        factor = self.cfg.grad_spike_factor
        if factor > 0 and len(self.norms) >= MIN_HISTORY and norm > factor * statistics.median(self.norms):
            return True
        self.norms.append(norm)
        return False
