"""The update guard: what happens to an update whose gradient is not finite or far too large.

A non-finite gradient cannot be applied, so that update is skipped; `max_skipped_updates` of
them in a row stop the run (the weights are unchanged by a skip, so a run that keeps producing
them will not recover by itself). A spike, a gradient norm over `grad_spike_factor` times the
recent median, is clipped down to that bound and applied: skipping it would leave the weights
where the spike came from, so the next batches spike too. So the guard never stops a run that
plain clipping would carry through. Every rank sees the same all-reduced norm and decides alike;
under fp16 the gradient scaler handles overflow itself (it skips the step and lowers its scale).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable

from ..config import TrainConfig
from ..errors import UserError

NORM_HISTORY = 50  # gradient norms the spike rule takes its median over
MIN_HISTORY = 10   # norms needed before the spike rule applies


class TrainingDiverged(UserError):
    """Too many updates in a row had a non-finite gradient."""


class UpdateGuard:
    def __init__(self, cfg: TrainConfig, precision: str, on_disk: Callable[[], str]):
        """`on_disk()` describes the checkpoint a stopped run can go on from (for the message)."""
        self.cfg, self.precision, self.on_disk = cfg, precision, on_disk
        self.norms: deque[float] = deque(maxlen=NORM_HISTORY)
        self.skipped_total = 0
        self.skipped_in_row = 0
        self.clipped_spikes = 0

    def state(self) -> dict:
        return {"grad_norms": list(self.norms), "skipped_updates": self.skipped_total,
                "clipped_spikes": self.clipped_spikes}

    def restore(self, state: dict) -> None:
        self.norms.extend(state.get("grad_norms", []))
        self.skipped_total = int(state.get("skipped_updates", 0))
        self.clipped_spikes = int(state.get("clipped_spikes", 0))

    def bound(self, norm: float) -> float | None:
        """The norm to clip this update to (math.inf: no clipping), or None to skip it. Raises
        TrainingDiverged after `max_skipped_updates` skips in a row."""
        if not math.isfinite(norm):
            if self.precision == "fp16":
                return math.inf  # the scaler skips it and lowers its scale
            self._skipped(norm)
            return None
        self.skipped_in_row = 0
        limit = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        factor = self.cfg.grad_spike_factor
        if factor > 0 and len(self.norms) >= MIN_HISTORY:
            spike_bound = factor * statistics.median(self.norms)
            if norm > spike_bound:
                self.clipped_spikes += 1
                limit = min(limit, spike_bound)
        self.norms.append(norm)
        return limit

    def _skipped(self, norm: float) -> None:
        self.skipped_total += 1
        self.skipped_in_row += 1
        if self.skipped_in_row >= self.cfg.max_skipped_updates:
            raise TrainingDiverged(
                f"{self.skipped_in_row} updates in a row had a non-finite gradient (last norm {norm}) and were "
                f"skipped, so the run stops; {self.on_disk()}")
