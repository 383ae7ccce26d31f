"""Sampling: how the next token is picked under a generation's `SamplingParams`.

Order (Hugging Face / OpenAI semantics): repetition penalty over the prompt and generated
tokens (CTRL: a seen token's positive logit is divided by it, a negative one multiplied);
presence and frequency penalties over generated tokens; then greedy takes the argmax, or else
logits / temperature → top-k → top-p → min-p → draw. Sample j of a prompt uses seed
`sample_seed(seed, j)`, so the same seed gives the same text alone or in a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import SamplingParams


@dataclass
class Candidate:
    token_id: int
    prob: float    # in the distribution the token was drawn from (after penalties, temperature,
                   # top-k/top-p/min-p; greedy: softmax of the penalized logits), always > 0


@dataclass
class TokenLogprob:
    """What the model chose at one step and what it was choosing from (`params.logprobs`)."""
    token_id: int
    prob: float
    candidates: list[Candidate]   # the `params.logprobs` most likely tokens, best first


# ---- sampling (batched: logits (B, V)) ----------------------------------------------------
def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None,
                  min_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit outside the top-k / top-p (nucleus) / min-p set, along the last
    dimension. min-p keeps tokens whose probability is at least min_p x the top one's."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens before it already reach top_p; the first always stays.
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop_sorted[..., 0] = False  # even where top_p is below float32's smallest number
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    if min_p is not None and min_p > 0:
        probs = torch.softmax(logits, dim=-1)
        logits = logits.masked_fill(probs < min_p * probs.amax(-1, keepdim=True), float("-inf"))
    return logits


def adjust_logits(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor | None = None,
                  counts: torch.Tensor | None = None) -> torch.Tensor:
    """The logits the next token is drawn from (softmax them for the probabilities).

    logits (B, V) float; `seen` (B, V) bool: tokens in the prompt or generated (for the
    repetition penalty); `counts` (B, V): how often each token was generated (presence and
    frequency penalties). Greedy decoding takes the argmax of the result.
    """
    if params.logit_bias:
        ids = torch.tensor(list(params.logit_bias), dtype=torch.long, device=logits.device)
        bias = torch.tensor(list(params.logit_bias.values()), dtype=logits.dtype, device=logits.device)
        logits = logits.index_add(1, ids, bias.expand(logits.size(0), -1))
    if params.repetition_penalty != 1.0 and seen is not None:
        rp = params.repetition_penalty
        logits = torch.where(seen, torch.where(logits > 0, logits / rp, logits * rp), logits)
    if counts is not None and (params.presence_penalty or params.frequency_penalty):
        logits = logits - params.presence_penalty * (counts > 0) - params.frequency_penalty * counts
    if params.decodes_greedily:
        return logits
    return filter_logits(logits / params.temperature, params.top_k, params.top_p, params.min_p)


def sample_seed(seed: int, sample: int) -> int:
    """The seed of sample `sample` (0-based) of a prompt; sample 0 uses `seed` itself."""
    if sample == 0:
        return seed
    return (seed * 6364136223846793005 + sample * 1442695040888963407) % (2**63 - 1)


class Sampler:
    """Picks the next token of every active row; keeps the per-row penalty state."""

    def __init__(self, params: SamplingParams, rows: list, vocab: int, device, eod: int | None = None,
                 openers: list[int] | None = None):
        """`rows`: the engine's rows (their `context` and `sample` number), one per batch row;
        `vocab`: the ids the tokenizer decodes, the first of the model's (an embedding padded
        beyond them, as some imported models have, never yields an id the tokenizer lacks);
        `eod`: the end-of-document token, which no penalty touches: it is no word to repeat,
        and a chat's earlier answers each end with one (penalized, later answers ran on);
        `openers`: the ids that open with a space (`Tokenizer.space_openers`)."""
        self.params, self.vocab = params, vocab
        B = len(rows)
        self.seen = self.counts = None
        if params.repetition_penalty != 1.0:
            self.seen = torch.zeros(B, vocab, dtype=torch.bool, device=device)
            for b, row in enumerate(rows):
                self.seen[b, torch.tensor(row.context, dtype=torch.long, device=device)] = True
            if eod is not None and eod < vocab:  # in a context only: a row that samples it ends there
                self.seen[:, eod] = False
        if params.presence_penalty or params.frequency_penalty:
            self.counts = torch.zeros(B, vocab, device=device)
        # The first token of a row whose prompt ended in a space (`Row.opens_word`) opens a word:
        # every other token is masked, at the first call only.
        self.first_mask = None
        if openers and any(row.opens_word for row in rows):
            allowed = torch.zeros(vocab, dtype=torch.bool, device=device)
            allowed[torch.tensor([i for i in openers if i < vocab], dtype=torch.long, device=device)] = True
            rows_on = torch.tensor([row.opens_word for row in rows], device=device)
            self.first_mask = rows_on[:, None] & ~allowed[None, :]
        self.generators = None
        if not params.decodes_greedily:
            base = params.seed if params.seed is not None else torch.Generator().seed()
            self.generators = []
            for row in rows:
                g = torch.Generator(device="cpu")
                g.manual_seed(sample_seed(base, row.sample))
                self.generators.append(g)

    def select(self, keep: list[int], keep_t: torch.Tensor) -> None:
        if self.first_mask is not None:
            self.first_mask = self.first_mask.index_select(0, keep_t)
        if self.seen is not None:
            self.seen = self.seen.index_select(0, keep_t)
        if self.counts is not None:
            self.counts = self.counts.index_select(0, keep_t)
        if self.generators is not None:
            self.generators = [self.generators[i] for i in keep]

    def __call__(self, logits: torch.Tensor):
        """logits (B, V) → (next ids (B,) tensor, a TokenLogprob per row or None)."""
        p = self.params
        logits = logits[:, :self.vocab]
        if self.first_mask is not None:
            logits, self.first_mask = logits.masked_fill(self.first_mask, float("-inf")), None
        if p.decodes_greedily and not p.uses_penalties and p.logprobs is None:  # the fast path: no softmax, no copies
            if logits.device.type == "cpu":  # NumPy's argmax takes 2 us here, torch's 16 (same ties: the first)
                return torch.from_numpy(logits.numpy().argmax(-1)), None
            return logits.argmax(-1), None
        logits = adjust_logits(logits.float(), p, self.seen, self.counts)
        probs = None
        if p.decodes_greedily:
            ids = logits.argmax(-1)
        else:
            probs = torch.softmax(logits, dim=-1).cpu()
            ids = self._draw(probs).to(logits.device)
        if p.logprobs is None:
            return ids, None
        if probs is None:
            probs = torch.softmax(logits, dim=-1).cpu()
        chosen = probs.gather(1, ids.cpu()[:, None])[:, 0].tolist()
        top = torch.topk(probs, min(p.logprobs, probs.size(-1)), dim=-1)
        out = []
        for token, prob, top_ids, top_probs in zip(ids.tolist(), chosen, top.indices.tolist(), top.values.tolist()):
            # Filtered-out tokens (probability 0) are not candidates: log(0) is not a number.
            out.append(TokenLogprob(token, prob, [Candidate(i, q) for i, q in zip(top_ids, top_probs) if q > 0]))
        return ids, out

    def _draw(self, probs: torch.Tensor) -> torch.Tensor:
        """One token per row of probs (B, V), each from its row's own generator, by inverse
        transform: the first token whose cumulative probability exceeds u * total, u uniform in
        [0, 1). A token of probability 0 adds nothing to the sum, so it is never drawn. (Not
        torch.multinomial: one call per row was most of a batch step's time in a profile.)"""
        u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in self.generators])
        cumulative = probs.double().cumsum(-1)
        ids = torch.searchsorted(cumulative, (u * cumulative[:, -1])[:, None], right=True)[:, 0]
        return ids.clamp_(max=probs.size(-1) - 1)

    def update(self, ids: torch.Tensor) -> None:
        """Record the tokens just generated (ids (B,)) for the penalties."""
        if self.seen is not None:
            self.seen.scatter_(1, ids[:, None], True)
        if self.counts is not None:
            self.counts.scatter_add_(1, ids[:, None], torch.ones_like(ids[:, None], dtype=self.counts.dtype))
