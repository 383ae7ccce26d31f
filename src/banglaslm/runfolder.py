"""The run folder: the contract between training and everything after it.

    RUN_DIR/
      config.json            RunConfig (model + train), vocab_size filled in
      tokenizer.json         the tokenizer the model was trained with
      data_meta.json         meta.json of the data folder it was trained on
      checkpoints/latest.safetensors, checkpoints/best.safetensors
      metrics.jsonl, loss.png

Later stages (eval, generate, export, serve) need nothing outside this folder.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import torch

from .checkpoint import load_checkpoint, read_state, tensor_shapes
from .config import (
    RUN_FORMAT,
    RUN_FORMAT_VERSION,
    Opt,
    RunConfig,
    is_run_folder,
    validate,
)
from .errors import UserError, bad_param, wrong_kind
from .fileio import as_path, atomic_write_json, check_destination, read_json_or_fail
from .model import GPT, tied_keys
from .quantize import Quantize, check_quantize, quantize_model
from .tokenizer import Tokenizer


class RunFolder:
    def __init__(self, path: str | Path):
        if isinstance(path, LoadedModel):
            raise wrong_kind("run_dir", path, "a run folder's path", f"this model was loaded from {path.checkpoint.parent.parent}")
        self.path = as_path(path, "run_dir", "a run folder")

    config_path = property(lambda self: self.path / "config.json")
    tokenizer_path = property(lambda self: self.path / "tokenizer.json")
    data_meta_path = property(lambda self: self.path / "data_meta.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    plot_path = property(lambda self: self.path / "loss.png")

    def checkpoint(self, which: str) -> Path:
        return self.checkpoints / f"{which}.safetensors"

    def checkpoint_read(self, which: str) -> Path:
        """The checkpoint that commands read for `which`: best, or latest while a run has no best
        yet (no validation so far)."""
        path = self.checkpoint(which)
        return self.checkpoint("latest") if which == "best" and not path.is_file() else path

    def is_run_folder(self) -> bool:
        """Whether the folder's config.json says it is a banglaslm run folder."""
        return is_run_folder(self.path)

    def check_writable(self, resume: bool) -> None:
        """UserError unless training may write here: a new or empty folder, or (the same or a
        resumed) run folder; never a folder of someone else's files."""
        if not self.is_run_folder() and (self.path / "meta.json").is_file():
            raise bad_param("run_dir", f"{self.path} is a data folder (prepare wrote it); give `run_dir` a new folder "
                                       "for the run")
        check_destination(self.path, "run folder", replaceable=lambda folder: self.is_run_folder(),
                          earlier="continued with `resume`")
        if resume and not self.is_run_folder():
            raise UserError(f"nothing to resume: {self.path} is not a banglaslm run folder; start without `resume`")

    def remove_leftovers(self) -> None:
        """Temporary files and folders a killed writer left (`fileio.atomic_path`'s
        `.NAME.*.tmp`); call while holding `fileio.exclusive` on this folder."""
        for folder in (self.path, self.checkpoints):
            for leftover in folder.glob(".*.tmp") if folder.is_dir() else ():
                shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)

    def resume_advice(self, damaged: Path) -> str:
        """What to do when `damaged`, a checkpoint a resume reads, cannot be read: resume from
        the best checkpoint (when it reads), start from its weights, or train again."""
        best, damaged = self.checkpoint("best"), Path(damaged)
        if best.resolve() == damaged.resolve():
            return "train again"
        if not best.is_file():
            return "train again (it has no best checkpoint)"
        try:
            load_checkpoint(best)
        except UserError:
            return "train again (its best checkpoint cannot be read either)"
        if damaged.resolve() == self.checkpoint("latest").resolve():
            return (f"to resume from the best checkpoint instead, copy {best} over {damaged} "
                    "(the iterations after it are lost); or train again")
        return f"start a new run from its best weights with --init-from {self.path}, or train again"

    def require(self) -> None:
        """UserError unless this is a run folder; a path that is something else a user holds (a
        checkpoint file, a data folder, a Hugging Face export) is named, with what to give instead."""
        if self.path.is_file():
            raise UserError(_a_file_instead(self.path))
        if not self.path.is_dir():
            raise UserError(f"run folder not found: {self.path}")
        if self.config_path.is_file() and self.tokenizer_path.is_file() and not self._is_hf_folder():
            return
        if self._is_hf_folder():
            raise UserError(f"{self.path} is a Hugging Face model folder, not a banglaslm run folder; import it "
                            f"first: banglaslm import {shlex.quote(str(self.path))} --out RUN_DIR")
        if (self.path / "meta.json").is_file():
            raise UserError(f"{self.path} is a data folder (prepare wrote it), not a run folder; train a model on "
                            f"it: banglaslm train --data {shlex.quote(str(self.path))} --out RUN_DIR")
        raise UserError(f"{self.path} is not a banglaslm run folder (no config.json/tokenizer.json); "
                        "train one with `banglaslm train`")

    def _is_hf_folder(self) -> bool:
        """config.json is transformers' (it names a `model_type`), not a run's."""
        try:
            config = read_json_or_fail(self.config_path)
        except (OSError, UserError):
            return False
        return isinstance(config, dict) and "model_type" in config and config.get("format") != RUN_FORMAT

    def write_header(self, config: RunConfig, tokenizer: Tokenizer, data_meta: dict | None = None) -> None:
        """config.json, tokenizer.json and (when known) data_meta.json: what every run starts with."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.config_path, {"format": RUN_FORMAT, "version": RUN_FORMAT_VERSION, **config.to_dict()})
        tokenizer.save(self.tokenizer_path)
        if data_meta is not None:
            atomic_write_json(self.data_meta_path, data_meta)

    def load_config(self) -> RunConfig:
        data = read_json_or_fail(self.config_path)
        if not isinstance(data, dict):
            raise UserError(f"{self.config_path} must hold a JSON object; restore the run's config.json")
        data.pop("format", None)
        data.pop("version", None)
        try:
            config = RunConfig.from_dict(data)
            validate(config)
        except UserError as exc:
            raise UserError(f"{self.config_path} is damaged: {exc}") from None
        return config


def _a_file_instead(path: Path) -> str:
    """What to say when a file is given where a run folder goes."""
    if path.suffix == ".safetensors" and path.parent.name == "checkpoints":
        return (f"{path} is a checkpoint file; give its run folder, {path.parent.parent} (commands read its best "
                "checkpoint, or the one --checkpoint names)")
    if path.suffix == ".gguf":
        return f"{path} is a GGUF file (for llama.cpp); give the run folder it was exported from"
    return f"{path} is a file, not a run folder; give the folder `banglaslm train --out` wrote"


@dataclass
class LoadedModel:
    model: GPT
    tokenizer: Tokenizer
    config: RunConfig
    iteration: int
    checkpoint: Path


def check_loaded(loaded: object) -> LoadedModel:
    """`loaded`, if it is a LoadedModel; else the UserError that says how to make one (a run
    folder's path given in its place is the usual slip)."""
    if isinstance(loaded, LoadedModel):
        return loaded
    fix = f"load it first: loaded = load_model({os.fspath(loaded)!r})" if isinstance(loaded, (str, os.PathLike)) \
        else "load_model(RUN_DIR) returns one"
    raise wrong_kind("loaded", loaded, "a loaded model", fix)


CHECKPOINTS = ("best", "latest")
# The parameter every command that reads a run's weights takes (`--checkpoint` on the command line).
Which = Annotated[str, Opt("the checkpoint: best (lowest validation loss) or latest", CHECKPOINTS)]


def check_fits_checkpoint(config: RunConfig, path: Path, config_path: Path) -> None:
    """UserError unless the model `config` describes is the one in checkpoint `path`, checked
    from the checkpoint's header (its shapes and the config it was saved with) before anything
    is allocated: a config.json edited to 16 layers x 2048, or to a block of 5,000,000 tokens,
    is refused here instead of allocating gigabytes first."""
    saved = read_state(path)
    saved_model = (saved or {}).get("config", {}).get("model")
    if saved_model is not None:
        differ = [f"{k} ({saved_model[k]!r} in the checkpoint)" for k, v in asdict(config.model).items()
                  if k in saved_model and saved_model[k] != v and k != "dropout"]
        if differ:
            raise UserError(f"{config_path} does not match {path.name}: {', '.join(differ)}; restore the run's "
                            "config.json")
    with torch.device("meta"):
        expected = {f"model.{k}": tuple(t.shape) for k, t in GPT(config.model).state_dict().items()}
    shapes = tensor_shapes(path)
    wrong = [k for k, shape in expected.items() if k in shapes and shapes[k] != shape]
    if wrong:
        raise UserError(f"{path} does not fit the model in {config_path}: {wrong[0]} is {shapes[wrong[0]]} there "
                        f"but {expected[wrong[0]]} in the config; restore the run's config.json")


def resolve_device(spec: str, param: str = "train.device") -> torch.device:
    """'auto' → CUDA when present, else the CPU; 'cpu', 'cuda' or 'cuda:N' as given. A CUDA
    device without a GPU, or any other name, is a UserError naming `param`."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec != "cpu" and not (spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit())):
        raise bad_param(param, f"must be auto, cpu, cuda or cuda:N, got {spec!r}")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise bad_param(param, f"is {spec} but no CUDA GPU is available; use cpu or auto")
    if spec.startswith("cuda:") and int(spec[5:]) >= torch.cuda.device_count():
        raise bad_param(param, f"is {spec} but this machine has {torch.cuda.device_count()} GPU(s)")
    return torch.device(spec)


def load_model(run_dir: str | Path, which: Which = "best",
               device: Annotated[str, Opt("where the model runs: cpu, cuda, cuda:N or auto")] = "cpu",
               quantize: Quantize = "none") -> LoadedModel:
    """Model (in eval mode), tokenizer and config from a run folder, for inference on `device`
    (cpu, cuda, cuda:N or auto), its weight matrices stored as `quantize` (quantize.py)."""
    run = RunFolder(run_dir)
    run.require()
    device = resolve_device(str(device), "device")
    check_quantize(quantize, device)  # before the weights are read
    if which not in CHECKPOINTS:
        raise bad_param("which", f"must be one of {', '.join(CHECKPOINTS)}, got {which!r}")
    path = run.checkpoint_read(which)
    if path.stem != which and path.is_file():
        print(f"note: {run.path} has no best checkpoint yet (no validation so far); reading latest", file=sys.stderr)
    if not path.is_file():
        raise UserError(f"{run.path} has no checkpoint yet ({path.name}); train it first")
    config = run.load_config()
    check_fits_checkpoint(config, path, run.config_path)
    tokenizer = Tokenizer.from_file(run.tokenizer_path)
    ckpt = load_checkpoint(path, weights_only=True)
    if ckpt.state.get("tokenizer_sha256") != tokenizer.sha256:
        raise UserError(f"{run.tokenizer_path} does not match the tokenizer {path.name} was trained with; "
                        "restore the run's original tokenizer.json")
    model = GPT(config.model)
    missing, unexpected = model.load_state_dict(ckpt.model_state(), strict=False)
    tied = tied_keys(config.model)
    if set(missing) - tied or unexpected:
        raise UserError(f"{path} does not fit the model in {run.config_path} "
                        f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {unexpected[:3]})")
    model.to(device).eval()
    quantize_model(model, quantize)
    return LoadedModel(model, tokenizer, config, int(ckpt.state.get("iter", 0)), path)

