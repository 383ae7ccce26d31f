"""Fine-tuning (`banglaslm finetune`): the training loop of `trainer` on conversations
(`data.conversations`), starting from another run's weights (`warm_start`), with the loss on
the answers only, and optionally on LoRA adapters (`lora`) instead of every weight.

A fine-tuning run folder is a run folder: checkpoints, exact resume, metrics, plot and the
update guard are the trainer's. What differs is the data (packed conversations, validated on
held-out conversations), the settings (the source's, then FINETUNE_TRAIN, then the user's;
`finetune.epochs` sets the length) and, with LoRA, what a checkpoint holds (`lora`).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import torch

from ..config import (
    FINETUNE_TRAIN,
    RunConfig,
    build_config,
    inherited,
    load_config_file,
    resolve_key,
    validate,
)
from ..data.conversations import ConversationData
from ..data.instructions import instruction_files
from ..errors import UserError, bad_param
from ..fileio import read_json_or_fail
from ..model import GPT
from ..runfolder import RunFolder
from .lora import Lora
from .optim import make_optimizer
from .trainer import (
    Trainer,
    TrainingInterrupted,
    TrainResult,
    in_run_folder,
    settle_config,
)
from .warm_start import WarmStart

ADAPTER_DIR = "adapter"  # RUN_DIR/adapter/: the best checkpoint's LoRA adapter in peft's format


class FinetuneTrainer(Trainer):
    """The trainer with a source's weights, conversations for data, and LoRA when asked."""

    def __init__(self, config: RunConfig, data: ConversationData, run_dir: str | Path, warm_start: WarmStart,
                 resume: bool = False, progress: bool | None = None):
        self.lora: Lora | None = None
        super().__init__(config, data, run_dir, resume=resume, progress=progress, warm_start=warm_start)
        recorded = (self.checkpoint.state.get("init_from") or {}) if self.checkpoint else {}
        if recorded.get("weights") not in (None, warm_start.checkpoint.fingerprint()):
            if self.lora is not None:  # the frozen weights under the adapters must be the ones it started from
                raise UserError(f"{warm_start.named} does not hold the weights this LoRA run started from "
                                f"({recorded.get('path')}); resume it with that SOURCE, or start a new run")
            warm_start.recorded = recorded  # a full fine-tune resumes from its own weights; its record stays true

    def _other_data_advice(self) -> str:
        return (f"To fine-tune on other conversations, start a new run: banglaslm finetune {self.run.path} "
                "--data ... --out NEW_RUN")

    def _build_model(self) -> None:
        """The source's weights; with LoRA, adapters attached (seeded) and the rest frozen."""
        tc = self.config.train
        torch.manual_seed(tc.seed)
        self.model = GPT(self.config.model)
        self.warm_start.load_into(self.model)
        if self.config.finetune.lora_rank:
            if self.dist.enabled and tc.parallel == "fsdp":
                raise bad_param("finetune.lora_rank", "LoRA runs with train.parallel=ddp, not fsdp")
            self.lora = Lora(self.model, self.config.finetune)
        self.model.to(self.device)
        self.parallel.shard(self.model, self.precision)
        if self.dist.rank > 0:
            torch.manual_seed(tc.seed + self.dist.rank)
        self.optimizer = make_optimizer(self.model, tc)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def _restore(self, ckpt) -> None:
        super()._restore(ckpt)  # with LoRA the merged weights find no frozen layer to land in
        if self.lora is not None:
            self.lora.load(ckpt.tensors, ckpt.path)

    def _save(self, it: int, improved: bool) -> Path:
        if self.lora is None:
            return super()._save(it, improved)
        return self.parallel.save(it, self.lora.merged_tensors(), self.optimizer, self._state(it), improved,
                                  extra=self.lora.adapter_tensors())

    def train(self) -> TrainResult:
        try:
            result = super().train()
        except TrainingInterrupted:
            self._write_adapter()  # the run ends here until a resume: its best adapter so far
            raise
        self._write_adapter()
        return result

    def _write_adapter(self) -> None:
        """With LoRA, the best checkpoint's adapter as a peft folder in RUN_DIR/adapter/."""
        best = self.run.checkpoint("best")
        if self.lora is not None and self.dist.is_main and best.is_file():
            from ..checkpoint import load_checkpoint

            self.lora.write(self.run.path / ADAPTER_DIR, load_checkpoint(best).tensors)


def finetune_config(source: RunConfig, file: str | Path | None = None, overrides: dict | None = None) -> RunConfig:
    """The source run's config, then FINETUNE_TRAIN, then a config file and `overrides`. A
    train.max_iters set in `overrides` (or in a file without finetune.epochs, which a run's
    config.json always has) turns finetune.epochs off (0) and shortens a warm-up not given to
    fit. A LoRA rank set as 0 or less in `overrides` is refused (a file's 0, as every run's
    config.json writes a full fine-tuning, is that), and so is a LoRA setting without a rank."""
    overrides = {resolve_key(k): v for k, v in (overrides or {}).items()}
    from_file = {resolve_key(k): v for k, v in (load_config_file(file) if file is not None else {}).items()}
    given = {**from_file, **overrides}
    set_rank = _whole(overrides.get("finetune.lora_rank"))
    if set_rank is not None and set_rank <= 0:
        raise bad_param("finetune.lora_rank", f"must be >= 1 for LoRA, got {set_rank} (leave it unset for full "
                                              "fine-tuning)")
    rank = given.get("finetune.lora_rank")
    whole_rank = _whole(rank)
    lora_only = sorted(k for k in (overrides if file is not None else given)
                       if k.startswith("finetune.lora_") and k != "finetune.lora_rank")
    if lora_only and (rank is None or (whole_rank is not None and whole_rank <= 0)):
        raise bad_param(lora_only[0], "is a LoRA setting, but no finetune.lora_rank is set: add --set "
                                      "finetune.lora_rank=R for LoRA, or drop it for full fine-tuning")
    base = inherited(source, FINETUNE_TRAIN)  # validated below, with the user's settings
    length_given = "train.max_iters" in overrides or ("train.max_iters" in from_file
                                                      and "finetune.epochs" not in from_file)
    if length_given and "train.warmup_iters" not in given and str(given["train.max_iters"]).isdigit():
        given["train.warmup_iters"] = min(base.train.warmup_iters, int(given["train.max_iters"]) // 5)
    config = build_config(overrides=given, base=base)
    if length_given:
        config.finetune.epochs = 0.0
    return config


def _whole(value) -> int | None:
    """`value` (an int, or text from --set) as a whole number; None when it is not one."""
    text = str(value).strip()
    return int(text) if text.lstrip("+-").isdigit() else None


def _recorded_inputs(run: RunFolder) -> list[str] | None:
    """The inputs a fine-tuning run recorded in data_meta.json (None if none; the embedded set as
    this install holds it); UserError for one that is not there now (recorded relative to another
    folder, or moved)."""
    inputs = list(read_json_or_fail(run.data_meta_path).get("sources") or []) or None
    embedded = [str(p) for p in instruction_files()]
    if inputs and [Path(n).name for n in inputs] == [Path(e).name for e in embedded] and \
            all(Path(n).parent.parts[-3:] == Path(embedded[0]).parent.parts[-3:] for n in inputs):
        return embedded  # the embedded set, recorded where an earlier install of banglaslm kept it
    for name in inputs or []:
        if not name.startswith("hf:") and not Path(name).exists():
            raise UserError(f"the run recorded its data as {name} ({run.data_meta_path}), which is not there now; "
                            "give the conversations with --data")
    return inputs


def finetune(source: str | Path, data: list[str] | None, run_dir: str | Path, config: RunConfig | None = None,
             resume: bool = False, max_iters: int | None = None, progress: bool | None = None,
             say=print) -> TrainResult:
    """Fine-tune the model of the run folder `source` on the conversations in `data` (files,
    folders, globs, hf:NAME; None: the embedded instruction set) into `run_dir`.

    `config` defaults to `finetune_config(source's config)`; with `resume`, the run's saved
    config is used (and the changes a resume may make). train.max_iters comes from
    finetune.epochs (unless that is 0, or `max_iters` is given). The data and every setting
    are checked before anything is written. Returns the trainer's result.
    """
    warm_start = WarmStart(source)
    run = RunFolder(run_dir)
    if data is None and resume and run.data_meta_path.is_file():  # its own data, as `train --resume` has its folder
        data = _recorded_inputs(run)
    if data is None:
        data = [str(p) for p in instruction_files()]
        say(f"fine-tuning on the embedded Bangla instruction set ({len(data)} files)")
    if config is None and not (resume and run.config_path.is_file()):  # a resume keeps the run's own config
        given = {"train.max_iters": max_iters} if max_iters is not None else None  # and a warm-up that fits, as the CLI
        config = finetune_config(warm_start.source_config, overrides=given)
    config = settle_config(run, config, resume, max_iters, warm_start, command="finetune")
    config.finetune.epochs = 0.0 if max_iters is not None else config.finetune.epochs
    fc = config.finetune
    conversations = ConversationData(data, warm_start.tokenizer(), fc.block_size or config.model.block_size,
                                     fc.loss_on, fc.val_fraction, config.train.seed)
    fitted = ""
    if config.finetune.epochs > 0 and max_iters is None and not resume:
        fitted = _set_length(config, len(conversations.rows["train"][0]))

    def start() -> FinetuneTrainer:
        trainer = FinetuneTrainer(config, conversations, run.path, warm_start, resume=resume, progress=progress)
        say(conversations.summary())  # once every check has passed
        if note := _batch_note(config, len(conversations.rows["train"][0])):
            print(f"warning: {note}", file=sys.stderr)
        if fitted:
            say(f"finetune.epochs={config.finetune.epochs:g} makes {config.train.max_iters:,} iterations: "
                f"{fitted} fitted to them (--set them to choose others)")
        return trainer

    return in_run_folder(run, resume, start)


def _rows_per_step(config: RunConfig) -> int:
    tc = config.train
    return tc.batch_size * tc.grad_accum_steps * int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's


def _batch_note(config: RunConfig, rows: int) -> str | None:
    """A line when one step takes more rows than the training blocks hold: each step then passes
    over the data several times, at that many times a step's cost (batch 1000 on 11 blocks ran
    minutes without a step done and without a word)."""
    per_step = _rows_per_step(config)
    if rows <= 0 or per_step <= rows:
        return None
    return (f"a step takes {per_step:,} rows (train.batch_size x grad_accum_steps x processes), but the training "
            f"conversations pack into {rows:,} blocks: every step passes over them {per_step / rows:.1f} times; "
            f"lower train.batch_size or grad_accum_steps until their product with the processes is {rows:,} or less")


def _set_length(config: RunConfig, rows: int) -> str:
    """Set train.max_iters for finetune.epochs passes over `rows` blocks, and fit to it the
    warm-up and evaluation interval that were left at FINETUNE_TRAIN's values (values the user
    gave are kept); what was fitted, for a line of output ("" for nothing)."""
    tc = config.train
    tc.max_iters = max(1, math.ceil(config.finetune.epochs * rows / _rows_per_step(config)))
    fits = {"warmup_iters": ("warm-up", tc.max_iters // 5), "eval_interval": ("evaluation every", max(1, tc.max_iters // 4))}
    fitted = []
    for key, (name, most) in fits.items():
        if getattr(tc, key) == FINETUNE_TRAIN[f"train.{key}"] and getattr(tc, key) > most:
            setattr(tc, key, most)
            fitted.append(f"{name} {most:,} (train.{key})")
    validate(config)
    return ", ".join(fitted)
