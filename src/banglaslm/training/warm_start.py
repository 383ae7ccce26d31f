"""Starting a new run from the weights of another (`train --init-from`, `finetune SOURCE`):
continued pretraining and fine-tuning. The weights and the model come from the source run;
the optimizer, the LR schedule, the step counter, the best validation loss and the data
position start fresh. The data must be tokenized with the source's tokenizer. (A Hugging
Face folder becomes a source run through `interop.hf_import` first: the command line does it.)
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import load_checkpoint
from ..config import RunConfig, inherited, resolved_model, validate
from ..errors import UserError
from ..model import tied_keys
from ..runfolder import RunFolder
from ..tokenizer import Tokenizer

# Model settings a new run may change from its source's (the rest fix the weights' shapes).
FREE_MODEL_KEYS = {"dropout"}


class WarmStart:
    """The source run of a warm start: its config, weights, tokenizer and provenance."""

    def __init__(self, source: str | Path):
        self.run = RunFolder(source)
        self.run.require()
        path = self.run.checkpoint("best")
        self.path = path if path.is_file() else self.run.checkpoint("latest")
        if not self.path.is_file():
            raise UserError(f"{self.run.path} has no checkpoint yet; train it first")
        self.checkpoint = load_checkpoint(self.path, weights_only=True)
        self.source_config = self.run.load_config()
        self.recorded: dict | None = None  # a resumed run's own record of where it started, kept as it is

    @property
    def named(self) -> str:
        """The source as the user named it: a Hugging Face folder's path, not the temporary run
        folder it was imported into."""
        return (self.checkpoint.state.get("imported_from") or {}).get("path") or str(self.run.path)

    def tokenizer(self) -> Tokenizer:
        return Tokenizer.from_file(self.run.tokenizer_path)

    def check_tokenizer(self, tokenizer_sha256: str) -> None:
        """UserError unless data tokenized with `tokenizer_sha256` fits the source's vocabulary."""
        if self.checkpoint.state.get("tokenizer_sha256") != tokenizer_sha256:
            imported = (self.checkpoint.state.get("imported_from") or {}).get("path")  # a Hugging Face folder
            where = f"{self.run.path} (imported from {imported})" if imported else str(self.run.path)
            raise UserError(f"the data was tokenized with another tokenizer than the run in {where} (its "
                            "vocabulary differs); prepare it with that run's tokenizer "
                            f"(prepare --tokenizer {imported or self.run.path})")

    def config(self, given: RunConfig | None) -> RunConfig:
        """The source's config, or `given` if its model is the source's (but for FREE_MODEL_KEYS,
        and vocab_size 0, which means the data's); UserError naming a model key that differs."""
        source = inherited(self.source_config)
        validate(source)
        if given is None:
            return source
        mine, theirs = resolved_model(source.model), resolved_model(given.model)
        differ = [f"model.{k}={theirs[k]!r} (the source has {mine[k]!r})" for k in mine
                  if theirs[k] != mine[k] and k not in FREE_MODEL_KEYS and not (k == "vocab_size" and theirs[k] == 0)]
        if differ:
            raise UserError(f"the model comes from {self.named}, but the settings give {', '.join(differ)}; drop "
                            "those settings (a preset sets model keys too; only the train settings and model.dropout "
                            "may change; in Python, build the config on the source's: build_config(base="
                            "load_model(SOURCE).config, overrides=...))")
        given.model.vocab_size = source.model.vocab_size
        given.model.tie_embeddings = source.model.tie_embeddings  # the same head, said as the source says it
        return given

    def load_into(self, model: torch.nn.Module) -> None:
        missing, unexpected = model.load_state_dict(self.checkpoint.model_state(), strict=False)
        tied = tied_keys(self.source_config.model)
        if set(missing) - tied or unexpected:
            raise UserError(f"{self.path} does not fit the model in {self.run.config_path}")

    def provenance(self) -> dict:
        if self.recorded is not None:
            return self.recorded
        out = {"path": str(self.run.path.resolve()), "checkpoint": self.path.name,
               "iter": int(self.checkpoint.state.get("iter", 0)), "weights": self.checkpoint.fingerprint()}
        imported = self.checkpoint.state.get("imported_from")
        if imported:  # a Hugging Face folder, imported for this run: name it, not the scratch folder
            out.update(path=imported.get("path"), imported=True)
        return out
