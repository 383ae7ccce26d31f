"""A self-contained report of one run: model card, plots, evaluations, samples, tokenizer study.

`write_report(run_dir, texts)` writes `RUN_DIR/report/` (or `out_dir`):

    README.md        model card: model, training summary, data, eval table, samples, tokenizer
    report.html      the same content as a simple HTML page
    report.json      every number in the card, machine-readable
    loss.png         train vs val loss per iteration
    lr.png           learning rate per iteration
    throughput.png   training tokens/s over iterations
    tokenizer.png    the run's tokenizer against a char tokenizer and byte-level BPEs

The folder is built in a temporary folder beside the target and renamed into place, so a
reader sees the old report or the new one, never half of one; a failure leaves nothing.

Tokenizer statistics are computed on a sample of normalized text: the given text files, or
(without any) every 10th file of the embedded corpus, capped at `max_sample_chars`. The
comparison tokenizers (a char tokenizer and byte-level BPE at other vocabulary sizes) are
built on that same sample, so their numbers are an optimistic "trained on what it is scored
on" reference, while the run's own tokenizer never saw the sample (unless it was in its data).

- characters per token, tokens per word (words: whitespace-separated), EOD excluded;
- single-token words: of the 1,000 most frequent Bangla words in the sample (maximal runs of
  Bengali-block letters and marks, U+0980-U+09FF, plus ZWJ/ZWNJ), the share whose encoding is
  one token: "after a space" encodes " " + word (how a word mid-sentence is seen), "bare"
  encodes the word alone (at the start of a text);
- ends inside a grapheme cluster: the share of tokens after which the text, decoded token by
  token (`token_bytes`), sits inside a grapheme cluster. The cluster rule is a simple
  Bangla-aware one (`cluster_breaks`): no break before a combining mark (categories Mn, Mc,
  Me; the hasanta is one), after a hasanta that joins a following consonant, or on either
  side of ZWJ/ZWNJ; a token ending inside a UTF-8 multi-byte character is inside too.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import statistics
import tempfile
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import UserError
from .normalize import HASANTA, ZWJ, ZWNJ, normalize
from .runfolder import RunFolder, load_model
from .tokenizer import Tokenizer

SAMPLE_PROMPTS = ("একদিন সকালে", "বাংলা ভাষা", "নদীর ধারে")
SAMPLE_SEEDS = (0,)
SAMPLE_SETTINGS = {"max_new_tokens": 60, "temperature": 0.8, "top_k": 50}
BPE_VOCAB_SIZES = (512, 2048, 8000)
TOP_WORDS = 1000
MAX_SAMPLE_CHARS = 300_000

_BANGLA_WORD_RE = re.compile("[\u0980-\u09ff\u200c\u200d]+")


# ---- grapheme clusters ---------------------------------------------------------------------
def _is_bangla_consonant(ch: str) -> bool:
    return ("\u0995" <= ch <= "\u09b9" or ch in "\u09ce\u09dc\u09dd\u09df") and unicodedata.category(ch) == "Lo"


def cluster_breaks(text: str) -> list[bool]:
    """`breaks[i]` is True when a grapheme-cluster boundary lies before `text[i]`
    (i = 0 .. len(text)); the start and the end of the text are always boundaries."""
    n = len(text)
    breaks = [True] * (n + 1)
    for i in range(1, n):
        prev, ch = text[i - 1], text[i]
        if unicodedata.category(ch) in ("Mn", "Mc", "Me"):
            breaks[i] = False
        elif ch in (ZWJ, ZWNJ) or prev in (ZWJ, ZWNJ):
            breaks[i] = False
        elif prev == HASANTA and _is_bangla_consonant(ch):
            breaks[i] = False
    return breaks


def inside_cluster_ends(tokenizer: Tokenizer, text: str, ids: list[int]) -> tuple[int, int] | None:
    """(tokens that end inside a grapheme cluster, tokens) for `ids` encoding `text`, or None
    when the tokens do not spell the text byte for byte (unknown characters, foreign kinds)."""
    pieces = [tokenizer.token_bytes(i) for i in ids if i not in tokenizer.special_ids]
    data = text.encode("utf-8")
    if b"".join(pieces) != data:
        return None
    breaks = cluster_breaks(text)
    char_at_byte = {}  # byte offset of each character start -> character index
    offset = 0
    for index, ch in enumerate(text):
        char_at_byte[offset] = index
        offset += len(ch.encode("utf-8"))
    char_at_byte[offset] = len(text)
    inside, end = 0, 0
    for piece in pieces:
        end += len(piece)
        index = char_at_byte.get(end)
        if index is None or not breaks[index]:
            inside += 1
    return inside, len(pieces)


# ---- tokenizer statistics ------------------------------------------------------------------
@dataclass
class TokenizerStats:
    name: str
    kind: str
    vocab_size: int
    chars_per_token: float
    tokens_per_word: float
    single_token_words_space: float  # share of top words encoding as one token after a space
    single_token_words_bare: float  # ... encoded alone, at the start of a text
    inside_cluster_share: float | None  # None when no document round-trips byte for byte
    tokens: int
    chars: int
    words: int
    top_words: int

    def to_dict(self) -> dict:
        return asdict(self)


def top_bangla_words(docs: list[str], n: int = TOP_WORDS) -> list[str]:
    """The `n` most frequent Bangla words (ties broken alphabetically, so it is deterministic)."""
    counts = Counter(w for doc in docs for w in _BANGLA_WORD_RE.findall(doc)
                     if not set(w) <= {ZWJ, ZWNJ})
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def tokenizer_stats(tokenizer: Tokenizer, docs: list[str], name: str, words: list[str] | None = None) -> TokenizerStats:
    """Statistics of `tokenizer` on already-normalized `docs` (see the module docstring)."""
    words = top_bangla_words(docs) if words is None else words
    tokens = chars = n_words = inside = counted = 0
    for doc, ids in zip(docs, tokenizer.encode_batch(list(docs))):
        ids = [i for i in ids if i != tokenizer.eod_id]
        tokens += len(ids)
        chars += len(doc)
        n_words += len(doc.split())
        ends = inside_cluster_ends(tokenizer, doc, ids)
        if ends is not None:
            inside += ends[0]
            counted += ends[1]
    single_space = sum(len(tokenizer.encode(" " + w, normalized=True)) == 1 for w in words)
    single_bare = sum(len(tokenizer.encode(w, normalized=True)) == 1 for w in words)
    return TokenizerStats(
        name=name, kind=tokenizer.kind, vocab_size=tokenizer.vocab_size,
        chars_per_token=chars / max(tokens, 1), tokens_per_word=tokens / max(n_words, 1),
        single_token_words_space=single_space / max(len(words), 1),
        single_token_words_bare=single_bare / max(len(words), 1),
        inside_cluster_share=inside / counted if counted else None,
        tokens=tokens, chars=chars, words=n_words, top_words=len(words),
    )


def sample_documents(texts: list[tuple[str, str]] | None = None, max_chars: int = MAX_SAMPLE_CHARS) -> list[str]:
    """Normalized documents (paragraphs) for the tokenizer study, at most `max_chars` in all:
    from `texts` ((name, raw text) pairs) or else every 10th file of the embedded corpus."""
    if not texts:
        from .corpus import corpus_files

        texts = [(str(p), p.read_text(encoding="utf-8")) for p in corpus_files()[::10]]
    docs, total = [], 0
    for _, raw in texts:
        for para in raw.replace("\r\n", "\n").split("\n\n"):
            para = normalize(para)
            if not para:
                continue
            if total + len(para) > max_chars:
                para = para[: max_chars - total].rstrip()
            if para:
                docs.append(para)
                total += len(para)
            if total >= max_chars:
                return docs
    return docs


def compare_tokenizers(run_tokenizer: Tokenizer, docs: list[str],
                       bpe_vocab_sizes: tuple[int, ...] = BPE_VOCAB_SIZES) -> list[TokenizerStats]:
    """The run's tokenizer, a char tokenizer and byte-level BPEs, all measured on `docs`."""
    if not docs:
        raise UserError("no text to measure the tokenizers on (the sample is empty)")
    words = top_bangla_words(docs)
    out = [tokenizer_stats(run_tokenizer, docs, f"run ({run_tokenizer.kind} {run_tokenizer.vocab_size})", words)]
    char = Tokenizer.build_char(ch for doc in docs for ch in doc)
    out.append(tokenizer_stats(char, docs, f"char ({char.vocab_size})", words))
    for size in bpe_vocab_sizes:
        if run_tokenizer.kind == "bpe" and size == run_tokenizer.vocab_size:
            continue
        bpe = Tokenizer.train_bpe(docs, size)
        label = f"bpe {size}" + (f" (got {bpe.vocab_size})" if bpe.vocab_size != size else "")
        out.append(tokenizer_stats(bpe, docs, label, words))
    return out


# ---- training summary ----------------------------------------------------------------------
def read_metrics(path: Path) -> list[dict]:
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


def training_summary(records: list[dict], config, iterations: int, world_size: int = 1) -> dict:
    steps = [r for r in records if "split" not in r]
    evals = {s: [r for r in records if r.get("split") == s] for s in ("train", "val")}
    rates = [r["tokens_per_s"] for r in steps if r.get("iter", 0) > 0 and r.get("tokens_per_s")] or \
        [r["tokens_per_s"] for r in steps if r.get("tokens_per_s")]
    tc = config.train
    per_step = tc.batch_size * tc.grad_accum_steps * config.model.block_size * world_size
    val_losses = [r["loss"] for r in evals["val"]]
    return {
        "iterations": iterations,
        "best_val_loss": min(val_losses) if val_losses else None,
        "final_train_loss": evals["train"][-1]["loss"] if evals["train"] else None,
        "final_val_loss": evals["val"][-1]["loss"] if evals["val"] else None,
        "final_eval_iter": evals["val"][-1]["iter"] if evals["val"] else None,
        "tokens_per_step": per_step,
        "tokens_seen": iterations * per_step,
        "median_tokens_per_s": statistics.median(rates) if rates else None,
        "skipped_updates": max((r.get("skipped_updates", 0) for r in steps), default=0),
    }


# ---- plots ---------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png")
    _plt().close(fig)


def _empty_note(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} recorded", ha="center", va="center", transform=ax.transAxes)


def plot_loss(records: list[dict], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    steps = [r for r in records if "split" not in r and "loss" in r]
    if steps:
        ax.plot([r["iter"] for r in steps], [r["loss"] for r in steps], lw=0.8, alpha=0.4,
                color="tab:blue", label="train (per step)")
    for split, color in (("train", "tab:blue"), ("val", "tab:orange")):
        ev = [r for r in records if r.get("split") == split]
        if ev:
            ax.plot([r["iter"] for r in ev], [r["loss"] for r in ev], lw=2, marker="o", ms=3,
                    color=color, label=f"{split} (evaluation)")
    if not records:
        _empty_note(ax, "losses")
    else:
        ax.legend()
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title("loss")
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_series(records: list[dict], key: str, ylabel: str, title: str, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    pts = [(r["iter"], r[key]) for r in records if "split" not in r and r.get(key) is not None]
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.5, marker=".", color="tab:green")
    else:
        _empty_note(ax, ylabel)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_tokenizers(stats: list[TokenizerStats], path: Path) -> None:
    plt = _plt()
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
    _save(fig, path)


# ---- the report ----------------------------------------------------------------------------
def _fmt(value, spec: str = ".4f") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, spec)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _read_texts(texts) -> list[tuple[str, str]]:
    from .sources import read_text_file

    out = []
    for t in texts:
        path = Path(t)
        if not path.is_file():
            raise UserError(f"text file not found: {path}")
        out.append((str(path), "\n\n".join(read_text_file(str(path), "file"))))
    return out


def write_report(run_dir: str | Path, texts=(), out_dir: str | Path | None = None, which: str = "best", *,
                 bpe_vocab_sizes: tuple[int, ...] = BPE_VOCAB_SIZES, max_sample_chars: int = MAX_SAMPLE_CHARS,
                 prompts: tuple[str, ...] = SAMPLE_PROMPTS, seeds: tuple[int, ...] = SAMPLE_SEEDS,
                 html_page: bool = True) -> Path:
    """Write the report folder for the run in `run_dir` and return its path."""
    from .checkpoint import load_checkpoint
    from .evaluate import evaluate_text
    from .fileio import read_json
    from .generate import SamplingConfig, generate

    run = RunFolder(run_dir)
    run.require()
    raw_texts = _read_texts(texts)  # every input is checked before anything is written
    loaded = load_model(run.path, which)
    out = Path(out_dir) if out_dir is not None else run.path / "report"
    _check_out_dir(out, run.path)
    try:
        data_meta = read_json(run.data_meta_path) if run.data_meta_path.is_file() else None
    except ValueError as exc:
        raise UserError(f"{run.data_meta_path} is not valid JSON ({exc})") from None

    cfg = loaded.config
    latest = run.checkpoint("latest")
    state = load_checkpoint(latest, weights_only=True).state if latest.is_file() else {}
    iterations = int(state.get("iter", loaded.iteration))
    records = read_metrics(run.metrics_path)
    summary = training_summary(records, cfg, iterations, int(state.get("world_size", 1)))
    if summary["best_val_loss"] is None and "best_val" in state:
        summary["best_val_loss"] = float(state["best_val"])

    evals = [evaluate_text(loaded, raw, name=name) for name, raw in raw_texts]
    samples = []
    for prompt in prompts:
        for seed in seeds:
            g = generate(loaded, prompt, SamplingConfig(seed=seed, **SAMPLE_SETTINGS))
            samples.append({"prompt": prompt, "seed": seed, "text": g.text, "tokens": g.tokens})
    docs = sample_documents(raw_texts, max_sample_chars)
    tok_stats = compare_tokenizers(loaded.tokenizer, docs, bpe_vocab_sizes)
    sample_source = "the given text files" if raw_texts else "every 10th file of the embedded corpus"

    model = loaded.model
    info = {
        "run_dir": str(run.path), "checkpoint": loaded.checkpoint.name, "checkpoint_iter": loaded.iteration,
        "model": {**asdict(cfg.model), "parameters": model.num_params(),
                  "non_embedding_parameters": model.num_params(exclude_embeddings=True)},
        "tokenizer": {"kind": loaded.tokenizer.kind, "vocab_size": loaded.tokenizer.vocab_size,
                      "sha256": loaded.tokenizer.sha256},
        "training": summary, "train_config": asdict(cfg.train),
        "data": data_meta, "evaluations": [e.to_dict() for e in evals], "samples": samples,
        "sampling": SAMPLE_SETTINGS,
        "tokenizer_study": {"sample": sample_source, "documents": len(docs),
                            "chars": sum(map(len, docs)), "stats": [s.to_dict() for s in tok_stats]},
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        plot_loss(records, tmp / "loss.png")
        plot_series(records, "lr", "learning rate", "learning rate schedule", tmp / "lr.png")
        plot_series(records, "tokens_per_s", "tokens/s", "training throughput", tmp / "throughput.png")
        plot_tokenizers(tok_stats, tmp / "tokenizer.png")
        markdown = render_markdown(info)
        (tmp / "README.md").write_text(markdown, encoding="utf-8")
        (tmp / "report.json").write_text(json.dumps(info, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        if html_page:
            (tmp / "report.html").write_text(markdown_to_html(markdown, "banglaslm run report"), encoding="utf-8")
        os.chmod(tmp, 0o777 & ~_umask())
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_out_dir(out: Path, run_dir: Path) -> None:
    """Refuse to replace anything but an earlier report (never the run folder itself)."""
    resolved, run = out.resolve(), run_dir.resolve()
    if resolved == run or resolved in run.parents:
        raise UserError(f"{out} holds the run folder; write the report to a folder of its own")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder; choose another output folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "report.json").is_file():
        raise UserError(f"{out} is a non-empty folder that is not a banglaslm report; "
                        "choose another output folder (an existing report is replaced)")


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`, replacing an existing report folder."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder; choose another output folder")
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.rmdir(old)
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def render_markdown(info: dict) -> str:
    m, t, tr = info["model"], info["tokenizer"], info["training"]
    L = [f"# Model card: {Path(info['run_dir']).name}", ""]
    L += ["## Model", "",
          f"A {'modern (RoPE, RMSNorm, SwiGLU, tied embeddings)' if m['arch'] == 'modern' else 'course GPT (learned positions, LayerNorm, GELU)'} "
          f"decoder-only transformer (`arch = {m['arch']}`), trained with banglaslm.", "",
          "| property | value |", "|---|---|",
          f"| architecture | {m['arch']} |", f"| layers | {m['n_layer']} |", f"| heads | {m['n_head']} |",
          f"| width (n_embd) | {m['n_embd']} |", f"| block size (context) | {m['block_size']} |",
          f"| parameters | {m['parameters']:,} |",
          f"| non-embedding parameters | {m['non_embedding_parameters']:,} |",
          f"| vocabulary | {t['vocab_size']:,} |", f"| tokenizer | {t['kind']} |",
          f"| dropout | {m['dropout']} |",
          f"| checkpoint | {info['checkpoint']} (iteration {info['checkpoint_iter']}) |", ""]
    L += ["## Training", "",
          "| quantity | value |", "|---|---|",
          f"| iterations | {tr['iterations']:,} |",
          f"| best val loss | {_fmt(tr['best_val_loss'])} |",
          f"| final train loss (eval) | {_fmt(tr['final_train_loss'])} |",
          f"| final val loss (eval) | {_fmt(tr['final_val_loss'])} |",
          f"| tokens per step | {tr['tokens_per_step']:,} |",
          f"| tokens seen | {tr['tokens_seen']:,} |",
          f"| median tokens/s | {_fmt(tr['median_tokens_per_s'], ',.0f')} |",
          f"| skipped updates | {tr['skipped_updates']} |",
          f"| peak learning rate | {info['train_config']['learning_rate']} |",
          f"| batch size x accumulation | {info['train_config']['batch_size']} x {info['train_config']['grad_accum_steps']} |",
          "", "![loss](loss.png)", "", "![learning rate](lr.png)", "", "![throughput](throughput.png)", ""]
    L += ["## Data", ""]
    data = info["data"]
    if data and isinstance(data.get("splits"), dict):
        L += [f"Normalization `{data.get('normalization', '?')}`, documents split by "
              f"`{data.get('doc_split', '?')}`, validation fraction {data.get('val_fraction', '?')}.", "",
              "| split | documents | characters | tokens | characters/token |", "|---|---:|---:|---:|---:|"]
        for split, s in data["splits"].items():
            L.append(f"| {split} | {s.get('documents', 0):,} | {s.get('chars', 0):,} | {s.get('tokens', 0):,} | "
                     f"{s.get('chars', 0) / max(s.get('tokens', 0), 1):.3f} |")
        L.append("")
    else:
        L += ["No data_meta.json in the run folder.", ""]
    L += ["## Evaluation", ""]
    if info["evaluations"]:
        L += ["Every token scored once with up to a block of context; bits per byte/char count the normalized text.", "",
              "| file | loss | perplexity | bits per byte | bits per char | tokens |", "|---|---:|---:|---:|---:|---:|"]
        for e in info["evaluations"]:
            L.append(f"| {_cell(Path(e['file']).name)} | {_fmt(e['loss'], '.6f')} | {_fmt(e['perplexity'], '.6f')} | "
                     f"{_fmt(e['bits_per_byte'], '.6f')} | {_fmt(e['bits_per_char'], '.6f')} | {e['tokens']} |")
        L.append("")
    else:
        L += ["No text files were given to evaluate on.", ""]
    s = info["sampling"]
    L += ["## Samples", "",
          f"{s['max_new_tokens']} new tokens, temperature {s['temperature']}, top-k {s['top_k']}; fixed seeds, "
          "so the same checkpoint gives the same text.", ""]
    for smp in info["samples"]:
        body = (smp["prompt"] + smp["text"]).replace("```", "'''")
        L += [f"**Prompt** `{smp['prompt']}` (seed {smp['seed']}, {smp['tokens']} tokens):", "", "```text", body, "```", ""]
    ts = info["tokenizer_study"]
    L += ["## Tokenizer", "",
          f"Measured on {ts['documents']:,} normalized documents ({ts['chars']:,} characters) from {ts['sample']}. "
          "The char tokenizer and the byte-level BPEs are built on this same sample (an optimistic reference); "
          "words are whitespace-separated; the top words are the 1,000 most frequent Bangla words "
          "(Bengali-block letters and marks). \"After a space\" encodes `\" \" + word` (a word mid-sentence), "
          "\"bare\" encodes the word alone (at the start of a text). A token \"ends inside a grapheme cluster\" when "
          "the text decoded up to it ends mid-character or before a combining mark, after a hasanta joining a "
          "consonant, or next to ZWJ/ZWNJ."
          + (" The embedded corpus is the quick start's training data, so for a run trained on it this sample is "
             "not held out." if ts["sample"].startswith("every 10th") else ""), "",
          "| tokenizer | vocab | chars/token | tokens/word | top words as 1 token (after a space) | "
          "top words as 1 token (bare) | tokens ending inside a cluster |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    for st in ts["stats"]:
        L.append(f"| {_cell(st['name'])} | {st['vocab_size']:,} | {st['chars_per_token']:.3f} | {st['tokens_per_word']:.3f} | "
                 f"{st['single_token_words_space']:.1%} | {st['single_token_words_bare']:.1%} | "
                 f"{'n/a' if st['inside_cluster_share'] is None else format(st['inside_cluster_share'], '.1%')} |")
    L += ["", "![tokenizer comparison](tokenizer.png)", ""]
    return "\n".join(L)


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
