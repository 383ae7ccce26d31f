"""An exponential moving average (EMA) of the weights: the model a run hands on when
`train.ema_decay` is set.

Why: on a small corpus read many times over, the weights at the end of a run wander about the
minimum with the noise of the last batches; their running average sits nearer its middle and
scores text the model never saw a little better (docs/speedrun-log.md, eighth session). The
average is what evaluations score and what checkpoints store as `model.*`, so eval, generate,
export and `--init-from` all use it unchanged; the weights being trained travel beside it as
`live.*` tensors, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ..checkpoint import Checkpoint

LIVE = "live."  # checkpoint tensors of the weights being trained, when the model is an average


class WeightAverage:
    """The EMA of a model's trainable parameters (tied ones once), kept beside them on their device."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        self.average = {name: p.detach().clone() for name, p in self.params.items()}

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold in the weights after optimizer step `step` (0-based). The decay ramps up as
        (1 + step) / (10 + step) until it reaches `decay`, so a short run's average is not
        dominated by the random initial weights."""
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(list(self.average.values()), [p.detach() for p in self.params.values()], 1 - decay)

    @contextlib.contextmanager
    def applied(self) -> Iterator[dict[str, torch.Tensor]]:
        """Inside, the model holds the average; it yields the trained weights (as `live.*`
        checkpoint tensors) and puts them back on leaving, however the block ends."""
        live = {name: p.detach().clone() for name, p in self.params.items()}
        self._copy_into_params(self.average)
        try:
            yield {LIVE + name: t.cpu() for name, t in live.items()}
        finally:
            self._copy_into_params(live)

    def restore(self, ckpt: Checkpoint) -> None:
        """After the checkpoint's `model.*` went into the model: those are the average, and the
        trained weights come from its `live.*` tensors (a checkpoint without them, from a run
        without averaging, starts the average at its weights)."""
        live = {name[len(LIVE):]: t for name, t in ckpt.tensors.items() if name.startswith(LIVE)}
        if live:
            self.average = {name: p.detach().clone() for name, p in self.params.items()}
            self._copy_into_params(live)

    @torch.no_grad()
    def _copy_into_params(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, p in self.params.items():
            p.copy_(tensors[name])
