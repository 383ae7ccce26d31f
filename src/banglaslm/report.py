"""`banglaslm report`: a self-contained model card for one run.

`write_report(run_dir, texts)` writes RUN_DIR/report/ (or `out_dir`): README.md (model,
training summary, data, evaluations on the given texts, samples from fixed prompts and seeds,
the tokenizer study), report.html, report.json (every number), and loss.png, lr.png,
throughput.png, tokenizer.png. The folder is built beside its target and renamed into place.
"""

from __future__ import annotations

import html
import json
import math
import re
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

from .chat_template import chat_stops, clean_answer, encode_chat
from .checkpoint import load_checkpoint
from .config import SamplingParams
from .data.conversations import CONVERSATIONS_FORMAT
from .errors import UserError
from .evaluation.perplexity import evaluate_documents, read_texts
from .evaluation.tokenizer_study import (
    BPE_VOCAB_SIZES,
    MAX_SAMPLE_CHARS,
    TokenizerStats,
    compare_tokenizers,
    sample_documents,
)
from .fileio import check_destination, read_json_or_fail, staged_folder
from .generation.engine import Engine, generate
from .runfolder import RunFolder, Which, load_model
from .training.health import unjudged
from .training.metrics import plot_loss, plot_series, pyplot, read_metrics, save_figure

SAMPLE_PROMPTS = ("একদিন সকালে", "বাংলা ভাষা", "নদীর ধারে")
# A fine-tuned run is asked questions in the chat template instead (its data is conversations).
CHAT_PROMPTS = ("বর্ষাকালে নদীর পাড়ে কী দেখা যায়?", "সকালে হাঁটার দুটি উপকারিতা বলো।", "একটি ছোট কবিতা লেখো।")
SAMPLE_SEEDS = (0,)
SAMPLE_SETTINGS = {"max_new_tokens": 60, "temperature": 0.8, "top_k": 50}


# ---- training summary ----------------------------------------------------------------------
def training_summary(records: list[dict], config, iterations: int, world_size: int = 1) -> dict:
    steps = [r for r in records if "split" not in r and "event" not in r]
    evals = {s: [r for r in records if r.get("split") == s] for s in ("train", "val")}
    rates = [r["tokens_per_s"] for r in steps if r.get("iter", 0) > 0 and r.get("tokens_per_s")] or \
        [r["tokens_per_s"] for r in steps if r.get("tokens_per_s")]
    tc = config.train
    per_step = tc.batch_size * tc.grad_accum_steps * config.model.block_size * world_size
    val_losses = [r["loss"] for r in evals["val"]]
    return {
        "iterations": iterations,
        "planned_iterations": None if tc.time_limit_min else tc.max_iters,  # a time limit's schedule is its clock
        "best_val_loss": min(val_losses) if val_losses else None,
        "final_train_loss": evals["train"][-1]["loss"] if evals["train"] else None,
        "final_val_loss": evals["val"][-1]["loss"] if evals["val"] else None,
        "final_eval_iter": evals["val"][-1]["iter"] if evals["val"] else None,
        "evaluations": len(evals["val"]),
        "tokens_per_step": per_step,
        "tokens_seen": iterations * per_step,
        "median_tokens_per_s": statistics.median(rates) if rates else None,
        "skipped_updates": max((r.get("skipped_updates", 0) for r in steps), default=0),
        "warnings": [r for r in records if "event" in r],
    }


# ---- plots ---------------------------------------------------------------------------------
def plot_tokenizers(stats: list[TokenizerStats], path: Path) -> None:
    plt = pyplot()
    panels = [("chars_per_token", "characters / token"), ("tokens_per_word", "tokens / word"),
              ("single_token_words_space", "top words as 1 token\n(after a space)"),
              ("inside_cluster_share", "tokens ending inside\na grapheme cluster")]
    fig, axes = plt.subplots(1, len(panels), figsize=(13, 3.8), dpi=100)
    names = [s.name for s in stats]
    colors = ["tab:red"] + ["tab:gray"] + ["tab:blue"] * (len(stats) - 2)
    for ax, (key, label) in zip(axes, panels):
        values = [getattr(s, key) for s in stats]
        ax.bar(range(len(stats)), [v if v is not None else 0 for v in values], color=colors[:len(stats)])
        for x, v in enumerate(values):
            ax.text(x, v or 0, "n/a" if v is None else f"{v:.2f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(stats)))
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    save_figure(fig, path)


# ---- the report ----------------------------------------------------------------------------
def _fmt(value, spec: str = ".4f") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, spec)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _check_out_dir(out: Path, run_dir: Path) -> None:
    """Never the run folder itself (or a folder holding it)."""
    resolved, run = out.resolve(), run_dir.resolve()
    if resolved == run or resolved in run.parents:
        raise UserError(f"{out} holds the run folder; write the report to a folder of its own")


REPORT_FILES = {"README.md", "report.html", "report.json", "loss.png", "lr.png", "throughput.png", "tokenizer.png"}


def _is_report(folder: Path) -> bool:
    """An earlier report, and nothing else, which a new report may replace."""
    return (folder / "report.json").is_file() and {p.name for p in folder.iterdir()} <= REPORT_FILES


def write_report(run_dir: str | Path, texts=(), out_dir: str | Path | None = None, which: Which = "best", *,
                 bpe_vocab_sizes: tuple[int, ...] = BPE_VOCAB_SIZES, max_sample_chars: int = MAX_SAMPLE_CHARS,
                 prompts: tuple[str, ...] | None = None, seeds: tuple[int, ...] = SAMPLE_SEEDS,
                 html_page: bool = True, text_column: str | None = None) -> Path:
    """Write the report folder for the run in `run_dir` (replacing an earlier report) and
    return its path. Every input is checked before anything is computed or written. `prompts`:
    SAMPLE_PROMPTS to continue, or for a fine-tuned run CHAT_PROMPTS to answer in the chat template.
    `texts`: text files, or tables whose `text_column` rows are documents (as `evaluate_file`)."""
    run = RunFolder(run_dir)
    run.require()
    raw_texts = read_texts(texts, text_column)  # (name, documents): a table's rows, a text file whole
    loaded = load_model(run.path, which)
    out = Path(out_dir) if out_dir is not None else run.path / "report"
    _check_out_dir(out, run.path)
    check_destination(out, "report folder", replaceable=_is_report)
    records = read_metrics(run.metrics_path)
    info = _report_info(run, loaded, raw_texts, records, prompts, seeds)
    docs = sample_documents([(name, "\n\n".join(documents)) for name, documents in raw_texts], max_sample_chars)
    tok_stats = compare_tokenizers(loaded.tokenizer, docs, bpe_vocab_sizes)
    info["tokenizer_study"] = {
        "sample": "the given text files" if raw_texts else "every 10th file of the embedded corpus",
        "documents": len(docs), "chars": sum(map(len, docs)), "stats": [s.to_dict() for s in tok_stats]}
    with staged_folder(out, "report folder", replaceable=_is_report) as tmp:
        if records:  # an imported model was not trained here: no plots of nothing
            plot_loss(records, tmp / "loss.png")
            plot_series(records, "lr", "learning rate", "learning rate schedule", tmp / "lr.png")
            plot_series(records, "tokens_per_s", "tokens/s", "training throughput", tmp / "throughput.png")
        plot_tokenizers(tok_stats, tmp / "tokenizer.png")
        markdown = render_markdown(info)
        (tmp / "README.md").write_text(markdown, encoding="utf-8")
        (tmp / "report.json").write_text(json.dumps(info, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        if html_page:
            (tmp / "report.html").write_text(markdown_to_html(markdown, "banglaslm run report"), encoding="utf-8")
    return out


def _sample(loaded, prompt: str, seed: int) -> dict:
    g = generate(loaded, prompt, SamplingParams(seed=seed, **SAMPLE_SETTINGS))
    return {"text": g.text, "tokens": g.tokens}


def _chat_sample(loaded, prompt: str, seed: int) -> dict:
    """The answer to `prompt` as `chat` and the server get it: in the chat template, stopped at
    the end of the turn."""
    context, _ = encode_chat(loaded.tokenizer, [{"role": "user", "content": prompt}])
    params = SamplingParams(seed=seed, stop=chat_stops(tokenizer=loaded.tokenizer), **SAMPLE_SETTINGS)
    [[answer]] = Engine(loaded).generate_ids([context], params)
    return {"text": clean_answer(answer.text), "tokens": len(answer.token_ids)}


def _report_info(run: RunFolder, loaded, raw_texts, records, prompts, seeds) -> dict:
    """Every number of the card but the tokenizer study: model, training, data, evals, samples."""
    data_meta = read_json_or_fail(run.data_meta_path) if run.data_meta_path.is_file() else None
    cfg = loaded.config
    latest = run.checkpoint("latest")
    state = load_checkpoint(latest, weights_only=True).state if latest.is_file() else {}
    summary = training_summary(records, cfg, int(state.get("iter", loaded.iteration)), int(state.get("world_size", 1)))
    # A run with no evaluation yet stores inf as its best, an imported one the largest float (JSON has no inf).
    if summary["best_val_loss"] is None and float(state.get("best_val", math.inf)) < sys.float_info.max:
        summary["best_val_loss"] = float(state["best_val"])
    evals = [evaluate_documents(loaded, documents, name, None) for name, documents in raw_texts]
    chat = (data_meta or {}).get("format") == CONVERSATIONS_FORMAT
    sample = _chat_sample if chat else _sample
    samples = [{"prompt": prompt, "seed": seed, "chat": chat, **sample(loaded, prompt, seed)}
               for prompt in (prompts if prompts is not None else CHAT_PROMPTS if chat else SAMPLE_PROMPTS)
               for seed in seeds]
    model = loaded.model
    return {
        "run_dir": str(run.path), "checkpoint": loaded.checkpoint.name, "checkpoint_iter": loaded.iteration,
        "model": {**asdict(cfg.model), "tied_head": cfg.model.tied_head, "parameters": model.num_params(),
                  "non_embedding_parameters": model.num_params(exclude_embeddings=True)},
        "tokenizer": {"kind": loaded.tokenizer.kind, "vocab_size": loaded.tokenizer.vocab_size,
                      "sha256": loaded.tokenizer.sha256},
        "training": summary, "train_config": asdict(cfg.train),
        "started_from": state.get("init_from"), "imported_from": state.get("imported_from"),
        "lora_rank": cfg.finetune.lora_rank,
        "data": data_meta, "evaluations": [e.to_dict() for e in evals], "samples": samples,
        "sampling": SAMPLE_SETTINGS,
    }


def render_markdown(info: dict) -> str:
    """The model card (README.md) for a report's `info`."""
    lines = [f"# Model card: {Path(info['run_dir']).name}", ""]
    for section in (_model_section, _training_section, _data_section, _evaluation_section, _samples_section,
                    _tokenizer_section):
        lines += section(info)
    return "\n".join(lines)


def _model_section(info: dict) -> list[str]:
    m, t = info["model"], info["tokenizer"]
    return ["## Model", "",
          f"A {'modern (RoPE, RMSNorm, SwiGLU' if m['arch'] == 'modern' else 'course GPT (learned positions, LayerNorm, GELU'}"
          f"{', tied embeddings)' if m['tied_head'] else ', untied output head)'} "
          f"decoder-only transformer (`arch = {m['arch']}`), " + (
              f"imported from Hugging Face (`{_cell(str(info['imported_from'].get('model_type')))}`)."
              if info.get("imported_from") else "trained with banglaslm."), "",
          "| property | value |", "|---|---|",
          f"| architecture | {m['arch']} |", f"| layers | {m['n_layer']} |", f"| heads | {m['n_head']} |",
          f"| width (n_embd) | {m['n_embd']} |", f"| block size (context) | {m['block_size']} |",
          f"| parameters | {m['parameters']:,} |",
          f"| non-embedding parameters | {m['non_embedding_parameters']:,} |",
          f"| vocabulary | {t['vocab_size']:,} |", f"| tokenizer | {t['kind']} |",
          f"| dropout | {m['dropout']} |",
          f"| checkpoint | {info['checkpoint']} (iteration {info['checkpoint_iter']}) |", ""]


def _iterations(tr: dict) -> str:
    """The iterations trained, and the planned total when the run stopped before it (a Ctrl-C or
    early stopping: its learning rate had not finished its decay)."""
    planned = tr.get("planned_iterations")
    if not planned or tr["iterations"] >= planned:
        return f"{tr['iterations']:,}"
    return f"{tr['iterations']:,} of {planned:,} planned (it stopped before its end)"


def _shown_path(path: object) -> str:
    """A folder's name, not its path on this machine: a model card is written to be shared."""
    return Path(str(path)).name if path else "?"


def _training_section(info: dict) -> list[str]:
    tr, imported, start = info["training"], info.get("imported_from"), info.get("started_from")
    if imported and not tr["iterations"]:
        return ["## Training", "", f"Imported from the Hugging Face folder `{_cell(_shown_path(imported.get('path')))}` "
                f"(`{imported.get('model_type')}`), not trained here: no training record.", ""]
    origin = [f"Started from the weights of `{_cell(_shown_path(start.get('path')))}` (its step {start.get('iter')})"
              + (f", training LoRA adapters of rank {info['lora_rank']}" if info.get("lora_rank") else "") + ".", ""] \
        if start else []
    return ["## Training", "", *origin,
          "| quantity | value |", "|---|---|",
          f"| iterations | {_iterations(tr)} |",
          f"| best val loss | {_fmt(tr['best_val_loss'])} |",
          f"| final train loss (eval) | {_fmt(tr['final_train_loss'])} |",
          f"| final val loss (eval) | {_fmt(tr['final_val_loss'])} |",
          f"| tokens per step | {tr['tokens_per_step']:,} |",
          f"| tokens seen | {tr['tokens_seen']:,} |",
          f"| median tokens/s | {_fmt(tr['median_tokens_per_s'], ',.0f')} |",
          f"| skipped updates | {tr['skipped_updates']} |",
          f"| peak learning rate | {info['train_config']['learning_rate']} |",
          f"| batch size x accumulation | {info['train_config']['batch_size']} x {info['train_config']['grad_accum_steps']} |",
          "", *_warnings(tr.get("warnings", []), tr.get("evaluations")),
          "![loss](loss.png)", "", "![learning rate](lr.png)", "", "![throughput](throughput.png)", ""]


def _warnings(events: list[dict], evaluations: int | None) -> list[str]:
    """The warning signs the trainer noticed (training/health.py), marked on the loss plot too,
    and the ones the run had too few evaluations to show."""
    short = unjudged(evaluations) if evaluations is not None else {}
    caveat = [f"With {evaluations} evaluations the run was too short to judge "
              + ", ".join(f"{kind} (needs {n})" for kind, n in short.items())
              + ": evaluate more often (train.eval_interval).", ""] if short else []
    if not events:
        return ["No warning signs (overfitting, underfitting, instability, leakage) were noticed.", "", *caveat]
    return ["Warning signs noticed during training (dashed red lines on the loss plot):", "",
            *(f"- step {e['iter']}: **{e['event']}** since step {e['since']}: {_cell(e['evidence'])}; "
              f"{_cell(e['advice'])}" for e in events), "", *caveat]


def _data_section(info: dict) -> list[str]:
    L = ["## Data", ""]
    data = info["data"]
    if data and data.get("format") == "banglaslm-conversations":
        return L + _conversations_lines(data)
    if data and isinstance(data.get("splits"), dict):
        unit = {"file": "whole file"}.get(data.get("doc_split"), data.get("doc_split", "?"))
        L += [f"Normalization `{data.get('normalization', '?')}`; one document is a {unit} of a text file or "
              f"a row of a table; validation fraction {data.get('val_fraction', '?')}.", "",
              "| split | documents | characters | tokens | characters/token |", "|---|---:|---:|---:|---:|"]
        for split, s in data["splits"].items():  # a mixture's pooled ratio is weighted as windows are drawn
            ratio = s.get("chars_per_token") or s.get("chars", 0) / max(s.get("tokens", 0), 1)
            L.append(f"| {split} | {s.get('documents', 0):,} | {s.get('chars', 0):,} | {s.get('tokens', 0):,} | "
                     f"{ratio:.3f} |")
        L += ["", *_mixture_lines(data.get("mixture"))]
    elif info.get("imported_from"):
        L += ["Imported: what it was trained on is not recorded here.", ""]
    else:
        L += ["No data_meta.json in the run folder.", ""]
    return L


def _mixture_lines(parts: list[dict] | None) -> list[str]:
    """A mixture's folders and the share of training windows drawn from each."""
    if not parts:
        return []
    shares = ", ".join(f"`{_cell(p['name'])}` {p['weight']:.3g}" for p in parts)
    return [f"A mixture of {len(parts)} data folders, training windows drawn by weight: {shares}. Its train and val "
            "rows pool the folders (characters/token weighted as windows are drawn); `val/NAME` is one folder's.", ""]


def _conversations_lines(data: dict) -> list[str]:
    """A fine-tuning run's data: conversations in the chat template, packed into blocks."""
    sources = ", ".join(f"`{_cell(Path(s).name)}`" for s in data.get("sources", [])) or "?"
    L = [f"Fine-tuned on conversations from {sources} in the chat template `{data.get('chat_template')}`, packed "
         f"into blocks of {data.get('block_size')} tokens, loss on the {data.get('loss_on')} tokens; validation "
         f"fraction {data.get('val_fraction')} (held-out conversations).", "",
         "| split | conversations | blocks | tokens | tokens with loss | padding |", "|---|---:|---:|---:|---:|---:|"]
    for split, s in data["splits"].items():
        L.append(f"| {split} | {s.get('conversations', 0):,} | {s.get('blocks', 0):,} | {s.get('tokens', 0):,} | "
                 f"{s.get('trained', 0):,} | {s.get('padding_share', 0):.1%} |")
    return L + [""]


def _evaluation_section(info: dict) -> list[str]:
    L = ["## Evaluation", ""]
    if info["evaluations"]:
        L += ["Every token scored once with up to a block of context; bits per byte/char count the normalized text.", "",
              "| file | loss | perplexity | bits per byte | bits per char | tokens | unknown tokens |",
              "|---|---:|---:|---:|---:|---:|---:|"]
        for e in info["evaluations"]:
            L.append(f"| {_cell(Path(e['file']).name)} | {_fmt(e['loss'], '.4f')} | {_fmt(e['perplexity'], '.2f')} | "
                     f"{_fmt(e['bits_per_byte'], '.4f')} | {_fmt(e['bits_per_char'], '.4f')} | {e['tokens']} | "
                     f"{e.get('unknown_share', 0):.2%} |")
        L.append("")
    else:
        L += ["No text files were given to evaluate on.", ""]
    return L


def _visible(text: str) -> str:
    """Control characters (a barely trained or imported model writes NUL and the like) as \\xNN:
    raw in README.md they make it a binary file to grep and break renderers."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f]")


def _samples_section(info: dict) -> list[str]:
    s = info["sampling"]
    L = ["## Samples", "",
          f"{s['max_new_tokens']} new tokens, temperature {s['temperature']}, top-k {s['top_k']}; fixed seeds, "
          "so the same checkpoint gives the same text.", ""]
    for smp in info["samples"]:
        if smp.get("chat"):  # a fine-tuned run's answer to a question
            L += [f"**Question** `{_visible(smp['prompt'])}` (seed {smp['seed']}, {smp['tokens']} tokens), the answer:",
                  "", "```text", _visible(smp["text"]).replace("```", "'''"), "```", ""]
            continue
        body = _visible(smp["prompt"] + smp["text"]).replace("```", "'''")
        L += [f"**Prompt** `{_visible(smp['prompt'])}` (seed {smp['seed']}, {smp['tokens']} tokens):", "", "```text", body, "```", ""]
    return L


def _tokenizer_section(info: dict) -> list[str]:
    ts = info["tokenizer_study"]
    L = ["## Tokenizer", "",
          f"Measured on {ts['documents']:,} normalized documents ({ts['chars']:,} characters) from {ts['sample']}. "
          "The char tokenizer, the byte-level BPEs and the SentencePiece unigram (the kind the course uses, "
          "of the run's vocabulary size) are built on this same sample (an optimistic reference); "
          "words are whitespace-separated; the top words are the 1,000 most frequent Bangla words "
          "(Bengali-block letters and marks). \"After a space\" encodes `\" \" + word` (a word mid-sentence), "
          "\"bare\" encodes the word alone (at the start of a text). A token \"ends inside a grapheme cluster\" when "
          "the text decoded up to it ends mid-character, or where the next character joins the one before it "
          "(a combining mark, a joiner, a letter after a hasanta: the rule streaming uses, docs/data.md)."
          + (" The embedded corpus is the quick start's training data, so for a run trained on it this sample is "
             "not held out." if ts["sample"].startswith("every 10th") else ""), "",
          "| tokenizer | vocab | chars/token | tokens/word | top words as 1 token (after a space) | "
          "top words as 1 token (bare) | tokens ending inside a cluster | unknown tokens |",
          "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for st in ts["stats"]:
        L.append(f"| {_cell(st['name'])} | {st['vocab_size']:,} | {st['chars_per_token']:.3f} | {st['tokens_per_word']:.3f} | "
                 f"{st['single_token_words_space']:.1%} | {st['single_token_words_bare']:.1%} | "
                 f"{'n/a' if st['inside_cluster_share'] is None else format(st['inside_cluster_share'], '.1%')} | "
                 f"{st['unknown_share']:.2%} |")
    return L + ["", "![tokenizer comparison](tokenizer.png)", ""]


# ---- a tiny Markdown -> HTML for the subset render_markdown writes --------------------------
_IMG_RE = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)$")


def _inline(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def markdown_to_html(markdown: str, title: str) -> str:
    out = ["<!doctype html>", '<html><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
           "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em}"
           "pre{background:#f4f4f4;padding:.5em;white-space:pre-wrap}img{max-width:100%}</style>",
           "</head><body>"]
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            out.append("<pre>" + html.escape("\n".join(lines[i + 1:j])) + "</pre>")
            i = j + 1
            continue
        if line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(lines[i])
                i += 1
            cells = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", r)[1:-1]] for r in rows]
            out.append("<table>")
            out.append("<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in cells[0]) + "</tr>")
            for row in cells[2:]:
                out.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>")
            out.append("</table>")
            continue
        img = _IMG_RE.match(line)
        if img:
            out.append(f'<p><img src="{html.escape(img.group(2))}" alt="{html.escape(img.group(1))}"></p>')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    out.append("</body></html>")
    return "\n".join(out) + "\n"
