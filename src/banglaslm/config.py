"""Typed configuration: a run is `RunConfig` = `ModelConfig` + `TrainConfig` (+ `FinetuneConfig`
for fine-tuning); a generation is `SamplingParams`.

The dataclass defaults are the course's original setup; named presets (`PRESETS`) override a
few fields; a JSON/TOML file and `--set section.key=value` pairs override on top, in that
order. Each field's help is what `banglaslm train --help` prints. `Opt` carries the same
help for a function's parameters (`Annotated[int, Opt("...")]`), from which the CLI builds
the other commands' flags, so no default or help text is written twice.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import json
import math
import numbers
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomllib

from .errors import UserError, bad_param, shown
from .fileio import read_json_or_fail, read_text

MAX_SEED = 2**63 - 1            # torch's and NumPy's generators take any seed in [0, MAX_SEED]
MAX_LOGPROBS = 50               # alternatives reported per token, at most
MAX_NEW_TOKENS = 100_000        # tokens one generation may ask for
MAX_STOP_CHARS = 256            # characters in one stop string: each is matched against every token's tail
GREEDY_BELOW = 1e-5             # a smaller temperature decodes greedily (see SamplingParams)


@dataclass(frozen=True)
class Opt:
    """Command-line metadata of a parameter: `Annotated[T, Opt(help, choices)]`."""
    help: str
    choices: tuple[str, ...] | None = None


def plain_number(value: Any) -> Any:
    """`value` as Python's own int or float when it is another library's number (NumPy's int64,
    a pandas count), which torch's seeding and JSON refuse; anything else as it is."""
    if getattr(getattr(value, "dtype", None), "kind", None) == "b" and getattr(value, "shape", None) == ():
        return bool(value)  # NumPy's bool, which is no Integral
    if isinstance(value, numbers.Integral) and not isinstance(value, (int, bool)):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, (float, int, bool)):
        return float(value)
    return value


def checked_arguments(fn):
    """`fn`, its `Annotated[T, Opt(...)]` arguments checked by `check_argument_kinds` and their
    numbers made Python's (`plain_number`) before it runs."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def checked(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        check_argument_kinds(fn, bound.arguments)
        bound.arguments.update({k: plain_number(v) for k, v in bound.arguments.items()})
        return fn(*bound.args, **bound.kwargs)
    return checked


def check_argument_kinds(fn: Any, given: dict[str, Any]) -> None:
    """UserError naming the first argument in `given` (a call's arguments by name) whose kind
    the `Annotated[T, Opt(...)]` parameter of `fn` does not take. The command line converts its
    text to T; Python callers pass 8000.0 or "600", which failed deep inside with a TypeError."""
    hints = typing.get_type_hints(fn, include_extras=True)
    for name, value in given.items():
        hint = hints.get(name)
        if typing.get_origin(hint) is not typing.Annotated:
            continue
        base = typing.get_args(hint)[0]
        kinds = [k for k in (typing.get_args(base) or (base,)) if k in _KIND_CHECKS]
        if kinds and not (value is None and type(None) in typing.get_args(base)) \
                and not any(_KIND_CHECKS[k](value) for k in kinds):
            wanted = " or ".join(_EXPECTED[k.__name__] for k in kinds)
            raise bad_param(name, f"must be {wanted}, got {type(value).__name__} {shown(value, 40)}")


_KIND_CHECKS = {int: lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool),
                float: lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool),
                bool: lambda v: isinstance(v, bool), str: lambda v: isinstance(v, str),
                Path: lambda v: isinstance(v, Path)}


def show_progress(progress: bool | None) -> bool:
    """Whether to draw progress bars: `progress`, or when None, only on a terminal."""
    return sys.stderr.isatty() if progress is None else progress


def option(default: Any, help: str, choices: tuple[str, ...] | None = None, factory=None) -> Any:
    """A dataclass field whose metadata is its command-line help (see `Opt`); `factory` makes
    a mutable default (e.g. `list`) instead of `default`."""
    metadata = {"help": help, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)




@dataclass
class ModelConfig:
    arch: Literal["gpt", "modern"] = option(
        "gpt",
        "'gpt': the course GPT (learned positions, LayerNorm, GELU MLP, biases, untied head); "
        "'modern': RoPE, RMSNorm, SwiGLU, tied embeddings, no biases (model.tie_embeddings changes the head)",
    )
    tie_embeddings: bool | None = option(
        None, "one matrix for the token embedding and the output head (true) or two (false); "
              "auto = the arch's choice (tied in modern, untied in gpt)")
    n_layer: int = option(8, "transformer blocks")
    n_head: int = option(8, "attention heads per block")
    n_embd: int = option(512, "model width (must divide by n_head)")
    block_size: int = option(128, "context length in tokens")
    dropout: float = option(0.2, "dropout probability during training")
    vocab_size: int = option(0, "vocabulary size; 0 = take it from the data folder")
    rope_theta: float = option(10000.0, "RoPE base frequency (modern arch)")
    norm_eps: float = option(1e-5, "epsilon of LayerNorm/RMSNorm")

    @property
    def tied_head(self) -> bool:
        """Whether the output head is the token embedding's matrix (`tie_embeddings`, else the arch's)."""
        return self.arch == "modern" if self.tie_embeddings is None else self.tie_embeddings


def resolved_model(m: ModelConfig) -> dict[str, Any]:
    """`m`'s settings with every "auto" resolved, so that two configs of one model compare equal."""
    return {**dataclasses.asdict(m), "tie_embeddings": m.tied_head}


@dataclass
class TrainConfig:
    batch_size: int = option(32, "sequences per micro-batch")
    grad_accum_steps: int = option(1, "micro-batches accumulated per optimizer step")
    max_iters: int = option(5000, "optimizer steps; also the length of the LR schedule")
    learning_rate: float = option(6e-4, "peak learning rate")
    min_lr_ratio: float = option(0.1, "the schedule's decay ends at learning_rate * min_lr_ratio")
    warmup_iters: int = option(200, "linear warm-up steps")
    lr_schedule: Literal["cosine", "wsd"] = option(
        "cosine", "after warm-up: cosine decay to the floor, or wsd (warm-up, stable, decay): the peak held, "
                  "then a linear decay to the floor over the last train.decay_fraction of the run")
    decay_fraction: float = option(0.2, "wsd: the share of the run (steps, or time) spent decaying")
    optimizer: Literal["adamw", "muon"] = option(
        "adamw", "adamw on every weight, or muon: Muon on the blocks' matrices (torch.optim.Muon, its update "
                 "scaled to AdamW's size, so learning_rate and weight_decay carry over) and AdamW on the "
                 "embedding, head, gains and biases")
    muon_lr_ratio: float = option(1.0, "muon: its learning rate as a multiple of train.learning_rate (the "
                                       "schedule scales both)")
    weight_decay: float = option(0.1, "decoupled weight decay on matrices")
    ema_decay: float = option(
        0.0, "keep an exponential moving average of the weights with this decay per step (0.998 averages "
             "about the last 500 steps) and make it the model: evaluations score it, checkpoints store it; "
             "0 = off")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.95, "AdamW beta2")
    grad_clip: float = option(1.0, "clip the global gradient norm to this; 0 = off")
    time_limit_min: float = option(
        0.0, "stop after this many minutes of training (the evaluations on the way included), then "
             "evaluate and save once more, and run the LR schedule on the clock instead of max_iters, "
             "which becomes an upper bound; 0 = off")
    eval_interval: int = option(250, "evaluate (and checkpoint) every N steps")
    eval_iters: int = option(20, "batches averaged per evaluation")
    checkpoint_interval: int = option(0, "checkpoint every N steps; 0 = at every evaluation")
    log_interval: int = option(10, "write a metrics record every N steps")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = option(
        "auto",
        "'auto': bf16 on a GPU that has it, and on a CPU that has it for models 256 or more wide; "
        "fp16 + grad scaler on GPUs without bf16; else fp32",
    )
    device: str = option("auto", "'auto', 'cpu', 'cuda' or 'cuda:N'")
    micro_batch: Literal["fixed", "auto"] = option(
        "fixed", "'auto': when memory is estimated to run out (or, in one process, does run out), run each "
                 "micro-batch in halves, then quarters, ..., accumulating gradients: the same global batch and "
                 "loss trajectory")
    parallel: Literal["ddp", "fsdp"] = option(
        "ddp",
        "under torchrun: 'ddp' keeps a full model copy per process; 'fsdp' shards weights, gradients and "
        "AdamW state across processes (needs 2+ processes and bf16/fp32; resume with the same count)",
    )
    seed: int = option(1337, "seed for initialisation, dropout and batch sampling")
    threads: int = option(0, "CPU threads for torch; 0 = torch's default")
    compile: bool = option(False, "torch.compile the model; falls back to eager, with a warning, where unavailable")
    grad_spike_factor: float = option(
        10.0, "clip an update whose gradient norm exceeds this x the median of the last 50 down to that bound; 0 = off")
    max_skipped_updates: int = option(
        5, "stop the run after this many updates in a row with a non-finite gradient (each is skipped)")
    logger: Literal["none", "tensorboard", "wandb"] = option(
        "none", "also write the metrics to an experiment tracker: 'tensorboard' (RUN_DIR/tensorboard/; "
                "pip install 'banglaslm[tensorboard]') or 'wandb' (RUN_DIR/wandb/, offline unless WANDB_MODE "
                "is set; pip install 'banglaslm[wandb]')")
    early_stop_patience: int = option(
        0, "stop a run that is overfitting (docs/training.md, 'Training health') once validation has not "
           "improved for this many evaluations; 0 = off")


@dataclass
class FinetuneConfig:
    """Settings of `banglaslm finetune` (a pretraining run keeps the defaults and ignores them)."""
    loss_on: Literal["assistant", "all"] = option(
        "assistant", "'assistant': loss on the answers and their end token only; 'all': on every token (an ablation; "
                     "the validation loss stays on the answers)")
    epochs: float = option(3.0, "passes over the training conversations; sets train.max_iters (0 = use "
                                "train.max_iters; giving it, or --max-iters, does the same)")
    val_fraction: float = option(0.1, "share of the conversations held out for validation (at least one)")
    block_size: int = option(0, "tokens per packed block of conversations; 0 = the model's context (model.block_size)")
    lora_rank: int = option(0, "LoRA rank (>= 1): train low-rank adapters of this rank instead of every weight; "
                               "left unset (0), every weight is fine-tuned")
    lora_alpha: float = option(16.0, "LoRA scale: an adapter's update is multiplied by lora_alpha / lora_rank")
    lora_dropout: float = option(0.0, "dropout on the input of the LoRA adapters")
    lora_targets: str = option("all-linear", "linear layers LoRA adapts: all-linear (every one in the blocks) or "
                                             "names separated by commas (qkv, proj, up, down, gate)")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Every setting as 'section.name' -> value (the keys `--set` takes)."""
        return _flatten(self.to_dict(), "config")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        cfg = cls()
        apply_overrides(cfg, _flatten(data, "config"))
        return cfg


@dataclass
class SamplingParams:
    """How to generate; each field's help is also its command-line help."""
    max_new_tokens: int = option(200, "most tokens to generate")
    temperature: float = option(0.8, "> 1 flattens the distribution, < 1 sharpens it; 0 (or below 1e-5) is "
                                     "greedy decoding")
    top_k: int | None = option(None, "sample from the k most likely tokens only")
    top_p: float | None = option(None, "sample from the smallest set of tokens whose probability reaches p")
    min_p: float | None = option(None, "drop tokens below min_p x the top probability")
    repetition_penalty: float = option(1.0, "> 1 discourages tokens already seen (1 = off; 1.1-1.3 is typical)")
    presence_penalty: float = option(0.0, "OpenAI-style, in [-2, 2]: lowers tokens already generated")
    frequency_penalty: float = option(0.0, "OpenAI-style, in [-2, 2]: lowers tokens by how often they were generated")
    stop: list[str] = option(None, "stop before this text (repeatable; on the command line \\n and \\t are a line "
                                   "break and a tab, \\\\ a backslash)", factory=list)
    seed: int | None = option(None, "same seed, same text")
    greedy: bool = option(False, "always take the most likely token")
    n: int = option(1, "samples per prompt")
    logprobs: int | None = option(None, "report each token's probability and the this-many most likely "
                                        "alternatives (0 = the chosen token only)")
    # Added to the logits of these token ids before anything else (OpenAI's logit_bias): -100
    # all but bans a token, 100 all but forces it. (Token ids: a Python-API and server setting.)
    logit_bias: dict[int, float] | None = None

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        elif isinstance(self.stop, (list, tuple)) or self.stop is None:
            self.stop = list(self.stop or [])  # anything else: validate() names it

    def _check_kinds(self) -> None:
        """Settings given in Python are of their kind: a float top_k or a text temperature failed
        deep in torch, and a stop string assigned after construction was read letter by letter."""
        optional = {"top_k", "top_p", "min_p", "seed", "logprobs"}
        for name in ("max_new_tokens", "top_k", "seed", "n", "logprobs"):
            value = getattr(self, name)
            if not (value is None and name in optional) and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
                raise bad_param(name, f"must be an integer, got {value!r}")
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not (value is None and name in optional) and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
                raise bad_param(name, f"must be a number, got {value!r}")
        self.greedy = plain_number(self.greedy)
        if not isinstance(self.greedy, bool):
            raise bad_param("greedy", f"must be True or False, got {self.greedy!r}")
        if not isinstance(self.stop, (list, tuple)):
            raise bad_param("stop", f"must be a list of strings, e.g. [\"।\"], got {self.stop!r}")
        if self.logit_bias is not None and not isinstance(self.logit_bias, dict):
            raise bad_param("logit_bias", f"must be a dict of token id to bias, e.g. {{5: -100}}, got {shown(self.logit_bias)}")
        for f in dataclasses.fields(self):
            setattr(self, f.name, plain_number(getattr(self, f.name)))
        if self.logit_bias:
            self.logit_bias = {plain_number(k): plain_number(v) for k, v in self.logit_bias.items()}

    def validate(self) -> None:
        """UserError naming the first setting out of range or of the wrong kind (its `param`)."""
        self._check_kinds()
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise bad_param(name, f"must be a finite number, got {value}")
        longest_stop = max((len(s) for s in self.stop if isinstance(s, str)), default=0)
        checks = [
            ("max_new_tokens", 1 <= self.max_new_tokens <= MAX_NEW_TOKENS,
             f"must be in [1, {MAX_NEW_TOKENS:,}], got {self.max_new_tokens}"),
            ("temperature", self.temperature >= 0,
             f"must be >= 0 (0 decodes greedily, as `greedy` does), got {self.temperature}"),
            ("top_k", self.top_k is None or self.top_k >= 1,
             f"must be at least 1 (leave it out, None, for no top-k; Hugging Face writes that as 0), got {self.top_k}"),
            ("top_p", self.top_p is None or 0 < self.top_p <= 1, f"must be in (0, 1], got {self.top_p}"),
            ("min_p", self.min_p is None or 0 <= self.min_p <= 1, f"must be in [0, 1], got {self.min_p}"),
            ("repetition_penalty", self.repetition_penalty > 0, f"must be > 0 (1 = off), got {self.repetition_penalty}"),
            ("presence_penalty", -2 <= self.presence_penalty <= 2, f"must be in [-2, 2] (0 = off), got {self.presence_penalty}"),
            ("frequency_penalty", -2 <= self.frequency_penalty <= 2,
             f"must be in [-2, 2] (0 = off), got {self.frequency_penalty}"),
            ("stop", all(isinstance(s, str) and s for s in self.stop), f"strings must be non-empty text, got {shown(self.stop, 80)}"),
            ("stop", longest_stop <= MAX_STOP_CHARS, f"strings may be at most {MAX_STOP_CHARS} characters each, "
                                                      f"got one of {longest_stop:,}; stop on its first characters instead"),
            ("seed", self.seed is None or 0 <= self.seed <= MAX_SEED, f"must be in [0, {MAX_SEED}], got {self.seed}"),
            ("n", self.n >= 1, f"(samples per prompt) must be at least 1, got {self.n}"),
            ("logprobs", self.logprobs is None or 0 <= self.logprobs <= MAX_LOGPROBS,
             f"must be in [0, {MAX_LOGPROBS}], got {self.logprobs}"),
        ]
        for name, ok, problem in checks:
            if not ok:
                raise bad_param(name, problem)
        for token, bias in (self.logit_bias or {}).items():
            if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                raise bad_param("logit_bias", f"keys must be token ids (integers >= 0), got {token!r}")
            if not (isinstance(bias, (int, float)) and math.isfinite(bias) and -100 <= bias <= 100):
                raise bad_param("logit_bias", f"values must be numbers in [-100, 100], got {bias!r} for token {token}")

    @property
    def decodes_greedily(self) -> bool:
        """Greedy, or a temperature so small that dividing the logits by it would overflow and the
        distribution is one-hot to float32 precision anyway (below GREEDY_BELOW)."""
        return self.greedy or self.temperature < GREEDY_BELOW

    @property
    def uses_penalties(self) -> bool:
        """Whether anything changes the model's logits before the choice (penalties, a bias)."""
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0 or self.frequency_penalty != 0 \
            or bool(self.logit_bias)


# Presets override the defaults above; anything not named keeps the course value.
PRESETS: dict[str, dict[str, Any]] = {
    # The default CPU preset: a modern-arch model that trains on 2 CPU cores in minutes.
    # Its settings won the 10-minute speed run on the shared Bangla books (docs/speedrun-log.md;
    # the wsd schedule beat cosine there in two pairs of runs, batch 8 beat 16 and 4, an untied
    # head and the weight average won on the unseen book twice each);
    # dropout is off because on a CPU its masks cost a third of every step. The quick start,
    # which makes ~30 passes over the small embedded corpus, turns dropout back on.
    "tiny": {
        "model.arch": "modern", "model.n_layer": 4, "model.n_head": 4, "model.n_embd": 128,
        "model.block_size": 128, "model.dropout": 0.0, "model.tie_embeddings": False,
        "train.batch_size": 8, "train.max_iters": 2400, "train.learning_rate": 2e-3,
        "train.warmup_iters": 50, "train.lr_schedule": "wsd", "train.ema_decay": 0.998,
        "train.eval_interval": 100, "train.eval_iters": 10, "train.checkpoint_interval": 50, "train.log_interval": 10,
    },
    # The course: 8 layers, 8 heads, 512 wide, block 128, dropout 0.2, course GPT.
    "course-58m": {"model.arch": "gpt"},
    # nanoGPT's README CPU run (config/train_shakespeare_char.py with the README's overrides; char
    # tokenizer): its tied embedding and beta2 = 0.99 too. Not the same: nanoGPT's train.py
    # leaves out biases (bias = False) and decays the tied embedding; our gpt arch has biases
    # and never decays a tied embedding.
    "cpu-ref": {
        "model.arch": "gpt", "model.n_layer": 4, "model.n_head": 4, "model.n_embd": 128,
        "model.block_size": 64, "model.dropout": 0.0, "model.tie_embeddings": True, "train.batch_size": 12,
        "train.max_iters": 2000, "train.learning_rate": 1e-3, "train.warmup_iters": 100, "train.beta2": 0.99,
        "train.eval_interval": 250, "train.eval_iters": 20,
    },
    # 6 layers, 6 heads, 384 wide, block 256: the size the speed benchmarks compare at. No
    # dropout (nanoGPT's default too): on a CPU its random masks cost ~17% of a step here.
    "small": {
        "model.n_layer": 6, "model.n_head": 6, "model.n_embd": 384, "model.block_size": 256,
        "model.dropout": 0.0, "train.batch_size": 16, "train.learning_rate": 1e-3,
    },
}


# What `banglaslm finetune` changes in the source run's train settings (before --config/--set):
# a gentler learning rate, a short warm-up, and frequent evaluations of a short run.
MIN_FINETUNE_BLOCK = 16  # tokens: a packed block must hold more than one turn's labels
FINETUNE_TRAIN: dict[str, Any] = {
    "train.learning_rate": 5e-4, "train.warmup_iters": 10, "train.min_lr_ratio": 0.1,
    "train.eval_interval": 50, "train.eval_iters": 10, "train.checkpoint_interval": 0, "train.log_interval": 5,
    "train.ema_decay": 0.0,  # a few hundred steps: an average would lag behind them (and LoRA refuses one)
}
# What a run started from another's weights (train --init-from, finetune) does not take from the
# source's config: the source's time budget and fine-tuning settings (LoRA, epochs) were that
# run's, not the model's (`inherited` puts the finetune section back at its defaults).
# What a run started from another's weights does not take from it: the source's time budget and
# its process layout (an FSDP source refused a new run on one process) belong to how it ran.
NOT_INHERITED: dict[str, Any] = {"train.time_limit_min": 0.0, "train.parallel": "ddp"}
SECTIONS = {"model": ModelConfig, "train": TrainConfig, "finetune": FinetuneConfig}


# Abbreviations users type for config keys, and the key each one means.
KEY_ABBREVIATIONS = {"lr": "learning_rate", "wd": "weight_decay", "bs": "batch_size", "iters": "max_iters",
                     "steps": "max_iters", "ctx": "block_size", "context": "block_size", "dtype": "precision",
                     # switches of other trainers (fp16=True, amp, mixed_precision) for what one choice says here
                     **dict.fromkeys(("fp16", "bf16", "fp32", "amp", "half", "mixed_precision"), "precision")}
# Other projects' names for a choice (nanoGPT's dtype='float16'): named in the refusal, not taken,
# so that a run's config.json keeps one spelling.
CHOICE_SPELLINGS = {"float16": "fp16", "half": "fp16", "bfloat16": "bf16", "float32": "fp32", "float": "fp32"}


def _flatten(data: dict[str, Any], where: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for section, values in data.items():
        if not isinstance(values, dict):
            raise UserError(f"{where}: '{section}' must be a table of keys (e.g. model / train)")
        if section not in SECTIONS:  # checked here: an empty one has no key to be caught by
            close = difflib.get_close_matches(section, list(SECTIONS), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise UserError(f"{where}: unknown section '{section}'; {hint}sections are {', '.join(SECTIONS)}")
        for key, value in values.items():
            flat[f"{section}.{key}"] = value
    return flat


def config_fields() -> dict[str, dataclasses.Field]:
    """Every settable key as 'section.name' -> dataclass field."""
    out = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            out[f"{section}.{f.name}"] = f
    return out


def resolve_key(key: str) -> str:
    fields = config_fields()
    if key in fields:
        return key
    short = [k for k in fields if k.split(".", 1)[1] == key]
    if len(short) > 1:  # a short name means the model's or training's key (finetune.* are always written whole)
        short = [k for k in short if not k.startswith("finetune.")]
    if len(short) == 1:
        return short[0]
    section, _, name = key.rpartition(".")
    if name in KEY_ABBREVIATIONS:  # difflib would offer train.logger for train.lr
        meant = f"{section}.{KEY_ABBREVIATIONS[name]}" if section else KEY_ABBREVIATIONS[name]
        hint = [meant if not section or meant in fields else _full_key(KEY_ABBREVIATIONS[name], fields)]  # model.dtype
    elif any(k.split(".", 1)[1] == name for k in fields):  # the right name in another section (train.dropout)
        hint = [_full_key(name, fields)]
    else:  # a misspelling, offered whole (a bare name's match alone once led into finetune.*)
        shorts = difflib.get_close_matches(name, [k.split(".", 1)[1] for k in fields], 1)
        hint = difflib.get_close_matches(key, list(fields), 1) if section else [_full_key(n, fields) for n in shorts]
    suggestion = f" (did you mean {hint[0]}?)" if hint else ""
    command = "finetune" if key.startswith("finetune.") else "train"
    raise UserError(f"unknown config key '{key}'{suggestion}; `banglaslm {command} --help` lists them")


def _full_key(name: str, fields) -> str:
    """The section.name a field name stands for (the model's or training's before finetune's)."""
    keys = [k for k in fields if k.split(".", 1)[1] == name]
    return next((k for k in keys if not k.startswith("finetune.")), keys[0])


_EXPECTED = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "text", "Path": "a path",
             "bool | None": "true, false or auto"}


def _check_kind(key: str, f: dataclasses.Field, value: Any) -> None:
    """UserError for a value of the wrong kind in a config built in Python (the CLI and files
    coerce theirs): a choice not offered, text or a float where an integer goes, text for a
    number. (Unchecked, `lr_schedule="linear"` trained, then the run's own config.json read
    as damaged; `n_layer="1"` failed deep in the trainer.)"""
    _coerce(key, f, value)  # a choice not offered, or a value that reads as nothing of the type
    type_name = (f.type if isinstance(f.type, str) else f.type.__name__).removesuffix(" | None")
    kinds = {"int": (int,), "float": (int, float), "bool": (bool,)}.get(type_name)
    if value is not None and kinds and (not isinstance(value, kinds) or (type_name != "bool" and isinstance(value, bool))):
        raise UserError(f"bad value {value!r} for {key}: expected {_EXPECTED[type_name]}, not {type(value).__name__}")


def _coerce(key: str, f: dataclasses.Field, value: Any) -> Any:
    """Turn a CLI string or file value into the field's type, or say what was expected."""
    hint = typing.get_type_hints(SECTIONS[key.split(".")[0]])[f.name]
    choices = typing.get_args(hint) if typing.get_origin(hint) is Literal else f.metadata.get("choices")
    type_name = f.type if isinstance(f.type, str) else f.type.__name__
    expected = _EXPECTED.get(type_name, type_name)
    if type_name.endswith(" | None"):  # None is written "auto": the field's value then comes from others
        if value is None or str(value).lower() in ("auto", "none", "null"):
            return None
        type_name = type_name.removesuffix(" | None")
    if choices:
        if str(value) not in choices:
            known = CHOICE_SPELLINGS.get(str(value).lower().removeprefix("torch."))
            alias = f" ({value} is written {known} here)" if known in choices else ""
            raise UserError(f"bad value {value!r} for {key}: expected one of {', '.join(choices)}{alias}")
        return str(value)
    try:
        if type_name == "bool":
            text = str(value).lower()
            if text not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text in ("true", "1", "yes")
        if isinstance(value, bool):
            raise ValueError
        if type_name == "int":
            number = float(value) if isinstance(value, float) else int(str(value).replace("_", ""))
            if number != int(number):
                raise ValueError
            return int(number)
        if type_name == "float":
            return float(value)
        return str(value)
    except (ValueError, TypeError, OverflowError):
        raise UserError(f"bad value {value!r} for {key}: expected {expected}") from None


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> None:
    fields = config_fields()
    for raw_key, value in overrides.items():
        key = resolve_key(raw_key)
        section, name = key.split(".", 1)
        setattr(getattr(cfg, section), name, _coerce(key, fields[key], value))


def parse_set_args(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"--set expects key=value, got '{pair}' (e.g. --set model.n_layer=4)")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


# A run folder's config.json: this header, then the sections. It is a config file too (a new
# run with another run's settings: --config runs/a/config.json).
RUN_FORMAT = "banglaslm-run"
RUN_FORMAT_VERSION = 1


def is_run_folder(path: Path) -> bool:
    """Whether `path`'s config.json says it is a banglaslm run folder."""
    try:
        return read_json_or_fail(Path(path) / "config.json").get("format") == RUN_FORMAT
    except (OSError, UserError, AttributeError):
        return False


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different (json keeps the last of a repeated key, so an
    edited config's first `max_iters` would be dropped without a word; TOML refuses it too)."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"the key {key!r} is given twice; keep one")
        seen[key] = value
    return seen


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    kind = path.suffix.lower().lstrip(".")
    if path.is_dir():
        raise UserError(f"config file {path} is a folder; give a .toml or .json file")
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    if kind not in ("toml", "json"):
        raise UserError(f"config file {path}: give a .toml or .json file (the suffix says which it is)")
    try:
        text = read_text(path)
        data = tomllib.loads(text) if kind == "toml" else json.loads(text, object_pairs_hook=_unique_keys)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {path} is not valid {kind.upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a table with 'model' and/or 'train'")
    if data.get("format") == RUN_FORMAT:  # a run's saved config: its header is not a setting, and its
        data = {k: v for k, v in data.items() if k not in ("format", "version")}  # vocabulary was its data's
        data["model"] = {k: v for k, v in (data.get("model") or {}).items() if k != "vocab_size"}
    return _flatten(data, str(path))


def inherited(source: RunConfig, extra: dict[str, Any] | None = None) -> RunConfig:
    """A copy of a source run's config for a run that starts from its weights: NOT_INHERITED,
    then `extra` (e.g. FINETUNE_TRAIN) applied, not validated yet (the user's settings follow)."""
    cfg = RunConfig.from_dict(source.to_dict())
    cfg.finetune = FinetuneConfig()
    apply_overrides(cfg, {**NOT_INHERITED, **(extra or {})})
    return cfg


def build_config(preset: str | None = None, file: str | Path | None = None,
                 overrides: dict[str, Any] | None = None, base: RunConfig | None = None) -> RunConfig:
    """Defaults (or a copy of `base`, e.g. a saved run's config), then preset, then config
    file, then explicit overrides; then validate."""
    cfg = RunConfig.from_dict(base.to_dict()) if base is not None else RunConfig()
    if preset is not None:
        if preset not in PRESETS:
            raise UserError(f"unknown preset '{preset}'; choose one of: {', '.join(PRESETS)}")
        apply_overrides(cfg, PRESETS[preset])
    if file is not None:
        apply_overrides(cfg, load_config_file(file))
    apply_overrides(cfg, overrides or {})
    validate(cfg)
    return cfg


def _check(key: str, value: Any, ok: bool, rule: str) -> None:
    if not ok:
        raise UserError(f"bad value {value} for {key}: must be {rule}")


def validate(cfg: RunConfig) -> None:
    """UserError for the first setting out of range: every number finite, each in its range."""
    m, t = cfg.model, cfg.train
    for key, f in config_fields().items():
        section = getattr(cfg, key.split(".")[0])
        value = plain_number(getattr(section, f.name))
        _check_kind(key, f, value)
        setattr(section, f.name, value)
        if isinstance(value, float):
            _check(key, value, math.isfinite(value), "a finite number")
    positive = ["model.n_layer", "model.n_head", "model.n_embd", "model.block_size", "model.rope_theta",
                "model.norm_eps", "train.batch_size", "train.grad_accum_steps", "train.max_iters",
                "train.learning_rate", "train.muon_lr_ratio", "train.eval_interval", "train.eval_iters",
                "train.log_interval", "train.max_skipped_updates"]
    non_negative = ["model.vocab_size", "train.warmup_iters", "train.weight_decay", "train.grad_clip",
                    "train.checkpoint_interval", "train.threads", "train.grad_spike_factor", "train.time_limit_min",
                    "train.early_stop_patience"]
    for key in positive + non_negative:
        value = getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1])
        _check(key, value, value > 0 if key in positive else value >= 0, "> 0" if key in positive else ">= 0")
    _check("train.seed", t.seed, 0 <= t.seed <= MAX_SEED, f"in [0, {MAX_SEED}]")
    _check("model.dropout", m.dropout, 0 <= m.dropout < 1, "in [0, 1)")
    _check("train.min_lr_ratio", t.min_lr_ratio, 0 <= t.min_lr_ratio <= 1, "in [0, 1]")
    _check("train.decay_fraction", t.decay_fraction, 0 < t.decay_fraction <= 1, "in (0, 1]")
    _check("train.ema_decay", t.ema_decay, 0 <= t.ema_decay < 1, "in [0, 1) (0 = off)")
    for key, value in {"train.beta1": t.beta1, "train.beta2": t.beta2}.items():
        _check(key, value, 0 <= value < 1, "in [0, 1)")
    if m.n_embd % m.n_head:
        raise UserError(f"model.n_embd ({m.n_embd}) must be divisible by model.n_head ({m.n_head})")
    if m.arch == "modern" and (m.n_embd // m.n_head) % 2:
        raise UserError("modern arch needs an even head size (n_embd / n_head) for RoPE")
    if t.optimizer == "muon" and t.parallel == "fsdp":
        raise UserError("train.optimizer=muon orthogonalizes whole matrices, which FSDP splits across "
                        "processes; use train.parallel=ddp with it")
    if t.ema_decay and (t.parallel == "fsdp" or cfg.finetune.lora_rank):
        raise UserError(f"train.ema_decay={t.ema_decay:g} (given, or the tiny preset's) averages whole weights "
                        "in one process, which FSDP and LoRA do not hold; set train.ema_decay=0, or use "
                        "train.parallel=ddp or full fine-tuning")
    if t.warmup_iters > t.max_iters:
        raise UserError(f"train.warmup_iters ({t.warmup_iters}) exceeds train.max_iters ({t.max_iters}); give more "
                        "steps, or a shorter warm-up (train.warmup_iters=N)")
    if t.device != "auto" and not (t.device == "cpu" or t.device.startswith("cuda")):
        raise UserError(f"bad value '{t.device}' for train.device: use auto, cpu, cuda or cuda:N")
    f = cfg.finetune
    _check("finetune.epochs", f.epochs, f.epochs >= 0, ">= 0 (0 = train.max_iters sets the length)")
    _check("finetune.val_fraction", f.val_fraction, 0 < f.val_fraction < 1, "in (0, 1)")
    # a block must hold a turn: its labels alone take several tokens
    _check("finetune.block_size", f.block_size, f.block_size == 0 or MIN_FINETUNE_BLOCK <= f.block_size <= m.block_size,
           f"0 (the model's context) or in [{MIN_FINETUNE_BLOCK}, model.block_size={m.block_size}]")
    _check("finetune.lora_rank", f.lora_rank, f.lora_rank >= 0, ">= 1 for LoRA (0 = full fine-tuning)")
    _check("finetune.lora_alpha", f.lora_alpha, f.lora_alpha > 0, "> 0")
    _check("finetune.lora_dropout", f.lora_dropout, 0 <= f.lora_dropout < 1, "in [0, 1)")


def describe_fields(sections: tuple[str, ...] = ("model", "train")) -> str:
    """One line per key of `sections` with its default and help, for `train --help`."""
    lines = []
    for key, f in config_fields().items():
        if key.split(".")[0] in sections:
            default = "auto" if f.default is None else f.default
            lines.append(f"  {key:<26} {default!s:<8} {f.metadata['help']}")
    return "\n".join(lines)
