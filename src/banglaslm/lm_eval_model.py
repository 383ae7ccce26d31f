"""A run folder behind lm-evaluation-harness's model interface (`lm_eval.api.model.TemplateLM`).

Why an adapter and not only the Hugging Face export: it scores the run exactly as banglaslm
does, with no conversion in between. Text goes through the `bn-1` normalization, and every
context starts after the end-of-document token, as every training document did (lm-eval's
`--model hf` on our export does the same, its tokenizer putting that token first; docs/lm-eval.md).
Log-likelihoods come from one forward pass per batch of right-padded rows (causal attention
never sees the padding); generation is the KV-cache engine of `banglaslm generate`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from tqdm import tqdm

from .config import SamplingParams
from .errors import UserError
from .evaluation.perplexity import score_tokens
from .generation.engine import Engine
from .runfolder import LoadedModel
from .text import normalize_fragment

DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's own default for generate_until tasks
EMPTY_CHOICE = ("a task has an answer choice that is empty once normalized (blank or invisible characters only); "
                "fix the task's data")


class BanglaslmLM(TemplateLM):
    """lm-eval's three request types over a loaded run: `loglikelihood` (via TemplateLM's
    context/continuation split and `_loglikelihood_tokens`), `loglikelihood_rolling` and
    `generate_until`. Natural-log probabilities, as lm-eval expects."""

    def __init__(self, loaded: LoadedModel, batch_size: int = 16):
        super().__init__()
        self.loaded, self.model, self.tok = loaded, loaded.model.eval(), loaded.tokenizer  # no dropout in scores
        self.block_size = loaded.config.model.block_size
        self.batch_size = batch_size
        self.engine = Engine(self.model, self.tok)

    @property
    def eot_token_id(self) -> int:
        return self.tok.eod_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """Ids of the normalized `string`, after the end-of-document token unless
        `add_special_tokens` is False or the string already starts with it."""
        ids = self.tok.encode(string)
        if add_special_tokens is False or (ids and ids[0] == self.tok.eod_id):
            return ids
        return [self.tok.eod_id] + ids

    # ---- loglikelihood ------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        if any(not self.tok.encode(continuation) for _, continuation in (r.args for r in requests)):
            raise UserError(EMPTY_CHOICE)
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), whether greedy decoding gives the continuation)
        for each (strings, context ids, continuation ids); a context too long for the block
        loses its oldest tokens, as in lm-eval's own models."""
        order = sorted(range(len(requests)), key=lambda i: -(len(requests[i][1]) + len(requests[i][2])))
        out: list[tuple[float, bool]] = [(0.0, True)] * len(requests)  # every entry is replaced
        for start in tqdm(range(0, len(order), self.batch_size), desc="loglikelihood", disable=disable_tqdm):
            chunk = order[start:start + self.batch_size]
            for i, result in zip(chunk, self._score_rows([requests[i][1:] for i in chunk])):
                out[i] = result
        return out

    def _score_rows(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        for context, continuation in pairs:
            if not continuation:  # it would score log 1 = 0 and win every question
                raise UserError(EMPTY_CHOICE)
            if len(continuation) > self.block_size:
                raise UserError(f"a continuation of {len(continuation)} tokens does not fit the model's block of "
                                f"{self.block_size} tokens; shorten the task's targets")
        inputs = [(context + continuation)[-(self.block_size + 1):][:-1] for context, continuation in pairs]
        batch = torch.zeros(len(inputs), max(map(len, inputs)), dtype=torch.long)
        for row, ids in enumerate(inputs):
            batch[row, :len(ids)] = torch.tensor(ids)
        logits, _ = self.model(batch.to(self.engine.device))
        results = []
        for row, (ids, (_, continuation)) in enumerate(zip(inputs, pairs)):
            logprobs = F.log_softmax(logits[row, len(ids) - len(continuation):len(ids)].float(), dim=-1)
            target = torch.tensor(continuation, device=logprobs.device)
            results.append((logprobs.gather(1, target[:, None]).sum().item(),
                            bool((logprobs.argmax(-1) == target).all())))
        return results

    # ---- loglikelihood_rolling ----------------------------------------------------------
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Total log-likelihood of each whole string after the end-of-document token, in
        windows of the block that do not overlap: `banglaslm eval --stride BLOCK_SIZE`."""
        out = []
        for (string,) in tqdm([r.args for r in requests], desc="loglikelihood_rolling", disable=disable_tqdm):
            ids = [self.tok.eod_id] + self.tok.encode(string)
            out.append(-score_tokens(self.model, ids, self.block_size) if len(ids) > 1 else 0.0)
        return out

    # ---- generate_until -----------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Each context continued by `banglaslm generate`'s engine (greedy unless the task
        asks to sample) up to the first of its `until` strings, which is left out."""
        args = [r.args for r in requests]
        out = [""] * len(args)
        groups: dict[str, list[int]] = {}  # requests with the same arguments share one batched call
        for i, (_, gen_kwargs) in enumerate(args):
            groups.setdefault(repr(sorted(gen_kwargs.items())), []).append(i)
        for rows in tqdm(groups.values(), desc="generate_until", disable=disable_tqdm):
            params = sampling(args[rows[0]][1])
            for i, completions in zip(rows, self.engine.generate_ids([self._prompt_ids(args[i][0]) for i in rows],
                                                                     params)):
                out[i] = completions[0].text
        return out

    def _prompt_ids(self, context: str) -> list[int]:
        """A context to continue, encoded as the engine encodes a prompt (a final line break
        stays); an empty one is the end-of-document token alone."""
        return self.engine.encode_prompt(context, allow_empty=True)


def sampling(gen_kwargs: dict) -> SamplingParams:
    """lm-eval's generation arguments (until, max_gen_toks, do_sample, temperature, top_p,
    top_k) as ours; stop strings that normalize to nothing are dropped (nothing could match)."""
    until = gen_kwargs.get("until") or []
    until = [until] if isinstance(until, str) else list(until)
    sample = bool(gen_kwargs.get("do_sample")) and float(gen_kwargs.get("temperature", 1.0)) > 0
    return SamplingParams(
        max_new_tokens=int(gen_kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)),
        greedy=not sample, temperature=float(gen_kwargs.get("temperature", 1.0)) if sample else 0.0,
        top_p=gen_kwargs.get("top_p") if sample else None, top_k=gen_kwargs.get("top_k") if sample else None,
        stop=[s for s in until if normalize_fragment(s)], seed=0,
    )
