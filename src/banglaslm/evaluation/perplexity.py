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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import torch
import torch.nn.functional as F

from ..config import Opt
from ..data.sources import read_text_file
from ..errors import UserError, bad_param
from ..runfolder import LoadedModel
from ..text import normalize
from ..tokenizer import Coverage


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


@torch.no_grad()
def _scored_windows(model, ids: list[int], stride: int):
    """(log-probabilities (T, V), targets (T,)) for each window's newly scored tokens, so that
    every token of ids[1:] is scored exactly once with as much context as the block allows."""
    block = model.config.block_size
    device = next(model.parameters()).device
    ids_t = torch.tensor(ids, dtype=torch.long, device=device)
    scored_until, start = 1, 0  # ids[0] is the leading EOD: context only, never scored
    while scored_until < len(ids):
        end = min(start + block + 1, len(ids))
        window = ids_t[start:end]
        logits, _ = model(window[:-1].unsqueeze(0))
        first_new = scored_until - (start + 1)  # index in the window's targets of the first unscored token
        yield F.log_softmax(logits[0, first_new:].float(), dim=-1), window[1 + first_new:]
        scored_until = end
        start = max(0, min(start + stride, len(ids) - block - 1))


def score_tokens(model, ids: list[int], stride: int) -> float:
    """Sum of -log p(token | context) in nats over ids[1:], each scored once."""
    return -sum(lp.gather(1, t.unsqueeze(1)).sum().item() for lp, t in _scored_windows(model, ids, stride))


def token_logprobs(model, ids: list[int], top: int = 0, stride: int | None = None) -> list[tuple[float, list]]:
    """For each token of ids[1:]: (its log-probability given what precedes it, the `top` most
    likely tokens there as (id, log-probability) pairs, best first), natural logarithms."""
    stride = stride or max(1, model.config.block_size // 2)
    out = []
    for logprobs, targets in _scored_windows(model, ids, stride):
        chosen = logprobs.gather(1, targets.unsqueeze(1))[:, 0].tolist()
        best = torch.topk(logprobs, min(top, logprobs.size(-1)), dim=-1) if top else None
        for row, value in enumerate(chosen):
            pairs = list(zip(best.indices[row].tolist(), best.values[row].tolist())) if best is not None else []
            out.append((value, pairs))
    return out


def evaluate_text(loaded: LoadedModel, text: str, name: str = "<text>", stride: int | None = None) -> EvalResult:
    text = normalize(text)
    if not text:
        raise UserError(f"{name} holds no text to evaluate")
    block = loaded.config.model.block_size
    stride = max(1, block // 2) if stride is None else stride
    if not 0 < stride <= block:
        raise bad_param("stride", f"must be between 1 and the block size ({block}), got {stride}")
    coverage = Coverage()
    ids = [loaded.tokenizer.eod_id] + loaded.tokenizer.encode(text, normalized=True, coverage=coverage)
    nats = score_tokens(loaded.model, ids, stride)
    n_tokens = len(ids) - 1
    n_bytes = len(text.encode("utf-8"))
    loss = nats / n_tokens
    return EvalResult(
        file=name, loss=loss, perplexity=math.exp(min(loss, 700)),
        bits_per_byte=nats / math.log(2) / n_bytes, bits_per_char=nats / math.log(2) / len(text),
        tokens=n_tokens, chars=len(text), unknown_share=coverage.unknown_share,
        byte_fallback_share=coverage.byte_fallback_share,
    )


def evaluate_file(loaded: LoadedModel, path: str | Path,
                  stride: Annotated[int | None, Opt("sliding-window step in tokens (default: half the block)")] = None,
                  ) -> EvalResult:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"text file not found: {path}")
    text = "\n\n".join(read_text_file(str(path), "file"))
    return evaluate_text(loaded, text, name=str(path), stride=stride)
