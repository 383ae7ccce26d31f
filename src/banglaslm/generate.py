"""Text generation from a trained model: greedy or sampled, with temperature, top-k, top-p.

The prompt is normalized and encoded exactly like training text and preceded by the
end-of-document token, the context every training document started from (the course
instead appended a `</s>` that training never saw). When the context outgrows the block, the
oldest tokens are dropped. Generation stops at end-of-document or after `max_new_tokens`.

Sampling, in order: logits / temperature → keep the `top_k` largest → keep the smallest set
whose probability reaches `top_p` → sample. `temperature` → 0 approaches greedy (argmax);
above 1 it flattens the distribution and the text gets more surprising.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .errors import UserError
from .normalize import HASANTA, ZWJ, ZWNJ, normalize
from .runfolder import LoadedModel


@dataclass
class SamplingConfig:
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False
    seed: int | None = None

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise UserError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if not self.greedy and not self.temperature > 0:
            raise UserError(f"--temperature must be > 0 for sampling (got {self.temperature}); use --greedy for argmax decoding")
        if self.top_k is not None and self.top_k < 1:
            raise UserError(f"--top-k must be at least 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UserError(f"--top-p must be in (0, 1], got {self.top_p}")


@dataclass
class Generation:
    prompt: str
    text: str
    tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Set to -inf every logit outside the top-k / top-p (nucleus) set. logits: (V,)."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        # Drop a token when the tokens before it already reach top_p; the first always stays.
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _tidy_end(text: str) -> str:
    """A cut-off generation may end in a hasanta or joiner waiting for the next letter."""
    return text.rstrip(HASANTA + ZWJ + ZWNJ)


@torch.no_grad()
def generate(loaded: LoadedModel, prompt: str, sampling: SamplingConfig | None = None) -> Generation:
    sampling = sampling or SamplingConfig()
    sampling.validate()
    prompt_norm = normalize(prompt)
    if not prompt_norm:
        raise UserError("the prompt is empty; give some text to continue, e.g. --prompt \"আমার সোনার\"")
    model, tok = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
    block = loaded.config.model.block_size
    context = [tok.eod_id] + tok.encode(prompt_norm, normalized=True)
    generator = torch.Generator(device="cpu")
    if sampling.seed is not None:
        generator.manual_seed(sampling.seed)
    else:
        generator.seed()
    new_ids: list[int] = []
    for _ in range(sampling.max_new_tokens):
        window = torch.tensor([context[-block:]], dtype=torch.long, device=device)
        logits, _ = model(window)
        logits = logits[0, -1].float().cpu()
        if sampling.greedy:
            next_id = int(torch.argmax(logits))
        else:
            logits = filter_logits(logits / sampling.temperature, sampling.top_k, sampling.top_p)
            probs = torch.softmax(logits, dim=-1)
            next_id = int(torch.multinomial(probs, 1, generator=generator))
        if next_id == tok.eod_id:
            break
        new_ids.append(next_id)
        context.append(next_id)
    return Generation(prompt=prompt, text=_tidy_end(tok.decode(new_ids)), tokens=len(new_ids))
