"""The command line: a thin layer that parses arguments, calls the library, prints results.

Each command's options are built from the library itself (`add_options`): a function's
`Annotated[T, Opt(help)]` parameters or a dataclass's fields, with their defaults, types and
choices, so nothing is restated here. A `UserError` is printed as one line on stderr with exit
code 2 (a parameter named in it is shown as its flag); Ctrl-C exits with 130. Anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import inspect
import json
import os
import re
import signal
import sys
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

from .config import (
    PRESETS,
    Opt,
    RunConfig,
    SamplingParams,
    build_config,
    describe_fields,
    inherited,
    load_config_file,
    parse_set_args,
    resolve_key,
)
from .errors import UserError


# ---- options from signatures and dataclasses ------------------------------------------------
def _documented(source) -> list[tuple[str, Any, Any, Opt]]:
    """(name, type, default, Opt) of every parameter of `source` that carries command-line help."""
    hints = typing.get_type_hints(source, include_extras=True)
    if dataclasses.is_dataclass(source):
        out = []
        for f in dataclasses.fields(source):
            if "help" in f.metadata:
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                out.append((f.name, hints[f.name], default, Opt(f.metadata["help"], f.metadata["choices"])))
        return out
    out = []
    for p in inspect.signature(source).parameters.values():
        hint = hints.get(p.name)
        opt = next((m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Opt)), None)
        if opt is not None:
            out.append((p.name, hint.__origin__, p.default, opt))
    return out


def _base_type(hint) -> Any:
    """int for `int | None`, the hint itself otherwise."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return hint


@dataclasses.dataclass(frozen=True)
class Unset:
    """A flag's default, marked as not given on the command line (so that a preset may set it)."""
    value: Any


def add_options(parser: argparse.ArgumentParser, source, skip: tuple[str, ...] = (),
                flags: dict[str, str] | None = None, defaults: dict[str, Any] | None = None,
                only: tuple[str, ...] | None = None, note: str = "", presettable: bool = False) -> None:
    """Add a --flag for each documented parameter of `source` (a function or a dataclass) but
    `skip` (or those in `only`); `flags` renames ({"which": "checkpoint"}), `defaults` overrides
    this command's defaults, `note` starts each help; `presettable`: a flag not given parses as
    `Unset(default)`, which `picked(..., preset=)` resolves. The flag of each parameter is
    remembered, for error messages."""
    known = dict(parser.get_default("param_flags") or {})
    for name, hint, default, opt in _documented(source):
        if name in skip or (only is not None and name not in only):
            continue
        default = (defaults or {}).get(name, default)
        flag = "--" + (flags or {}).get(name, name.replace("_", "-"))
        kind = _base_type(hint)
        required = default is inspect.Parameter.empty
        shown = "" if required or default is None or default is False or default == [] else f" (default: {default})"
        help_text = (note + opt.help + shown).replace("%", "%%")  # argparse expands % in help
        kwargs: dict[str, Any] = {"dest": name, "help": help_text}
        kwargs.update(required=True) if required else kwargs.update(default=Unset(default) if presettable else default)
        if kind is bool:
            kwargs["action"] = "store_true" if default is False else argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is list:
            kwargs.update(action="append", default=list(default), metavar="TEXT")
        else:
            choices = opt.choices or (typing.get_args(kind) if typing.get_origin(kind) is Literal else None)
            kwargs.update(type=_any_case(choices) if choices else kind, choices=choices)
        parser.add_argument(flag, **kwargs)
        known[name] = flag
    parser.set_defaults(param_flags=known)


def _choices(values) -> dict[str, Any]:
    """add_argument's choices, read in any letter case."""
    return {"choices": list(values), "type": _any_case(values)}


def _any_case(choices) -> Callable[[str], str]:
    """An argparse type that reads a choice written in other letter case as the choice
    (--format GGUF as gguf); other text is left for argparse to refuse."""
    by_lower = {str(c).lower(): c for c in choices}
    return lambda value: by_lower.get(value.lower(), value)


def picked(args: argparse.Namespace, source, skip: tuple[str, ...] = (),
           preset: dict[str, Any] | None = None) -> dict[str, Any]:
    """The parsed values of `source`'s documented parameters, as keyword arguments; a flag not
    given (`Unset`) takes `preset`'s value where it has one, else its default."""
    out = {name: getattr(args, name) for name, *_ in _documented(source) if name not in skip and hasattr(args, name)}
    return {name: (preset or {}).get(name, value.value) if isinstance(value, Unset) else value
            for name, value in out.items()}


# ---- the commands -------------------------------------------------------------------------
def _add_prepare(sub) -> None:
    from .data.clean import CLEAN_PRESETS, PRESET_HELP, CleanOptions
    from .data.prepare import prepare
    from .data.sources import INPUTS_HELP

    p = sub.add_parser("prepare", help="text → tokenizer → token shards (train/, val/) + meta.json",
                       description="Read documents, normalize them, train or load a tokenizer, and write token bins.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help=INPUTS_HELP)
    p.add_argument("--out", required=True, help="data folder to write")
    add_options(p, prepare)
    p.add_argument("--clean-preset", **_choices(CLEAN_PRESETS), default="web",
                   help=f"with --clean: {PRESET_HELP} (default: web)")
    add_options(p, CleanOptions, note="with --clean: ", presettable=True)


def _add_clean(sub) -> None:
    from .data.clean import CLEAN_PRESETS, PRESET_HELP, CleanOptions, clean
    from .data.sources import INPUTS_HELP

    p = sub.add_parser("clean", help="deduplicate and filter documents (JSONL shards + a report)",
                       description="Normalize documents, drop non-Bangla text, Gopher-rule junk, exact and MinHash "
                                   "near-duplicates (FineWeb-2's Bangla thresholds by default); write the kept "
                                   "documents as JSONL shards, which `banglaslm prepare DIR` reads, with "
                                   "report.json / report.md.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help=INPUTS_HELP)
    p.add_argument("--out", required=True, help="folder to write")
    add_options(p, clean)
    p.add_argument("--preset", **_choices(CLEAN_PRESETS), default="web", help=f"{PRESET_HELP} (default: web)")
    add_options(p, CleanOptions, presettable=True)


def _add_train(sub) -> None:
    epilog = "config keys (--set KEY=VALUE, or in a --config JSON/TOML file):\n" + describe_fields() + \
        "\n\npresets: " + ", ".join(PRESETS)
    p = sub.add_parser("train", help="train a model on a prepared data folder",
                       description="Train a GPT; defaults are the course setup, presets and --set override them.",
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, nargs="+", metavar="DIR[:WEIGHT]",
                   help="data folder made by `banglaslm prepare`; several (same tokenizer) train on a mixture, each "
                        "window's folder drawn by WEIGHT (default: in proportion to their training tokens)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics, plot)")
    p.add_argument("--preset", default=None, help=f"named config: {', '.join(PRESETS)}")
    p.add_argument("--config", default=None, help="JSON or TOML file with [model] / [train] keys (a run's config.json: its settings)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config key (repeatable)")
    p.add_argument("--max-iters", type=int, default=None, help="shortcut for --set train.max_iters=N")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--init-from", default=None, metavar="SOURCE",
                   help="start a new run from the weights, model and train settings of a run folder or a Hugging "
                        "Face Llama / GPT-2 folder (continued pretraining; --set changes the train settings)")
    p.set_defaults(param_flags={"max_iters": "--max-iters", "resume": "--resume", "init_from": "--init-from",
                                "run_dir": "--out", "data_dir": "--data"})


def _add_finetune(sub) -> None:
    from .data.conversations import SHAPES

    epilog = "fine-tuning keys (--set KEY=VALUE; model and train keys as in `train --help`):\n" + \
        describe_fields(("finetune",))
    p = sub.add_parser("finetune", help="instruction-tune (SFT) or LoRA-tune a model on conversations",
                       description="Fine-tune a run's model (or a Hugging Face Llama / GPT-2 folder's) on "
                                   "conversations, with the loss on the answers only.",
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="SOURCE", help="run folder or Hugging Face model folder to start from")
    p.add_argument("--data", nargs="+", default=None, metavar="INPUT",
                   help=".jsonl/.json/.csv/.tsv/.parquet files (.gz/.bz2/.xz/.zst too), folders, globs or hf:NAME with "
                        f"rows of {SHAPES} (default: the embedded Bangla instruction set)")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--config", default=None, help="JSON or TOML file with [model] / [train] / [finetune] keys (a run's config.json: its settings)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config key (repeatable)")
    p.add_argument("--max-iters", type=int, default=None,
                   help="shortcut for --set train.max_iters=N (instead of finetune.epochs)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.set_defaults(param_flags={"resume": "--resume", "run_dir": "--out"})


def _add_eval(sub) -> None:
    from .evaluation.perplexity import evaluate_file
    from .runfolder import load_model

    p = sub.add_parser("eval", help="loss, perplexity, bits per byte / per character on text files")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--text", nargs="+", required=True, metavar="FILE",
                   help="UTF-8 text files to score, or tables (each row of --text-column a document)")
    add_options(p, load_model, flags={"which": "checkpoint"})
    add_options(p, evaluate_file)
    p.add_argument("--json", action="store_true", help="print one JSON object per file")


def _add_generate(sub) -> None:
    from .runfolder import load_model

    p = sub.add_parser("generate", help="continue a prompt with a trained model")
    p.add_argument("run_dir", metavar="RUN_DIR")
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="the text to continue (\\n and \\t are a line break and a tab, \\\\ a "
                                         "backslash, as in --stop)")
    prompt.add_argument("--prompt-file", metavar="FILE", help="read the text to continue from a text file")
    p.set_defaults(param_flags={"prompt": "--prompt"})
    add_options(p, SamplingParams, skip=("n", "logprobs"))
    add_options(p, load_model, flags={"which": "checkpoint"})
    p.add_argument("--stream", action="store_true", help="print the text as it is generated")
    p.add_argument("--json", action="store_true", help="print one JSON object: text, prompt, tokens")


def _add_export(sub) -> None:
    from .interop.gguf_export import export_gguf

    e = sub.add_parser("export", help="write a trained model in another ecosystem's format",
                       description="Export a run: --format hf writes a transformers checkpoint "
                                   "(LlamaForCausalLM for the modern arch, GPT2LMHeadModel for the course GPT); "
                                   "--format gguf writes one GGUF file for llama.cpp (llama / gpt2 architecture); "
                                   "--format peft writes a LoRA run's adapter for the Hugging Face model of its source.")
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--format", required=True, **_choices(("hf", "gguf", "peft")))
    e.add_argument("--out", required=True, help="hf, peft: folder to write (must not exist or be empty); "
                                                "gguf: the .gguf file")
    add_options(e, export_gguf, only=("which", "overwrite"), flags={"which": "checkpoint"})
    add_options(e, export_gguf, only=("dtype", "approximate_gelu"), flags={"dtype": "gguf-type"}, note="gguf only: ")


def _add_serve_and_chat(sub) -> None:
    from .chat import CHAT_DEFAULTS
    from .runfolder import load_model
    from .server.run import run_server

    sv = sub.add_parser("serve", help="OpenAI-compatible HTTP server with a web playground at /")
    sv.add_argument("run_dir", metavar="RUN_DIR")
    add_options(sv, run_server, flags={"allowed_hosts": "allowed-host", "which": "checkpoint"})
    c = sub.add_parser("chat", help="interactive chat in the terminal (/help lists the commands)")
    c.add_argument("run_dir", metavar="RUN_DIR")
    add_options(c, load_model, flags={"which": "checkpoint"})
    add_options(c, SamplingParams, skip=("n", "logprobs", "stop"), defaults=CHAT_DEFAULTS)
    c.add_argument("--system", help="system prompt: instructions the answers follow (as fine-tuning's system "
                                    "messages; /system changes it)")


def _add_others(sub) -> None:
    from .evaluation.lm_eval_task import write_perplexity_task
    from .evaluation.perplexity import evaluate_file
    from .lm_eval_run import run_lm_eval
    from .quickstart import quickstart
    from .runfolder import load_model

    i = sub.add_parser("import", help="turn a Hugging Face Llama / GPT-2 checkpoint into a run folder")
    i.add_argument("hf_dir", metavar="HF_DIR", help="local folder with config.json, model.safetensors, tokenizer.json")
    i.add_argument("--out", required=True, help="run folder to write")
    t = sub.add_parser("lm-eval-task", help="write an lm-evaluation-harness perplexity task from text files",
                       description="Write NAME.jsonl + NAME.yaml into --out: a loglikelihood_rolling task "
                                   "over the given files (one document each) for `lm_eval --include_path OUT` "
                                   "on a model exported with --format hf (docs/lm-eval.md).")
    t.add_argument("texts", nargs="+", metavar="TEXT", help="text files, one document each")
    t.add_argument("--out", required=True, help="folder for the task files")
    add_options(t, write_perplexity_task)
    h = sub.add_parser("lm-eval", help="score a run on lm-evaluation-harness tasks (needs banglaslm[lm-eval])",
                       description="Run lm-evaluation-harness on the run's model directly, as banglaslm scores it "
                                   "(normalized text, contexts after the end-of-document token); results go to "
                                   "RUN_DIR/lm_eval/ (the README lists Bangla tasks that suit small models; docs/lm-eval.md has the details).")
    h.add_argument("run_dir", metavar="RUN_DIR")
    add_options(h, run_lm_eval, flags={"which": "checkpoint"})
    r = sub.add_parser("report", help="write a model card with plots and tokenizer statistics (RUN_DIR/report/)")
    r.add_argument("run_dir", metavar="RUN_DIR")
    r.add_argument("--text", nargs="*", default=[], metavar="FILE",
                   help="text files to evaluate in the report, or tables (each row of --text-column a document)")
    r.add_argument("--out", default=None, help="report folder (default RUN_DIR/report)")
    add_options(r, load_model, flags={"which": "checkpoint"}, only=("which",))
    add_options(r, evaluate_file, only=("text_column",))  # as eval reads a table
    q = sub.add_parser("quickstart", help="prepare the embedded corpus, train `tiny`, evaluate, generate")
    add_options(q, quickstart)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="banglaslm", description="Build a small language model from scratch, Bangla first.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_prepare, _add_clean, _add_train, _add_finetune, _add_eval, _add_generate, _add_export, _add_serve_and_chat, _add_others):
        add(sub)
    return parser


def cmd_prepare(args) -> None:
    from .data.clean import CLEAN_PRESETS, CleanOptions
    from .data.prepare import prepare

    if args.clean_preset != "web" and not args.clean:
        raise UserError(f"--clean-preset {args.clean_preset} sets the thresholds of --clean; add --clean, or drop it")
    options = CleanOptions(**picked(args, CleanOptions, preset=CLEAN_PRESETS[args.clean_preset]))
    result = prepare(args.inputs, args.out, clean_options=options, **picked(args, prepare))
    print(result.summary())
    for line in result.warnings():
        print(f"warning: {_flagged(line, args)}", file=sys.stderr)


def cmd_clean(args) -> None:
    from .data.clean import CLEAN_PRESETS, CleanOptions, clean

    options = CleanOptions(**picked(args, CleanOptions, preset=CLEAN_PRESETS[args.preset]))
    print(clean(args.inputs, args.out, options, **picked(args, clean)).summary())


def cmd_train(args) -> None:
    from .runfolder import RunFolder
    from .training.trainer import train

    overrides = parse_set_args(args.set)
    _check_one_length(args, overrides)
    if given := sorted(key for key in overrides if key.startswith("finetune.")):
        raise UserError(f"{given[0]} is a setting of `banglaslm finetune`; train trains every weight on prepared text: "
                        "drop it (LoRA: banglaslm finetune RUN --data CONVERSATIONS --set finetune.lora_rank=8)")
    overrides = {**_train_sections(args.config), **overrides}  # --config first, --set over it
    run = RunFolder(args.out)
    with contextlib.ExitStack() as scratch:
        init_from = source_run(args.init_from, scratch) if args.init_from else None
        # --preset / --config / --set change a saved config: the resumed run's (train() then
        # checks that only settings a resume may change were changed), or the source run's.
        resumed = args.resume and run.config_path.is_file()
        base = run.load_config() if resumed else inherited(RunFolder(init_from).load_config()) if init_from else None
        if not resumed and (args.max_iters or 0) >= 1:  # the warm-up is checked against this length, not the
            overrides = {**overrides, "train.max_iters": args.max_iters}  # default's, preset's or source's (a bad
            # one is named as --max-iters by train())
        config = build_config(args.preset, None, overrides, base=base)
        if args.resume and base is not None and args.preset:
            _check_resumed_preset(args.preset, config, build_config(None, None, overrides, base=base),
                                  given={"train.max_iters"} if args.max_iters is not None else set())
        result = train(args.data, args.out, config, resume=args.resume, max_iters=args.max_iters, init_from=init_from)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun, one summary (rank 0's) is enough
    print(_done(result))


def _train_sections(config_file: str | None) -> dict:
    """The settings of a --config file but its finetune section (a fine-tuning run's config.json
    holds one, which `train` would save and never use), with a note when that held any."""
    if config_file is None:
        return {}
    values, defaults = load_config_file(config_file), RunConfig().flat()
    if set_aside := [key for key, value in values.items() if key.startswith("finetune.") and value != defaults.get(key)]:
        print(f"note: train sets the finetune section of {config_file} aside ({', '.join(set_aside)}): it is for "
              "banglaslm finetune", file=sys.stderr)
    return {key: value for key, value in values.items() if not key.startswith("finetune.")}


def _check_resumed_preset(preset: str, config, without, given: set[str]) -> None:
    """A preset on --resume overwrites what the run saved (a `--set train.max_iters=200` of the
    first command quietly back at the preset's value): refuse where the config built with it
    differs from the one built without it (the saved run, --config and --set), but for keys
    another flag sets anyway (`given`: --max-iters)."""
    ours, saved = config.flat(), without.flat()
    changed = [f"{key} {saved[key]} → {value}" for key, value in ours.items() if saved[key] != value and key not in given]
    if changed:
        raise UserError(f"--preset {preset} with --resume would change the saved run's {', '.join(changed)}; the run "
                        "keeps its own settings: drop --preset (and --set any key you do mean to change)")


def _done(result) -> str:
    last = result.last_eval
    if not last and result.stopped_early:  # resumed after its early stop
        return (f"{result.run_dir} stopped early at iteration {result.iterations} (best val "
                f"{result.best_val_loss:.4f}; train.early_stop_patience={result.stopped_early}); to train further, "
                "resume with a larger --set train.early_stop_patience=N (0: off)")
    if not last and result.time_limit_min:  # resumed with its time already used
        return (f"{result.run_dir} already used its train.time_limit_min ({result.time_limit_min:g} min) at iteration "
                f"{result.iterations} (best val {result.best_val_loss:.4f}); to train further, resume with a larger "
                "--set train.time_limit_min=M")
    if not last:  # resumed at its last iteration: nothing was trained or evaluated
        return (f"{result.run_dir} already finished its {result.iterations} iterations (best val "
                f"{result.best_val_loss:.4f}); to train further, resume with a larger --max-iters")
    clock = f" (train.time_limit_min = {result.time_limit_min:g} stopped it)" if result.time_limit_min else \
        f" (train.early_stop_patience = {result.stopped_early} stopped it)" if result.stopped_early else ""
    if result.warmup_iters:  # warm-up counts iterations, the decay the clock: it never decayed, nor peaked
        clock = (f" (train.time_limit_min = {result.time_limit_min:g} stopped it inside its warm-up of "
                 f"{result.warmup_iters:,} iterations: the learning rate never reached its peak; lower "
                 "train.warmup_iters or raise the limit)")
    session = (f" ({result.iterations - result.resumed_at:,} of them in this session's {result.seconds:.0f} s, "
               f"resumed at {result.resumed_at:,})" if result.resumed_at else f" in {result.seconds:.0f} s")
    return (f"done: {result.iterations:,} iteration{'s' * (result.iterations != 1)}{session}{clock}; "
            f"last eval train {last.get('train', float('nan')):.4f} val {last.get('val', float('nan')):.4f}; "
            f"best val {result.best_val_loss:.4f}; run folder {result.run_dir}")


def source_run(path: str, scratch: contextlib.ExitStack) -> str:
    """A run folder to start from: `path` itself, or for a Hugging Face model folder, the run
    folder it imports to in a temporary folder that `scratch` removes."""
    from pathlib import Path

    from .fileio import read_json_or_fail
    from .runfolder import RunFolder

    config = Path(path) / "config.json"
    if not config.is_file():
        RunFolder(path).require()  # a data folder, a missing one: named as not a run folder
    if RunFolder(path).is_run_folder():
        return path
    if "model_type" not in read_json_or_fail(config):
        raise UserError(f"{path} is neither a banglaslm run folder nor a Hugging Face model folder")
    import tempfile

    from .interop.hf_import import import_hf

    return str(import_hf(path, Path(scratch.enter_context(tempfile.TemporaryDirectory())) / "run"))


def _check_one_length(args, overrides: dict) -> None:
    """A note when --max-iters and --set train.max_iters say different things: the flag wins, as
    it did without a word."""
    if args.max_iters is None:
        return
    for key, value in overrides.items():
        if resolve_key(key) == "train.max_iters" and str(value).strip() != str(args.max_iters):
            print(f"note: --max-iters {args.max_iters} sets the run's length; --set {key}={value} is set aside",
                  file=sys.stderr)


def cmd_finetune(args) -> None:
    from .runfolder import RunFolder
    from .training.finetune import finetune, finetune_config

    run = RunFolder(args.out)
    with contextlib.ExitStack() as scratch:
        source = source_run(args.source, scratch)
        overrides = parse_set_args(args.set)
        _check_one_length(args, overrides)
        if args.max_iters is not None:
            overrides["train.max_iters"] = args.max_iters
        if args.resume and run.config_path.is_file():
            config = build_config(file=args.config, overrides=overrides, base=run.load_config())
        else:
            RunFolder(source).require()
            config = finetune_config(RunFolder(source).load_config(), args.config, overrides)
        result = finetune(source, args.data or None, args.out, config, resume=args.resume,
                          say=lambda line: print(line, file=sys.stderr))
    if os.environ.get("RANK", "0") == "0":
        print(_done(result) + f"; try: banglaslm chat {result.run_dir}")


def cmd_eval(args) -> None:
    from .evaluation.perplexity import evaluate_documents, read_texts
    from .runfolder import load_model

    texts = read_texts(args.text, args.text_column)  # all checked before the model loads
    loaded = load_model(args.run_dir, **picked(args, load_model))
    for name, documents in texts:
        r = evaluate_documents(loaded, documents, name, args.stride)
        if args.json:
            print(json.dumps(r.to_dict(), ensure_ascii=False))
        else:
            covered = (f"; {r.unknown_share:.2%} unknown / {r.byte_fallback_share:.2%} byte-fallback tokens"
                       if r.unknown_share or r.byte_fallback_share else "")
            print(f"{r.file}: loss {r.loss:.4f}  perplexity {r.perplexity:.2f}  bits/byte {r.bits_per_byte:.4f}  "
                  f"bits/char {r.bits_per_char:.4f}  ({r.tokens:,} token{'s' * (r.tokens != 1)}, {r.chars:,} "
                  f"character{'s' * (r.chars != 1)}{covered})")
        for line in r.warnings():
            print(f"warning: {line}", file=sys.stderr)


_ESCAPES = re.compile(r"\\(\\|n|t)")


def unescape(text: str) -> str:
    """A command-line string with \\n, \\t and \\\\ read as a line break, a tab and a backslash."""
    return _ESCAPES.sub(lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], text)


def cmd_generate(args) -> None:
    from .generation.engine import Engine
    from .runfolder import load_model
    from .text import prompt_shown

    if args.stream and args.json:
        raise UserError("--stream and --json cannot be combined; --json prints one object at the end")
    params = SamplingParams(**picked(args, SamplingParams))
    params.stop = [unescape(s) for s in params.stop]  # `--stop "\n"`, as people type it, reaches us as \ and n
    params.validate()  # fail on bad options before spending time loading the model
    if args.prompt_file is not None:
        args.prompt = read_prompt_file(args.prompt_file)
    else:  # `--prompt "শিরোনাম: নদী\n"` reached the model as a backslash and an n
        args.prompt = unescape(args.prompt)
    loaded = load_model(args.run_dir, **picked(args, load_model))
    engine = Engine(loaded.model, loaded.tokenizer)
    engine.encode_prompt(args.prompt)  # an empty prompt fails here, before any output
    if note := loaded.tokenizer.unknown_note(args.prompt, "the prompt"):
        print(f"note: {note}", file=sys.stderr)
    # After a line break the tokenizer cannot write (SentencePiece), the new word's own space
    # would open the new line: it goes, as the server drops it after a final space.
    shown = prompt_shown(args.prompt)
    new_line = shown.endswith("\n") and engine.opens_word(args.prompt)
    if args.stream:
        sys.stdout.write(shown)
        sys.stdout.flush()
        wrote = False
        for piece in engine.stream(args.prompt, params, strip_leading=new_line):
            piece = piece.lstrip(" ") if new_line and not wrote else piece
            sys.stdout.write(piece)
            sys.stdout.flush()
            wrote = wrote or bool(piece.strip())
        sys.stdout.write("\n")
        _note_if_nothing(wrote, params.stop)
        return
    completion = engine.generate([args.prompt], params)[0][0]
    text = completion.text.lstrip(" ") if new_line else completion.text
    _note_if_nothing(bool(text.strip()), params.stop)
    if args.json:
        print(json.dumps({"text": text, "prompt": args.prompt, "tokens": len(completion.token_ids)},
                         ensure_ascii=False))
    else:
        print(shown + text)


def _note_if_nothing(wrote: bool, stops: list[str]) -> None:
    """A note on stderr when the model wrote nothing visible (the prompt alone looked like a fault)."""
    if not wrote:
        why = "it ended the text at once, wrote only spaces, or began with a --stop string" if stops else \
            "it ended the text at once, or wrote only spaces"
        print(f"note: the model wrote nothing after the prompt ({why}); "
              "try another --seed or --temperature, or, for a chat-tuned run, banglaslm chat", file=sys.stderr)


def read_prompt_file(path: str) -> str:
    """A prompt kept in a text file, read as every text file is (encodings, line ends), without
    the line end a text file usually ends with."""
    from pathlib import Path

    from .data.sources import read_whole_text
    from .text import normalize

    if Path(path).is_dir():
        raise UserError(f"the prompt file {path} is a folder; give one text file")
    if not Path(path).exists():
        raise UserError(f"prompt file not found: {path}")
    text = read_whole_text(path).removesuffix("\n")
    if not normalize(text).strip():
        raise UserError(f"the prompt file {path} holds no text; write the text to continue in it, e.g. \"আমার সোনার\"")
    return text


def cmd_quickstart(args) -> None:
    from .quickstart import quickstart

    quickstart(**picked(args, quickstart))


def _read(args) -> str:
    """Which checkpoint of args.run_dir a command read: best, or latest where there is no best."""
    from .runfolder import RunFolder

    return RunFolder(args.run_dir).checkpoint_read(args.which).stem


def cmd_export(args) -> None:
    if args.format == "gguf":
        from .interop.gguf_export import GELU_NOTE, Q8_0_NOTE, export_gguf

        out = export_gguf(args.run_dir, args.out, **picked(args, export_gguf))
        if args.approximate_gelu:
            print(f"note: {GELU_NOTE}", file=sys.stderr)
        if args.dtype == "q8_0":
            print(f"note: {Q8_0_NOTE}", file=sys.stderr)
        print(f"exported {args.run_dir} ({_read(args)}) to {out} ({args.dtype}); normalize prompts with "
              f"banglaslm.text.normalize_prompt first (see docs/interop.md)")
        return
    from .interop.gguf_export import export_gguf
    from .interop.hf_export import export_hf

    defaults = inspect.signature(export_gguf).parameters
    if args.dtype != defaults["dtype"].default or args.approximate_gelu:
        raise UserError(f"--gguf-type and --approximate-gelu apply to --format gguf; drop them for --format {args.format}")
    if args.format == "peft":
        from .interop.peft_export import export_peft

        out, base = export_peft(args.run_dir, args.out, **picked(args, export_peft))
        print(f"exported the LoRA adapter of {args.run_dir} ({_read(args)}) to {out}; {base}, then "
              f"peft.PeftModel.from_pretrained(model, {str(out)!r})")
        return
    out = export_hf(args.run_dir, args.out, **picked(args, export_hf))
    print(f"exported {args.run_dir} ({_read(args)}) to {out}; load it with "
          f"transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")


def cmd_import(args) -> None:
    from .interop.hf_import import import_hf

    out = import_hf(args.hf_dir, args.out)
    print(f"imported {args.hf_dir} into the run folder {out}; try: banglaslm generate {out} --prompt \"...\"")


def cmd_lm_eval_task(args) -> None:
    from .evaluation.lm_eval_task import write_perplexity_task

    out = write_perplexity_task(args.texts, args.out, **picked(args, write_perplexity_task))
    print(f"wrote the task {args.name!r} to {out}; run: banglaslm lm-eval RUN_DIR --tasks {args.name} "
          f"--include-path {out}   (or lm_eval on an HF export: docs/lm-eval.md)")


def cmd_lm_eval(args) -> None:
    from .lm_eval_run import run_lm_eval

    results, path = run_lm_eval(args.run_dir, **picked(args, run_lm_eval))
    from lm_eval.utils import make_table  # installed: run_lm_eval checked

    print(make_table(results))
    print(f"wrote {path}")


def cmd_serve(args) -> None:
    from .runfolder import RunFolder
    from .server.run import run_server

    RunFolder(args.run_dir).require()
    try:
        run_server(args.run_dir, **picked(args, run_server))  # it says where it serves once it has the port
    finally:  # stopped: what is left is the interpreter's exit (longer on a busy machine), which a
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C pressed again cut with a traceback


def cmd_chat(args) -> None:
    from .chat import chat_loop, read_piped
    from .runfolder import load_model

    params = SamplingParams(**picked(args, SamplingParams))
    params.validate()
    chat_loop(load_model(args.run_dir, **picked(args, load_model)), params=params, system=args.system,
              read_line=input if sys.stdin.isatty() else read_piped)


def cmd_report(args) -> None:
    from .report import write_report

    out = write_report(args.run_dir, args.text, out_dir=args.out, which=args.which, text_column=args.text_column)
    print(f"wrote {out}/README.md (with plots and report.html)")


COMMANDS = {"prepare": cmd_prepare, "clean": cmd_clean, "train": cmd_train, "finetune": cmd_finetune, "eval": cmd_eval, "generate": cmd_generate,
            "quickstart": cmd_quickstart, "export": cmd_export, "import": cmd_import,
            "report": cmd_report, "serve": cmd_serve, "chat": cmd_chat, "lm-eval-task": cmd_lm_eval_task,
            "lm-eval": cmd_lm_eval}


def _message(exc: UserError, args: argparse.Namespace) -> str:
    """The error's text, the parameters it names shown as this command's flags: the one it
    starts with (`exc.param`) and any other written `like_this`."""
    text = str(exc)
    flags = getattr(args, "param_flags", None) or {}
    if exc.param in flags and text.startswith(exc.param):
        text = flags[exc.param] + text[len(exc.param):]
    return re.sub(r"\s*\n\s*", " ", _flagged(text, args))


def _flagged(text: str, args: argparse.Namespace) -> str:
    """`text` with each parameter written `like_this` shown as this command's flag."""
    flags = getattr(args, "param_flags", None) or {}
    return re.sub(r"`([a-z_]+)`", lambda m: flags.get(m.group(1), m.group(1)), text)


_OS_ADVICE = {errno.ENOSPC: "free some space (files are written whole or not at all: what was there is intact)",
              errno.EDQUOT: "free some space (files are written whole or not at all: what was there is intact)",
              errno.EROFS: "the file system is read-only: choose another output folder",
              errno.EACCES: "check the permissions, or choose another output folder",
              errno.EPERM: "check the permissions, or choose another output folder",
              errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path"}


def _os_message(exc: OSError) -> str:
    """An OS error (permissions, a full disk, a file in the way) as one line with what to do."""
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}; {_OS_ADVICE.get(exc.errno, 'check the path and try again')}"


def parse(argv: list[str] | None) -> argparse.Namespace:
    """argparse's reading of `argv`; `--set a=1 b=2` (several keys after one --set, as other
    tools take them) and a config key written as an option (`--lora-rank 4`) are one line
    saying how --set takes them, not argparse's top-level usage."""
    argv = sys.argv[1:] if argv is None else argv
    more = [argv[i + 2] for i in range(len(argv) - 2) if argv[i] == "--set" and CONFIG_KEY.match(argv[i + 2])]
    if more:  # checked before argparse, which takes a KEY=VALUE for finetune's SOURCE
        print(f"banglaslm {argv[0]}: error: --set takes one KEY=VALUE; repeat it for each key: "
              + " ".join(f"--set {e}" for e in more[:2]), file=sys.stderr)
        raise SystemExit(2)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    option = next((e.split("=")[0] for e in extra if e.startswith("--")), None)
    if option is not None and hasattr(args, "set"):  # `finetune --lora-rank 4`: a config key written as an option
        from .config import resolve_key

        with contextlib.suppress(UserError):
            key = resolve_key(option[2:].replace("-", "_"))
            print(f"banglaslm {args.command}: error: {option} is no option; config keys go through --set: "
                  f"--set {key}=VALUE", file=sys.stderr)
            raise SystemExit(2)
    return parser.parse_args(argv) if extra else args


CONFIG_KEY = re.compile(r"^[a-z_]+\.[a-z_0-9]+=")  # model.n_layer=2: a config key and its value


def main(argv: list[str] | None = None) -> int:
    try:  # building the parser imports torch: seconds in which Ctrl-C must not print a traceback
        args = parse(argv)
        from .training.trainer import TrainingInterrupted
    except KeyboardInterrupt:
        print("banglaslm: interrupted", file=sys.stderr)
        return 130

    try:
        COMMANDS[args.command](args)
    except UserError as exc:
        print(f"banglaslm {args.command}: error: {_message(exc, args)}", file=sys.stderr)
        return 2
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            return 1
        print(f"banglaslm {args.command}: error: {_os_message(exc)}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        if args.command in ("train", "finetune"):  # flags, not Python's resume=True; "plus --resume" if it had none
            exc = TrainingInterrupted(exc.iteration, exc.checkpoint, "run the same command again to continue"
                                      if args.resume else "continue with the same command plus --resume")
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank stops alike: one line is enough
            print(f"banglaslm {args.command}: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"banglaslm {args.command}: interrupted{_unsaved_hint(args)}", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        from .training.distributed import lost_a_peer
        if not lost_a_peer(exc):
            raise
        seen = re.sub(r"^\[[^\]]*\]\s*", "", str(exc)).split(". ")[0] or type(exc).__name__  # gloo's source line off
        print(f"banglaslm {args.command} (rank {os.environ.get('RANK', '?')}): error: another process of this run "
              f"stopped ({seen}; its own output, or torchrun's, says why); {_resume_hint(args)}", file=sys.stderr)
        return 1
    return 0


def _resume_hint(args) -> str:
    """Where a run whose other process died goes on from."""
    latest = os.path.join(args.out, "checkpoints", "latest.safetensors") if args.command in ("train", "finetune") \
        else None
    if latest is None or not os.path.isfile(latest):
        return "run the same command again"
    how = "the same torchrun command" if args.resume else "the same torchrun command plus --resume"
    return f"{how} continues from its last checkpoint ({latest})"


def _unsaved_hint(args) -> str:
    """For a training stopped by a second Ctrl-C (before its checkpoint was saved), where it goes on from."""
    if args.command == "quickstart":
        run, how = os.path.join(args.out, "run"), "the same command again"
    elif args.command in ("train", "finetune"):
        run, how = args.out, "the same command plus --resume"
    elif args.command == "prepare":
        from pathlib import Path

        from .data.prepare import work_folder

        work = work_folder(Path(args.out))
        return f"; the same command again goes on from the work done ({work})" if work.is_dir() else ""
    else:
        return ""
    latest = os.path.join(run, "checkpoints", "latest.safetensors")
    return f" before saving; {how} continues from the last checkpoint saved ({latest})" if os.path.isfile(latest) else ""
