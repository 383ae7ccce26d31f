"""The command line: a thin layer that parses arguments, calls the library, prints results.

A `UserError` (a mistake the user can fix) is printed as one line on stderr with exit code 2;
Ctrl-C exits with 130 (training saves a checkpoint first). Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .config import PRESETS, build_config, describe_fields, parse_set_args
from .errors import UserError


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="text → tokenizer → train.bin / val.bin / meta.json",
                       description="Read documents, normalize them, train or load a tokenizer, and write token bins.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help=".txt/.md files, folders, globs, .jsonl/.csv/.parquet files, or hf:NAME[:CONFIG]")
    p.add_argument("--out", required=True, help="data folder to write")
    p.add_argument("--tokenizer", default="bpe", help="'bpe' (train byte-level BPE), 'char', or PATH/tokenizer.json")
    p.add_argument("--vocab-size", type=int, default=8000, help="BPE vocabulary size (default 8000)")
    p.add_argument("--val-fraction", type=float, default=0.05, help="share of documents held out (default 0.05)")
    p.add_argument("--seed", type=int, default=42, help="seed of the train/val document split (default 42)")
    p.add_argument("--text-column", default=None, help="column/field holding the text in .jsonl/.csv/.parquet/hf: (default 'text')")
    p.add_argument("--doc-split", default="file", choices=("file", "paragraph", "line"),
                   help="what one document is in .txt/.md files (default: the whole file)")
    p.add_argument("--dtype", default="auto", choices=("auto", "uint16", "uint32"), help="token id storage (default: auto)")


def _add_train(sub) -> None:
    epilog = "config keys (--set KEY=VALUE, or in a --config JSON/TOML file):\n" + describe_fields() + \
        "\n\npresets: " + ", ".join(PRESETS)
    p = sub.add_parser("train", help="train a model on a prepared data folder",
                       description="Train a GPT; defaults are the course setup, presets and --set override them.",
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="data folder made by `banglaslm prepare`")
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics, plot)")
    p.add_argument("--preset", default=None, help=f"named config: {', '.join(PRESETS)}")
    p.add_argument("--config", default=None, help="JSON or TOML file with [model] / [train] keys")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config key (repeatable)")
    p.add_argument("--max-iters", type=int, default=None, help="shortcut for --set train.max_iters=N")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="loss, perplexity, bits per byte / per character on text files")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--text", nargs="+", required=True, metavar="FILE", help="UTF-8 text files to score")
    p.add_argument("--checkpoint", default="best", choices=("best", "latest"))
    p.add_argument("--stride", type=int, default=None, help="sliding-window step in tokens (default: half the block)")
    p.add_argument("--json", action="store_true", help="print one JSON object per file")


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="continue a prompt with a trained model")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--min-p", type=float, default=None, help="drop tokens below min_p x the top probability")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages tokens already seen (1 = off)")
    p.add_argument("--presence-penalty", type=float, default=0.0, help="OpenAI-style, in [-2, 2]")
    p.add_argument("--frequency-penalty", type=float, default=0.0, help="OpenAI-style, in [-2, 2]")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop before this text (repeatable)")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token")
    p.add_argument("--seed", type=int, default=None, help="same seed, same text")
    p.add_argument("--checkpoint", default="best", choices=("best", "latest"))
    p.add_argument("--stream", action="store_true", help="print the text as it is generated")
    p.add_argument("--json", action="store_true", help="print one JSON object: text, prompt, tokens")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="banglaslm", description="Build a small language model from scratch, Bangla first.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_prepare(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_generate(sub)
    e = sub.add_parser("export", help="write a trained model in another ecosystem's format",
                       description="Export a run: --format hf writes a transformers checkpoint "
                                   "(LlamaForCausalLM for the modern arch, GPT2LMHeadModel for the course GPT); "
                                   "--format gguf writes one GGUF file for llama.cpp (llama / gpt2 architecture).")
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--format", required=True, choices=("hf", "gguf"))
    e.add_argument("--out", required=True, help="hf: folder to write (must not exist or be empty); gguf: the .gguf file")
    e.add_argument("--checkpoint", default="best", choices=("best", "latest"))
    e.add_argument("--gguf-type", default="f16", choices=("f32", "f16", "q8_0"),
                   help="gguf: how weight matrices are stored (default f16; norms stay f32)")
    e.add_argument("--approximate-gelu", action="store_true",
                   help="gguf, course GPT only: accept llama.cpp's tanh-approximated GELU (not exact)")
    e.add_argument("--overwrite", action="store_true", help="gguf: replace an existing file")
    i = sub.add_parser("import", help="turn a Hugging Face Llama / GPT-2 checkpoint into a run folder")
    i.add_argument("hf_dir", metavar="HF_DIR", help="local folder with config.json, model.safetensors, tokenizer.json")
    i.add_argument("--out", required=True, help="run folder to write")
    t = sub.add_parser("lm-eval-task", help="write an lm-evaluation-harness perplexity task from text files",
                       description="Write NAME.jsonl + NAME.yaml into --out: a loglikelihood_rolling task "
                                   "over the given files (one document each) for `lm_eval --include_path OUT` "
                                   "on a model exported with --format hf (docs/lm-eval.md).")
    t.add_argument("texts", nargs="+", metavar="TEXT", help="text files, one document each")
    t.add_argument("--out", required=True, help="folder for the task files")
    t.add_argument("--name", default="bangla_ppl", help="task name (default: bangla_ppl)")
    sv = sub.add_parser("serve", help="OpenAI-compatible HTTP server with a web playground at /")
    sv.add_argument("run_dir", metavar="RUN_DIR")
    sv.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/*")
    c = sub.add_parser("chat", help="interactive chat in the terminal (/help lists the commands)")
    c.add_argument("run_dir", metavar="RUN_DIR")
    c.add_argument("--checkpoint", default="best", choices=("best", "latest"))
    c.add_argument("--temperature", type=float, default=0.8)
    c.add_argument("--top-k", type=int, default=50)
    c.add_argument("--max-new-tokens", type=int, default=200)
    c.add_argument("--seed", type=int, default=None)
    r = sub.add_parser("report", help="write a model card with plots and tokenizer statistics (RUN_DIR/report/)")
    r.add_argument("run_dir", metavar="RUN_DIR")
    r.add_argument("--text", nargs="*", default=[], metavar="FILE", help="text files to evaluate in the report")
    r.add_argument("--out", default=None, help="report folder (default RUN_DIR/report)")
    r.add_argument("--checkpoint", default="best", choices=("best", "latest"))
    q = sub.add_parser("quickstart", help="prepare the embedded corpus, train `tiny`, evaluate, generate")
    q.add_argument("--out", default="quickstart", help="folder for data/ and run/ (default: ./quickstart)")
    q.add_argument("--max-iters", type=int, default=None, help="override the tiny preset's step count")
    return parser


def cmd_prepare(args) -> None:
    from .prepare import prepare

    result = prepare(args.inputs, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                     val_fraction=args.val_fraction, seed=args.seed, text_column=args.text_column,
                     doc_split=args.doc_split, dtype=args.dtype)
    print(result.summary())


def cmd_train(args) -> None:
    from .trainer import train

    explicit = args.preset is not None or args.config is not None or args.set
    overrides = parse_set_args(args.set)
    config = build_config(args.preset, args.config, overrides) if (explicit or not args.resume) else None
    result = train(args.data, args.out, config, resume=args.resume, max_iters=args.max_iters)
    last = result.last_eval
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun, one summary (rank 0's) is enough
    print(f"done: {result.iterations} iterations in {result.seconds:.0f} s; "
          f"last eval train {last.get('train', float('nan')):.4f} val {last.get('val', float('nan')):.4f}; "
          f"best val {result.best_val_loss:.4f}; run folder {result.run_dir}")


def cmd_eval(args) -> None:
    from .evaluate import evaluate_file
    from .runfolder import load_model

    loaded = load_model(args.run_dir, args.checkpoint)
    for path in args.text:
        r = evaluate_file(loaded, path, stride=args.stride)
        if args.json:
            print(json.dumps(r.to_dict(), ensure_ascii=False))
        else:
            print(f"{r.file}: loss {r.loss:.4f}  perplexity {r.perplexity:.2f}  bits/byte {r.bits_per_byte:.4f}  "
                  f"bits/char {r.bits_per_char:.4f}  ({r.tokens:,} tokens, {r.chars:,} characters)")


def cmd_generate(args) -> None:
    from .engine import Engine, SamplingParams
    from .runfolder import load_model

    if args.stream and args.json:
        raise UserError("--stream and --json cannot be combined; --json prints one object at the end")
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                            presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
                            stop=args.stop, seed=args.seed, greedy=args.greedy)
    params.validate()  # fail on bad options before spending time loading the model
    loaded = load_model(args.run_dir, args.checkpoint)
    engine = Engine(loaded.model, loaded.tokenizer)
    engine.encode_prompt(args.prompt)  # an empty prompt fails here, before any output
    if args.stream:
        sys.stdout.write(args.prompt)
        sys.stdout.flush()
        for piece in engine.stream(args.prompt, params):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return
    completion = engine.generate([args.prompt], params)[0][0]
    if args.json:
        print(json.dumps({"text": completion.text, "prompt": args.prompt, "tokens": len(completion.token_ids)},
                         ensure_ascii=False))
    else:
        print(args.prompt + completion.text)


def cmd_quickstart(args) -> None:
    from .quickstart import quickstart

    quickstart(args.out, max_iters=args.max_iters)


def cmd_export(args) -> None:
    if args.format == "gguf":
        from .export_gguf import GELU_NOTE, export_gguf

        out = export_gguf(args.run_dir, args.out, dtype=args.gguf_type, which=args.checkpoint,
                          overwrite=args.overwrite, approximate_gelu=args.approximate_gelu)
        if args.approximate_gelu:
            print(f"note: {GELU_NOTE}", file=sys.stderr)
        print(f"exported {args.run_dir} ({args.checkpoint}) to {out} ({args.gguf_type}); prepend the "
              f"end-of-document token and normalize prompts with banglaslm.normalize first (see BENCHMARKS.md)")
        return
    from .export import export_hf

    out = export_hf(args.run_dir, args.out, which=args.checkpoint)
    print(f"exported {args.run_dir} ({args.checkpoint}) to {out}; load it with "
          f"transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")


def cmd_import(args) -> None:
    from .hf_import import import_hf

    out = import_hf(args.hf_dir, args.out)
    print(f"imported {args.hf_dir} into the run folder {out}; try: banglaslm generate {out} --prompt \"...\"")


def cmd_lm_eval_task(args) -> None:
    from .lm_eval_task import write_perplexity_task

    out = write_perplexity_task(args.texts, args.out, name=args.name)
    print(f"wrote the task {args.name!r} to {out}; run: lm_eval --model hf --model_args pretrained=EXPORT_DIR "
          f"--include_path {out} --tasks {args.name}")


def cmd_serve(args) -> None:
    from .runfolder import RunFolder
    from .serve import run_server

    RunFolder(args.run_dir).require()
    print(f"serving {args.run_dir} on http://{args.host}:{args.port}/ (OpenAI API under /v1)", file=sys.stderr)
    run_server(args.run_dir, host=args.host, port=args.port, api_key=args.api_key)


def cmd_chat(args) -> None:
    from .chat import chat_loop
    from .engine import SamplingParams
    from .runfolder import load_model

    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_k=args.top_k, seed=args.seed)
    params.validate()
    chat_loop(load_model(args.run_dir, args.checkpoint), params=params)


def cmd_report(args) -> None:
    from .report import write_report

    out = write_report(args.run_dir, args.text, out_dir=args.out, which=args.checkpoint)
    print(f"wrote {out}/README.md (with plots and report.html)")


COMMANDS = {"prepare": cmd_prepare, "train": cmd_train, "eval": cmd_eval, "generate": cmd_generate,
            "quickstart": cmd_quickstart, "export": cmd_export, "import": cmd_import,
            "report": cmd_report, "serve": cmd_serve, "chat": cmd_chat, "lm-eval-task": cmd_lm_eval_task}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .trainer import TrainingInterrupted

    try:
        COMMANDS[args.command](args)
    except UserError as exc:
        print(f"banglaslm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        print(f"banglaslm {args.command}: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"banglaslm {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    return 0
