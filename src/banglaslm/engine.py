"""The generation engine: KV-cached decoding of batches of prompts, with full sampling.

    engine = Engine(loaded.model, loaded.tokenizer)
    [[c]] = engine.generate(["একদিন সকালে"], SamplingParams(max_new_tokens=50, seed=1))
    for piece in engine.stream("একদিন সকালে", SamplingParams(stop=["\\n"])):
        print(piece, end="", flush=True)

How a batch runs:
- Prompts are normalized and encoded exactly like training text, after the end-of-document
  token every training document started from: [eod] + encode(prompt), no trailing token.
- Prefill: one forward pass over all prompts fills the KV cache. Prompts of different lengths
  are left-padded; the cache masks the padding and counts each row's positions from its own
  first token, so a prompt in a batch gets the same tokens it would get alone. With n > 1,
  each prompt is prefilled once and its cache copied to its n samples.
- Decode: one forward pass per step over the batch's newest tokens. Rows that finish (end of
  document, a stop string, `max_new_tokens`) leave the batch. On a CPU in float32 a step is
  one call into a compiled C kernel (cpu_decode.py) that does `model.forward`'s arithmetic
  for one token without PyTorch's per-operator overhead (about 3x transformers at batch 1,
  BENCHMARKS.md). It steps aside, and every step goes through `model(...)`, when anything
  hooks or patches the model's forward, for other devices and dtypes, without a C compiler,
  with `Engine(..., use_kernel=False)` or with BANGLASLM_KERNEL=torch.

Past the block size (the policy): the model never sees more than `block_size` tokens, and
its position table ends there. A prompt longer than that is cut to its last `block_size`
tokens. When a row's context would outgrow the block, its window restarts at its last
`keep` tokens (default `block_size // 2`, the newest token included) and the cache is
refilled from the windows (one prefill, then cached steps again). So the cost is one
half-block prefill every `block_size // 2` tokens instead of a full-block forward every token,
and the logits at every step are exactly those of a plain forward pass over the row's current
window (tests/test_engine.py checks this against an uncached loop).

Sampling, in order (HF / OpenAI semantics): repetition penalty over the prompt and generated
tokens (CTRL: a seen token's positive logit is divided by it, a negative one multiplied);
presence and frequency penalties over generated tokens (logit -= presence * [count > 0] +
frequency * count); then greedy takes the argmax, or else logits / temperature → top-k →
top-p → min-p → draw. Each sample has its own random generator: sample j of any prompt uses
seed `sample_seed(seed, j)`, so the same seed gives the same text whether a prompt runs alone
or in a batch, and the n samples of a prompt differ.

Logprobs (`SamplingParams.logprobs = k`): every sampled token comes with its probability and the
k most likely tokens of the distribution it was drawn from (after penalties, temperature and
the filters; greedy: the softmax of the penalized logits). Asking for them changes nothing that
is drawn. The server turns them into OpenAI's shapes; the playground shows them per position.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .cpu_decode import CpuDecoder
from .errors import UserError
from .model import GPT, KVCache
from .normalize import normalize
from .stream import StreamDecoder, tidy_end
from .tokenizer import Tokenizer

FINISH_STOP, FINISH_LENGTH = "stop", "length"
MAX_LOGPROBS = 50


@dataclass
class SamplingParams:
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0  # 1 = off; 1.1-1.3 is typical
    presence_penalty: float = 0.0    # -2 .. 2, like OpenAI's
    frequency_penalty: float = 0.0   # -2 .. 2
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    greedy: bool = False
    n: int = 1                       # samples per prompt
    logprobs: int | None = None      # report each token's probability and the this-many most
                                     # likely alternatives (0 = the chosen token only); None = off

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise UserError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if not self.greedy and not self.temperature > 0:
            raise UserError(f"--temperature must be > 0 for sampling (got {self.temperature}); use --greedy for argmax decoding")
        if self.top_k is not None and self.top_k < 1:
            raise UserError(f"--top-k must be at least 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UserError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            raise UserError(f"--min-p must be in [0, 1], got {self.min_p}")
        if not self.repetition_penalty > 0:
            raise UserError(f"--repetition-penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        for name, value in (("presence", self.presence_penalty), ("frequency", self.frequency_penalty)):
            if not -2 <= value <= 2:
                raise UserError(f"--{name}-penalty must be in [-2, 2] (0 = off), got {value}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise UserError(f"--stop strings must be non-empty text, got {self.stop!r}")
        if self.n < 1:
            raise UserError(f"--n (samples per prompt) must be at least 1, got {self.n}")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise UserError(f"logprobs must be in [0, {MAX_LOGPROBS}], got {self.logprobs}")

    @property
    def uses_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0 or self.frequency_penalty != 0


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


@dataclass
class Completion:
    text: str
    token_ids: list[int]  # every token sampled, a final end-of-document excepted (the tokens
                          # that spelled a stop string included; the text stops before it)
    finish_reason: str    # "stop" (end of document or a stop string) or "length"
    logprobs: list[TokenLogprob] | None = None  # one per token_ids entry when asked for


@dataclass
class Step:
    """One decoding step of `Engine.stream_steps`."""
    token_id: int
    text: str                          # the text that became safe to show (often '')
    finish_reason: str | None = None   # set on the last step
    logprob: TokenLogprob | None = None  # when `params.logprobs` is set
    start: int = 0                     # where this token's text begins in the whole
                                       # continuation (characters; a token that ends inside a
                                       # character starts where that character will)


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
    if params.repetition_penalty != 1.0 and seen is not None:
        rp = params.repetition_penalty
        logits = torch.where(seen, torch.where(logits > 0, logits / rp, logits * rp), logits)
    if counts is not None and (params.presence_penalty or params.frequency_penalty):
        logits = logits - params.presence_penalty * (counts > 0) - params.frequency_penalty * counts
    if params.greedy:
        return logits
    return filter_logits(logits / params.temperature, params.top_k, params.top_p, params.min_p)


def sample_seed(seed: int, sample: int) -> int:
    """The seed of sample `sample` (0-based) of a prompt; sample 0 uses `seed` itself."""
    if sample == 0:
        return seed
    return (seed * 6364136223846793005 + sample * 1442695040888963407) % (2**63 - 1)


class Sampler:
    """Picks the next token of every active row; keeps the per-row penalty state."""

    def __init__(self, params: SamplingParams, rows: list["Row"], vocab: int, device):
        self.params = params
        B = len(rows)
        self.seen = self.counts = None
        if params.repetition_penalty != 1.0:
            self.seen = torch.zeros(B, vocab, dtype=torch.bool, device=device)
            for b, row in enumerate(rows):  # the leading end-of-document marker is not text
                self.seen[b, torch.tensor(row.context[1:], dtype=torch.long, device=device)] = True
        if params.presence_penalty or params.frequency_penalty:
            self.counts = torch.zeros(B, vocab, device=device)
        self.generators = None
        if not params.greedy:
            base = params.seed if params.seed is not None else torch.Generator().seed()
            self.generators = []
            for row in rows:
                g = torch.Generator(device="cpu")
                g.manual_seed(sample_seed(base, row.sample))
                self.generators.append(g)

    def select(self, keep: list[int], keep_t: torch.Tensor) -> None:
        if self.seen is not None:
            self.seen = self.seen.index_select(0, keep_t)
        if self.counts is not None:
            self.counts = self.counts.index_select(0, keep_t)
        if self.generators is not None:
            self.generators = [self.generators[i] for i in keep]

    def __call__(self, logits: torch.Tensor):
        """logits (B, V) → (next ids (B,) tensor, a TokenLogprob per row or None)."""
        p = self.params
        if p.greedy and not p.uses_penalties and p.logprobs is None:  # the fast path: no softmax, no copies
            if logits.device.type == "cpu":  # NumPy's argmax takes 2 us here, torch's 16 (same ties: the first)
                return torch.from_numpy(logits.numpy().argmax(-1)), None
            return logits.argmax(-1), None
        logits = adjust_logits(logits.float(), p, self.seen, self.counts)
        probs = None
        if p.greedy:
            ids = logits.argmax(-1)
        else:
            probs = torch.softmax(logits, dim=-1).cpu()
            ids = torch.cat([torch.multinomial(probs[b], 1, generator=g)
                             for b, g in enumerate(self.generators)]).to(logits.device)
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

    def update(self, ids: torch.Tensor) -> None:
        """Record the tokens just generated (ids (B,)) for the penalties."""
        if self.seen is not None:
            self.seen.scatter_(1, ids[:, None], True)
        if self.counts is not None:
            self.counts.scatter_add_(1, ids[:, None], torch.ones_like(ids[:, None], dtype=self.counts.dtype))


# ---- the engine ----------------------------------------------------------------------------

@dataclass
class Row:
    """One sequence being generated: sample `sample` of prompt `prompt`."""
    prompt: int
    sample: int
    context: list[int]       # [eod] + prompt + generated tokens
    start: int               # where the model's window into `context` begins
    decoder: StreamDecoder
    generated: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    stop_at: int | None = None   # where in decoder.text a stop string begins


class Engine:
    """KV-cached generation for one model and its tokenizer (see the module docstring)."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, keep: int | None = None, use_kernel: bool = True):
        self.model = model
        self.use_kernel = use_kernel  # False: never the C decode step (see cpu_decode.py)
        self.tokenizer = tokenizer
        self.block_size = model.config.block_size
        # Tokens a row keeps when its context outgrows the block (the newest one included).
        self.keep = max(1, min(keep or self.block_size // 2, self.block_size))
        self.device = model.tok_emb.weight.device

    # ---- public API ----------------------------------------------------------------------
    def encode_prompt(self, prompt: str) -> list[int]:
        """[eod] + the normalized prompt's ids: the context every training document starts from."""
        text = normalize(prompt)
        if not text:
            raise UserError("the prompt is empty; give some text to continue, e.g. --prompt \"আমার সোনার\"")
        return [self.tokenizer.eod_id] + self.tokenizer.encode(text, normalized=True)

    def generate(self, prompts: list[str], params: SamplingParams | None = None) -> list[list[Completion]]:
        """`params.n` completions for each prompt, in prompt order."""
        if isinstance(prompts, str):
            raise TypeError("Engine.generate takes a list of prompts; use [prompt] for one")
        params = params or SamplingParams()
        params.validate()
        return self.generate_ids([self.encode_prompt(p) for p in prompts], params)

    def generate_ids(self, contexts: list[list[int]], params: SamplingParams | None = None) -> list[list[Completion]]:
        """Like `generate`, from token ids (each context as `encode_prompt` makes it)."""
        params = params or SamplingParams()
        params.validate()
        if any(not ids for ids in contexts):
            raise UserError("every context needs at least one token (start it with the end-of-document id)")
        if not contexts:
            return []
        rows = self._rows(contexts, params)
        for _ in self._run(rows, params, track_text=bool(params.stop)):
            pass
        out: list[list[Completion]] = [[] for _ in contexts]
        for row in rows:
            out[row.prompt].append(self.completion(row, params))
        return out

    def completion(self, row: "Row", params: SamplingParams) -> Completion:
        """The finished `row` as a Completion (its decoder must have followed along if
        `params.stop`: then nothing has been taken from it yet, and finish() is all)."""
        if params.stop:
            text = row.decoder.finish(row.stop_at)
        else:
            text = tidy_end(self.tokenizer.decode(row.generated))
        logprobs = row.logprobs if params.logprobs is not None else None
        return Completion(text, row.generated, row.finish_reason, logprobs)

    def stream(self, prompt: str, params: SamplingParams | None = None) -> Iterator[str]:
        """The continuation of one prompt, as pieces of text that are safe to show as they come
        (whole characters and grapheme clusters, never part of a stop string). The pieces joined
        equal `generate([prompt], params)[0][0].text`."""
        for step in self.stream_steps(prompt, params):
            if step.text:
                yield step.text

    def stream_steps(self, prompt: str, params: SamplingParams | None = None) -> Iterator[Step]:
        """Like `stream`, one `Step` per sampled token; with `params.logprobs`, each step also
        says what the model was choosing from (for a playground that shows the model's choices)."""
        params = params or SamplingParams()
        params.validate()
        if params.n != 1:
            raise UserError(f"streaming gives one sample; set n=1 (got n={params.n})")
        rows = self._rows([self.encode_prompt(prompt)], params)
        row = rows[0]
        stops, start = params.stop, 0
        for ids, logprobs in self._run(rows, params, track_text=True):
            end = len(row.decoder.text)
            yield Step(ids[0], shown_text(row, stops), row.finish_reason, logprobs[0] if logprobs else None, start)
            start = end

    # ---- the loop --------------------------------------------------------------------------
    def _rows(self, prompt_ids: list[list[int]], params: SamplingParams) -> list[Row]:
        return [Row(p, j, list(ids), max(0, len(ids) - self.block_size), StreamDecoder(self.tokenizer))
                for p, ids in enumerate(prompt_ids) for j in range(params.n)]

    # As a decorator, inference_mode is on only while the generator runs, not between steps.
    @torch.inference_mode()
    def _run(self, rows: list[Row], params: SamplingParams, track_text: bool = False):
        """Generate into `rows`; yield (sampled ids, TokenLogprobs or None) of the active rows per step.
        `track_text`: feed each row's stream decoder as tokens come (streaming, stop strings)."""
        eod = self.tokenizer.eod_id
        with self._eval_mode():
            sampler = Sampler(params, rows, self.model.config.vocab_size, self.device)
            # Decode steps in one C call on CPUs when the kernel can run this model exactly
            # (cpu_decode.py); None: every step through model(...).
            fused = CpuDecoder.for_model(self.model) if self.use_kernel else None
            # Prefill each prompt once (its n samples share it).
            firsts = rows[::params.n]
            cache = self.model.new_cache(len(firsts))
            logits = self.prefill(cache, firsts)
            cache.repeat_rows(params.n)
            if params.n > 1:
                logits = logits.repeat_interleave(params.n, dim=0)
            active = list(range(len(rows)))
            while True:
                next_t, logprobs = sampler(logits)
                next_ids = next_t.tolist()  # the one sync per step
                sampler.update(next_t)
                still = [b for b, (r, token) in enumerate(zip(active, next_ids))
                         if accept_token(rows[r], token, logprobs[b] if logprobs else None, params, eod, track_text)]
                yield next_ids, logprobs
                if not still:
                    return
                if len(still) < len(active):  # finished rows leave the batch
                    keep_t = torch.tensor(still, device=self.device)
                    cache.select(keep_t)
                    sampler.select(still, keep_t)
                    next_t = next_t.index_select(0, keep_t)
                    active = [active[b] for b in still]
                if cache.length < self.block_size:
                    logits = fused.step(cache, next_t) if fused else self.forward(cache, next_t[:, None])[:, -1]
                else:  # the policy past the block size (module docstring)
                    for r in active:
                        row = rows[r]
                        if len(row.context) - row.start > self.block_size:
                            row.start = len(row.context) - self.keep
                    logits = self.prefill(cache, [rows[r] for r in active])

    def prefill(self, cache: KVCache, rows: list[Row]) -> torch.Tensor:
        """Refill `cache` from the rows' windows (left-padded); last-position logits (B, V)."""
        windows = [row.context[row.start:] for row in rows]
        width = max(len(w) for w in windows)
        pad = [width - len(w) for w in windows]
        idx = torch.tensor([[self.tokenizer.eod_id] * p + w for p, w in zip(pad, windows)],
                           dtype=torch.long, device=self.device)
        assert cache.batch_size == len(rows)
        cache.reset(torch.tensor(pad, device=self.device))
        return self.forward(cache, idx)[:, -1]

    def forward(self, cache: KVCache, idx: torch.Tensor) -> torch.Tensor:
        # Through model(...) → model.forward, so wrappers of forward see every call (and a
        # wrapped model never gets the C kernel: CpuDecoder.for_model checks).
        with self.model.use_cache(cache):
            logits, _ = self.model(idx)
        return logits.float()

    @contextmanager
    def _eval_mode(self):
        """Dropout off while generating; the model's mode is restored afterwards."""
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)


def accept_token(row: Row, token: int, logprob: TokenLogprob | None, params: SamplingParams, eod: int,
                 track_text: bool) -> bool:
    """Record one sampled token in `row` and decide whether the row goes on: it stops at end of
    document, at a stop string (when `track_text`: its stream decoder follows the tokens) or at
    `max_new_tokens`, and `row.finish_reason` says which."""
    if token == eod:
        row.finish_reason = FINISH_STOP
        return False
    row.generated.append(token)
    row.context.append(token)
    if logprob is not None:
        row.logprobs.append(logprob)
    if track_text:
        before = len(row.decoder.text)
        row.decoder.feed(token)
        if params.stop:
            longest = max(len(s) for s in params.stop)
            row.stop_at = _find_stop(row.decoder.text, params.stop, before - longest + 1)
    if row.stop_at is not None:
        row.finish_reason = FINISH_STOP
    elif len(row.generated) >= params.max_new_tokens:
        row.finish_reason = FINISH_LENGTH
    else:
        return True
    return False


def shown_text(row: Row, stops: list[str]) -> str:
    """The text of a streamed row that became safe to show since the last call: whole
    characters and grapheme clusters, nothing that could still grow into a stop string; at
    the end, everything up to the stop string."""
    if row.finish_reason is not None:
        return row.decoder.finish(row.stop_at)
    return row.decoder.take(_stop_holdback(row.decoder.text, stops))


def _find_stop(text: str, stops: list[str], start: int) -> int | None:
    """Where the earliest stop string in `text` begins, searching from `start`; or None."""
    start = max(start, 0)
    found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(found) if found else None


def _stop_holdback(text: str, stops: list[str]) -> int:
    """Where the earliest suffix of `text` that could still grow into a stop string begins
    (text from there must not be shown yet); len(text) when there is none."""
    for i in range(max(0, len(text) - max((len(s) for s in stops), default=0) + 1), len(text)):
        tail = text[i:]
        if any(s.startswith(tail) for s in stops):
            return i
    return len(text)
