"""Evaluation of a trained model on any text: loss, perplexity, bits per byte and per character.

Every token is scored exactly once, with as much context as the block allows: windows of
`block_size` tokens advance by `stride`, and each window scores only the tokens the previous
one did not, so after the first window every token sees at least `block_size - stride` tokens
of context. The text is treated as one document: it is preceded by the end-of-document token,
as every training document was.

Loss per token depends on the tokenizer; bits per byte and per character do not, so they
compare runs with different tokenizers. Both count the *normalized* text.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..config import Opt, checked_arguments, show_progress
from ..data.sources import is_text_file, iter_documents, read_whole_text, resolve_inputs
from ..errors import UserError, bad_param, wrong_kind
from ..model import evaluating
from ..runfolder import LoadedModel, check_loaded
from ..text import normalize
from ..tokenizer import MAX_UNKNOWN_SHARE, Coverage


@dataclass
class EvalResult:
    file: str
    loss: float
    perplexity: float
    bits_per_byte: float
    bits_per_char: float
    tokens: int
    chars: int
    unknown_share: float = 0.0        # tokens the tokenizer could not represent (text lost)
    byte_fallback_share: float = 0.0  # tokens spelling a character byte by byte

    def to_dict(self) -> dict:
        return asdict(self)

    def warnings(self) -> list[str]:
        """What makes these figures mislead (one line each)."""
        if self.unknown_share <= MAX_UNKNOWN_SHARE:
            return []
        return [f"{self.file}: {self.unknown_share:.2%} of its tokens are unknown (text the tokenizer cannot spell, "
                "scored as cheap unknown tokens): its bits per char understate the loss and compare "
                "with no other model's; evaluate text the tokenizer covers"]


# Tokens per forward pass when scoring: windows are batched up to this many tokens (at least
# one window), which keeps the logits (tokens x vocabulary floats) near 250 MB at a 32k vocabulary.
TOKENS_PER_PASS = 2048


def _windows(n: int, block: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, first_new) of each window over n ids: the window is ids[start:end] and
    scores its targets from index first_new on, so that every id but the first (the leading
    end-of-document, context only) is scored exactly once."""
    out, scored_until, start = [], 1, 0
    while scored_until < n:
        end = min(start + block + 1, n)
        out.append((start, end, scored_until - (start + 1)))
        scored_until = end
        start = max(0, min(start + stride, n - block - 1))
    return out


@torch.no_grad()
def _scored_windows(model, ids: list[int], stride: int, tokens_per_pass: int = TOKENS_PER_PASS,
                    progress: bool = False):
    """(log-probabilities (T, V), targets (T,)) for each window's newly scored tokens, windows
    batched (right-padded; causal attention never sees the padding) `tokens_per_pass` at a time;
    `progress`: a bar, for texts of 100 windows or more."""
    block = model.config.block_size
    device = next(model.parameters()).device
    ids_t = torch.tensor(ids, dtype=torch.long, device=device)
    spans = _windows(len(ids), block, stride)
    per_pass = max(1, tokens_per_pass // block)
    with evaluating(model), tqdm(total=len(spans), unit="window", desc="scoring", leave=False,
                                 disable=not progress or len(spans) < 100) as bar:
        for i in range(0, len(spans), per_pass):
            group = spans[i:i + per_pass]
            x = torch.zeros(len(group), max(end - start for start, end, _ in group) - 1, dtype=torch.long, device=device)
            for row, (start, end, _) in enumerate(group):
                x[row, :end - start - 1] = ids_t[start:end - 1]
            logits, _ = model(x)
            for row, (start, end, first_new) in enumerate(group):
                yield F.log_softmax(logits[row, first_new:end - start - 1].float(), dim=-1), ids_t[start + 1 + first_new:end]
            bar.update(len(group))


def score_tokens(model, ids: list[int], stride: int, tokens_per_pass: int = TOKENS_PER_PASS,
                 progress: bool = False) -> float:
    """Sum of -log p(token | context) in nats over ids[1:], each scored once."""
    return -sum(lp.gather(1, t.unsqueeze(1)).sum().item()
                for lp, t in _scored_windows(model, ids, stride, tokens_per_pass, progress))


def window_logprobs(model, ids: list[int], top: int = 0, stride: int | None = None) -> Iterator[list[tuple]]:
    """The tokens of ids[1:] in scoring order, one list per window, each window its own forward
    pass (so that a caller can stop or pause between passes): for each token, (its
    log-probability given what precedes it, the `top` most likely tokens there as (id,
    log-probability) pairs, best first), natural logarithms. Joined, the lists cover ids[1:]
    once each, in order."""
    block = model.config.block_size
    stride = stride or max(1, block // 2)
    for logprobs, targets in _scored_windows(model, ids, stride, tokens_per_pass=block):
        chosen = logprobs.gather(1, targets.unsqueeze(1))[:, 0].tolist()
        best = torch.topk(logprobs, min(top, logprobs.size(-1)), dim=-1) if top else None
        yield [(value, list(zip(best.indices[row].tolist(), best.values[row].tolist())) if best is not None else [])
               for row, value in enumerate(chosen)]


STRIDE = Opt("sliding-window step in tokens (default: half the block)")


@checked_arguments
def evaluate_text(loaded: LoadedModel, text: str, name: str = "<text>",
                  stride: Annotated[int | None, STRIDE] = None) -> EvalResult:
    """How well `loaded` predicts `text` (normalized as training text is), scored in windows of
    the block size that step by `stride` tokens (default: half the block), so that every token
    but the first few sees at least half a block of context. Loss and perplexity are per token
    (natural log); bits per byte / per character divide the same total by the UTF-8 bytes /
    characters of the normalized text, which makes models with different tokenizers comparable.
    UserError for empty text, a stride outside 1..block size, or an argument of the wrong kind
    (a path, or a str naming a file given without a `name`, belongs to `evaluate_file`). Dropout is off while scoring
    and the model's mode is restored after."""
    loaded = check_loaded(loaded)
    if not isinstance(text, str):
        fix = f"to score a file use evaluate_file(loaded, {str(text)!r})" if isinstance(text, Path) else ""
        raise wrong_kind("text", text, "a str", fix)
    if name == "<text>" and _names_a_file(text):  # scored as text it gives a number, and a meaningless one
        # (a text given a name is a file's content, which may well be a file name)
        raise bad_param("text", f"is the path of a file, {text!r}, not text; to score the file use "
                                f"evaluate_file(loaded, {text!r})")
    return evaluate_documents(loaded, [text], name, stride)


def evaluate_documents(loaded: LoadedModel, documents: list[str], name: str, stride: int | None) -> EvalResult:
    """`evaluate_text` of `documents` (a table's rows, say), each read after the end-of-document
    token as the training and validation data are: one score over all of them, every token
    after the first predicted (a later document's end-of-document token too, as in training)."""
    documents = [doc for doc in map(normalize, documents) if doc]
    if not documents:
        raise UserError(f"{name} holds no text to evaluate")
    block = loaded.config.model.block_size
    stride = max(1, block // 2) if stride is None else stride
    if not 0 < stride <= block:
        raise bad_param("stride", f"must be between 1 and the block size ({block}), got {stride}")
    coverage = Coverage()
    ids = [i for doc in documents
           for i in [loaded.tokenizer.eod_id, *loaded.tokenizer.encode(doc, normalized=True, coverage=coverage)]]
    nats = score_tokens(loaded.model, ids, stride, progress=show_progress(None))
    n_tokens = len(ids) - 1  # the first token is context only; a later document's eod is predicted, as in training
    chars, n_bytes = sum(map(len, documents)), sum(len(doc.encode("utf-8")) for doc in documents)
    loss = nats / n_tokens
    return EvalResult(
        file=name, loss=loss, perplexity=math.exp(min(loss, 700)),
        bits_per_byte=nats / math.log(2) / n_bytes, bits_per_char=nats / math.log(2) / chars,
        tokens=n_tokens, chars=chars, unknown_share=coverage.unknown_share,
        byte_fallback_share=coverage.byte_fallback_share,
    )


def _names_a_file(text: str) -> bool:
    """Whether `text` is one line that names an existing file."""
    if "\n" in text or not text.strip() or len(text) > 4096:
        return False
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # a name too long for the system, a NUL
        return False


def read_texts(paths: list[str | Path], text_column: str | None = None) -> list[tuple[str, list[str]]]:
    """(name, documents) of every file, each read and checked (found, text or a table, not
    empty once normalized) before any is scored: a wrong last name fails at once, not after the
    others' minutes of scoring. A text file is one document; a table (.csv, .tsv, .jsonl, .json,
    .parquet) one per row of its `text_column`, as `prepare` reads it. UserError naming the file
    otherwise."""
    texts = [(str(path), _documents(path, text_column)) for path in paths]
    for name, documents in texts:
        if not any(map(normalize, documents)):
            raise UserError(f"{name} holds no text to evaluate")
    return texts


def _documents(path: str | Path, text_column: str | None) -> list[str]:
    if Path(path).is_file() and not is_text_file(path):
        return list(iter_documents(resolve_inputs([str(path)]), text_column=text_column))
    return [read_whole_text(path)]


@checked_arguments
def evaluate_file(loaded: LoadedModel, path: str | Path, stride: Annotated[int | None, STRIDE] = None,
                  text_column: Annotated[str | None, Opt("the column holding the text in a table (.csv, .tsv, "
                                                         ".jsonl, .json, .parquet; default 'text'): each row "
                                                         "a document after an end-of-document token, scored "
                                                         "in order as one stream, as the validation split "
                                                         "is")] = None) -> EvalResult:
    """`evaluate_text` on the text of the file at `path` (UTF-8, any of the compressions and
    encodings `prepare` reads), or on the rows of a table, each a document read after the
    end-of-document token as in training; UserError naming the file when it is missing, not
    text, or empty. A score on text the tokenizer cannot spell is not trusted: the result's
    `.warnings()` says so (the command line prints them; a caller should too)."""
    check_loaded(loaded)
    if not isinstance(path, (str, os.PathLike)):
        raise wrong_kind("path", path, "a file's path (str or Path)")
    [(name, documents)] = read_texts([path], text_column)
    return evaluate_documents(loaded, documents, name, stride)
