"""Starting a new run from the weights of another (`train --init-from RUN_DIR`): continued
pretraining on new data. The weights and the model config come from the source run; the
optimizer, the LR schedule, the step counter, the best validation loss and the data position
start fresh. The data must be tokenized with the source's tokenizer.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ..checkpoint import load_checkpoint
from ..config import RunConfig
from ..errors import UserError
from ..runfolder import RunFolder


class WarmStart:
    """The source run of a warm start: its model config, weights and provenance."""

    def __init__(self, source: str | Path, tokenizer_sha256: str):
        self.run = RunFolder(source)
        self.run.require()
        path = self.run.checkpoint("best")
        self.path = path if path.is_file() else self.run.checkpoint("latest")
        if not self.path.is_file():
            raise UserError(f"--init-from {self.run.path} has no checkpoint yet; train it first")
        self.checkpoint = load_checkpoint(self.path, weights_only=True)
        if self.checkpoint.state.get("tokenizer_sha256") != tokenizer_sha256:
            raise UserError(f"the data was tokenized with another tokenizer than the run in {self.run.path}; "
                            f"prepare it with that run's tokenizer (prepare --tokenizer {self.run.tokenizer_path})")
        self.model_config = self.run.load_config().model

    def config(self, given: RunConfig) -> RunConfig:
        """`given`'s train settings with the source's model."""
        return replace(given, model=replace(self.model_config))

    def load_into(self, model: torch.nn.Module) -> None:
        missing, unexpected = model.load_state_dict(self.checkpoint.model_state(), strict=False)
        tied = {"lm_head.weight"} if self.model_config.arch == "modern" else set()
        if set(missing) - tied or unexpected:
            raise UserError(f"{self.path} does not fit the model in {self.run.config_path}")

    def provenance(self) -> dict:
        return {"path": str(self.run.path.resolve()), "checkpoint": self.path.name,
                "iter": int(self.checkpoint.state.get("iter", 0))}
