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


@dataclass
class EvalResult:
    file: str
    loss: float
    perplexity: float
    bits_per_byte: float
    bits_per_char: float
    tokens: int
    chars: int

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def score_tokens(model, ids: list[int], stride: int) -> float:
    """Sum of -log p(token | context) in nats over ids[1:], each scored once."""
    block = model.config.block_size
    device = next(model.parameters()).device
    ids_t = torch.tensor(ids, dtype=torch.long, device=device)
    total, scored_until = 0.0, 1  # ids[0] is the leading EOD: context only, never scored
    start = 0
    while scored_until < len(ids):
        end = min(start + block + 1, len(ids))
        window = ids_t[start:end]
        logits, _ = model(window[:-1].unsqueeze(0))
        logprobs = F.log_softmax(logits[0].float(), dim=-1)
        targets = window[1:]
        nll = -logprobs.gather(1, targets.unsqueeze(1)).squeeze(1)
        first_new = scored_until - (start + 1)  # index in targets of the first unscored token
        total += nll[first_new:].sum().item()
        scored_until = end
        start = max(0, min(start + stride, len(ids) - block - 1))
    return total


def evaluate_text(loaded: LoadedModel, text: str, name: str = "<text>", stride: int | None = None) -> EvalResult:
    text = normalize(text)
    if not text:
        raise UserError(f"{name} holds no text to evaluate")
    block = loaded.config.model.block_size
    stride = max(1, block // 2) if stride is None else stride
    if not 0 < stride <= block:
        raise bad_param("stride", f"must be between 1 and the block size ({block}), got {stride}")
    ids = [loaded.tokenizer.eod_id] + loaded.tokenizer.encode(text, normalized=True)
    nats = score_tokens(loaded.model, ids, stride)
    n_tokens = len(ids) - 1
    n_bytes = len(text.encode("utf-8"))
    loss = nats / n_tokens
    return EvalResult(
        file=name, loss=loss, perplexity=math.exp(min(loss, 700)),
        bits_per_byte=nats / math.log(2) / n_bytes, bits_per_char=nats / math.log(2) / len(text),
        tokens=n_tokens, chars=len(text),
    )


def evaluate_file(loaded: LoadedModel, path: str | Path,
                  stride: Annotated[int | None, Opt("sliding-window step in tokens (default: half the block)")] = None,
                  ) -> EvalResult:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"text file not found: {path}")
    text = "\n\n".join(read_text_file(str(path), "file"))
    return evaluate_text(loaded, text, name=str(path), stride=stride)
