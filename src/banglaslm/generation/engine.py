"""The generation engine: KV-cached decoding of batches of prompts.

A prompt is normalized and encoded like training text, after the end-of-document token every
training document started from. One prefill fills the KV cache (prompts of different lengths
left-padded, each counting positions from its own first token); then one decode step per
token, through the C kernel on CPUs (`cpu_decode`) or `model(...)`. Finished rows leave the
batch. Past the block size a row's window restarts at its last `keep` tokens (`Engine.slide`),
so the logits at every step are those of a plain forward pass over the current window.
docs/generation.md has the details.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache

import torch

from ..config import ModelConfig, SamplingParams
from ..errors import UserError, bad_param, wrong_kind
from ..model import GPT, KVCache, evaluating
from ..runfolder import LoadedModel, check_loaded
from ..text import check_text, normalize_fragment, normalize_prompt, opens_a_word
from ..tokenizer import Tokenizer
from .cpu_decode import CpuDecoder
from .sampling import Sampler, TokenLogprob
from .stream import StreamDecoder, finished_text

FINISH_STOP, FINISH_LENGTH = "stop", "length"
# A single prompt of at most this many bytes of weights per token times tokens (4 float32
# tokens, 8 bf16, 16 int8) is prefilled by the C step, one token at a time: a C step costs about
# the weight bytes it reads, and one PyTorch forward over a short prompt costs several steps of
# fixed overhead (benchmarks/generate_speed.py's prefill line measures both).
STEP_PREFILL_BYTES = 16


@dataclass
class Completion:
    text: str
    token_ids: list[int]  # every token sampled, a final end-of-document excepted (the tokens
                          # that spelled a stop string included; the text stops before it)
    finish_reason: str    # "stop" (end of document or a stop string) or "length"
    logprobs: list[TokenLogprob] | None = None  # when asked for: one per token whose text begins in
                                                # `text` (all of token_ids, bar a stop string's)


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
    starts: list[int] = field(default_factory=list)  # where each token's text begins in decoder.text
    finish_reason: str | None = None
    stop_at: int | None = None   # where in decoder.text a stop string begins
    opens_word: bool = False     # its prompt ended in a space: the first token opens a word (`Engine.opens_word`)
    strip_leading: bool = False  # its text's leading whitespace is not shown (a chat answer's): no stop there

    def text_logprobs(self, params: SamplingParams) -> list[TokenLogprob] | None:
        """The logprobs of the tokens whose text is shown: a stop string's tokens were sampled,
        but like their text they are not part of the answer."""
        if params.logprobs is None:
            return None
        return self.logprobs if self.stop_at is None else self.logprobs[:bisect.bisect_left(self.starts, self.stop_at)]


class Engine:
    """KV-cached generation for one model and its tokenizer (see the module docstring)."""

    def __init__(self, model: GPT | LoadedModel, tokenizer: Tokenizer | None = None, keep: int | None = None,
                 use_kernel: bool = True):
        """`model` and its `tokenizer`, or a loaded model (`load_model`) that holds both. `keep`:
        tokens a row keeps when its context outgrows the block (default: half the block).
        UserError for arguments of the wrong kind, or a tokenizer with more tokens than the
        model has embeddings (another model's)."""
        model, tokenizer = _model_and_tokenizer(model, tokenizer)
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise wrong_kind("keep", keep, "a whole number of tokens >= 1, or None")
        self.model = model
        self.use_kernel = use_kernel  # False: never the C decode step (see cpu_decode.py)
        self.tokenizer = tokenizer
        self.vocab = min(model.config.vocab_size, tokenizer.vocab_size)  # the ids that can be generated
        self.block_size = model.config.block_size
        # Tokens a row keeps when its context outgrows the block (the newest one included).
        self.keep = max(1, min(keep or self.block_size // 2, self.block_size))
        self.device = next(model.parameters()).device

    # ---- public API ----------------------------------------------------------------------
    def encode_prompt(self, prompt: str, allow_empty: bool = False) -> list[int]:
        """[eod] + the normalized prompt's ids (`normalize_prompt`: a final line break stays): the
        context every training document starts from. An empty prompt is a UserError unless
        `allow_empty` (then [eod] alone: the start of a document)."""
        text = normalize_prompt(check_text(prompt, "prompt"))
        if not text and not allow_empty:
            raise bad_param("prompt", "is empty; give some text to continue, e.g. \"আমার সোনার\"")
        return [self.tokenizer.eod_id] + self.tokenizer.encode(text, normalized=True)

    def opens_word(self, prompt: str | list[int]) -> bool:
        """Whether the continuation of `prompt` must open a word (`Row.opens_word`): a text that
        ended in a space (`opens_a_word`), or in a line break this tokenizer cannot write (a
        SentencePiece normalizer folds it away, and the prompt then reads as if it stopped
        mid-word: "নদী\n" went on "নদীকার")."""
        if not isinstance(prompt, str):
            return False
        if opens_a_word(prompt):
            return True
        text = normalize_prompt(prompt)
        kept = text.rstrip("\n")
        return kept != text and kept.strip() != "" and \
            self.tokenizer.encode(text, normalized=True) == self.tokenizer.encode(kept, normalized=True)

    def checked(self, params: SamplingParams | None) -> SamplingParams:
        """`params` validated, with its stop strings normalized as the model's text is (a stop
        typed as letter + nukta must match the precomposed letter the model writes)."""
        params = checked_kind(params)
        params.validate()
        vocab = self.vocab
        if any(token >= vocab for token in params.logit_bias or {}):
            raise bad_param("logit_bias", f"holds a token id outside the vocabulary of {vocab} tokens")
        stops = [normalize_fragment(check_text(s, "stop")) for s in params.stop]
        if not all(stops):
            raise bad_param("stop", f"strings must hold visible text; {params.stop!r} has one that is empty "
                                    "once normalized")
        return replace(params, stop=stops)

    def generate(self, prompts: list[str], params: SamplingParams | None = None) -> list[list[Completion]]:
        """`params.n` completions for each prompt, in prompt order."""
        if isinstance(prompts, (str, bytes)):
            raise wrong_kind("prompts", prompts, "a list of texts", "use [prompt] for one")
        params = self.checked(params)
        prompts = list(prompts)
        return self._generate([self.encode_prompt(p) for p in prompts], params,
                              [self.opens_word(p) for p in prompts])

    def generate_ids(self, contexts: list[list[int]], params: SamplingParams | None = None) -> list[list[Completion]]:
        """Like `generate`, from token ids (each context as `encode_prompt` makes it: a list,
        tuple, NumPy array or 1-D tensor of ids). UserError for an empty context or an id
        outside the vocabulary."""
        params = self.checked(params)
        contexts = contexts.tolist() if hasattr(contexts, "tolist") else contexts  # a 2-D array or tensor: its rows
        if not isinstance(contexts, (list, tuple)) or any(isinstance(c, int) for c in contexts):
            raise wrong_kind("contexts", contexts, "a list of contexts (each a sequence of token ids)",
                             "use [ids] for one")
        return self._generate([self.checked_context(ids) for ids in contexts], params)

    def checked_context(self, ids) -> list[int]:
        """`ids` as a list of Python ints; UserError for an empty context or one that is not token ids
        of this model (the C decode step and the embedding would fail on them, or read past)."""
        if isinstance(ids, str) or not hasattr(ids, "__len__"):
            raise wrong_kind("context", ids, "a sequence of token ids", "encode text with encode_prompt")
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)  # a tensor or array: its Python ints
        if not ids:
            raise UserError("every context needs at least one token (start it with the end-of-document id)")
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.vocab:
                raise bad_param("context", f"holds {i!r}, not a token id of this model (0..{self.vocab - 1}): "
                                           "were the ids made with another tokenizer?")
        return ids

    def _generate(self, contexts: list[list[int]], params: SamplingParams,
                  opens: list[bool] | None = None) -> list[list[Completion]]:
        if not contexts:
            return []
        rows = self._rows(contexts, params, opens)
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
            text = finished_text(self.tokenizer, row.generated)
        return Completion(text, row.generated, row.finish_reason, row.text_logprobs(params))

    def stream(self, prompt: str | list[int], params: SamplingParams | None = None,
               strip_leading: bool = False) -> Iterator[str]:
        """The continuation of one prompt (text, or a context as `encode_prompt` or
        `chat_template.encode_chat` makes it), as pieces of text that are safe to show as they come
        (whole characters and grapheme clusters, never part of a stop string). The pieces joined
        equal `generate([prompt], params)[0][0].text`. `strip_leading`: the caller drops the
        text's leading whitespace (a chat answer's, `chat_template.clean_answer`), so no stop
        string is looked for in it."""
        for step in self.stream_steps(prompt, params, strip_leading):
            if step.text:
                yield step.text

    def stream_steps(self, prompt: str | list[int], params: SamplingParams | None = None,
                     strip_leading: bool = False) -> Iterator[Step]:
        """Like `stream`, one `Step` per sampled token; with `params.logprobs`, each step also
        says what the model was choosing from (for a playground that shows the model's choices)."""
        params = self.checked(params)
        if params.n != 1:
            raise bad_param("n", f"must be 1 for streaming (one sample); set n=1 (got n={params.n})")
        text = isinstance(prompt, (str, bytes)) or prompt is None
        context = self.encode_prompt(prompt) if text else self.checked_context(prompt)
        rows = self._rows([context], params, [self.opens_word(prompt)])
        row = rows[0]
        row.strip_leading = strip_leading
        stops, start = params.stop, 0
        for ids, logprobs in self._run(rows, params, track_text=True):
            end = len(row.decoder.text)
            yield Step(ids[0], shown_text(row, stops), row.finish_reason, logprobs[0] if logprobs else None, start)
            start = end

    # ---- the loop --------------------------------------------------------------------------
    def _rows(self, prompt_ids: list[list[int]], params: SamplingParams, opens: list[bool] | None = None) -> list[Row]:
        return [Row(p, j, list(ids), max(0, len(ids) - self.block_size), StreamDecoder(self.tokenizer),
                    opens_word=bool(opens and opens[p]))
                for p, ids in enumerate(prompt_ids) for j in range(params.n)]

    def sampler(self, params: SamplingParams, rows: list[Row]) -> Sampler:
        """The Sampler of `rows` (the end-of-document token spared the penalties; the first token
        of a row that opens a word kept to one that does)."""
        openers = self.tokenizer.space_openers if any(row.opens_word for row in rows) else None
        return Sampler(params, rows, self.vocab, self.device, self.tokenizer.eod_id, openers)

    # As a decorator, inference_mode is on only while the generator runs, not between steps.
    @torch.inference_mode()
    def _run(self, rows: list[Row], params: SamplingParams, track_text: bool = False):
        """Generate into `rows`; yield (sampled ids, TokenLogprobs or None) of the active rows per step.
        `track_text`: feed each row's stream decoder as tokens come (streaming, stop strings)."""
        eod = self.tokenizer.eod_id
        with evaluating(self.model):
            sampler = self.sampler(params, rows)
            # Decode steps in one C call on CPUs when the kernel can run this model exactly
            # (cpu_decode.py); None: every step through model(...).
            fused = CpuDecoder.for_model(self.model) if self.use_kernel else None
            # Prefill each prompt once (its n samples share it).
            firsts = rows[::params.n]
            cache = self.model.new_cache(len(firsts))
            logits = self.prefill(cache, firsts, fused)
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
                else:  # the policy past the block size
                    for r in active:
                        self.slide(rows[r])
                    logits = self.prefill(cache, [rows[r] for r in active], fused)

    def slide(self, row: Row) -> None:
        """The policy past the block size, for a row whose cache is full: when its context no
        longer fits the block, its window restarts at its last `keep` tokens (one half-block
        prefill every `keep` tokens instead of a full-block forward every token)."""
        if len(row.context) - row.start > self.block_size:
            row.start = len(row.context) - self.keep

    def prefill(self, cache: KVCache, rows: list[Row], fused: CpuDecoder | None = None) -> torch.Tensor:
        """Refill `cache` from the rows' windows (left-padded); last-position logits (B, V). A
        single short window goes through `fused`'s C steps one token at a time when that reads
        fewer weight bytes than PyTorch's fixed cost (STEP_PREFILL_BYTES)."""
        windows = [row.context[row.start:] for row in rows]
        if fused is not None and len(rows) == 1 and len(windows[0]) * fused.weight_bytes <= STEP_PREFILL_BYTES:
            cache.reset()
            for token in windows[0]:
                logits = fused.step(cache, torch.tensor([token]))
            return logits
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



_LEADING_SPACE = re.compile(r"\s*")  # what str.lstrip() drops, matched without copying the text


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
        row.starts.append(before)
        row.decoder.feed(token)
        if params.stop:
            longest = _stop_shape(tuple(params.stop))[0]
            text = row.decoder.text
            hidden = _LEADING_SPACE.match(text).end() if row.strip_leading else 0
            row.stop_at = _find_stop(text, params.stop, max(before - longest + 1, hidden))
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


# Stop strings are matched up to canonical equivalence: the model, like a keyboard, may write
# ো as ে + া or য় as য + ়, and a stop must match however the characters were spelled.
@lru_cache(maxsize=256)
def _spelled_out(text: str) -> str:
    return unicodedata.normalize("NFD", text)


@lru_cache(maxsize=256)
def _stop_pattern(stop: str) -> re.Pattern:
    """A regex for `stop` that also matches each of its characters written in parts."""
    parts = [re.escape(ch) if _spelled_out(ch) == ch else f"(?:{re.escape(ch)}|{re.escape(_spelled_out(ch))})"
             for ch in stop]
    return re.compile("".join(parts))


@lru_cache(maxsize=64)
def _stop_shape(stops: tuple[str, ...]) -> tuple[int, frozenset[str], tuple[str, ...]]:
    """The stops spelled out: the longest one's length, their first characters, and themselves."""
    spelled = tuple(_spelled_out(s) for s in stops)
    return max(map(len, spelled), default=0), frozenset(s[0] for s in spelled), spelled


def _find_stop(text: str, stops: list[str], start: int) -> int | None:
    """Where the earliest stop string in `text` begins, searching from `start`; or None."""
    found = [m.start() for m in (_stop_pattern(s).search(text, max(start, 0)) for s in stops) if m]
    return min(found) if found else None


def _stop_holdback(text: str, stops: list[str]) -> int:
    """Where the earliest suffix of `text` that could still grow into a stop string begins
    (text from there must not be shown yet); len(text) when there is none."""
    longest, firsts, spelled = _stop_shape(tuple(stops))
    for i in range(max(0, len(text) - longest + 1), len(text)):
        head = _spelled_out(text[i])[0]
        if head not in firsts and not unicodedata.combining(head):
            continue  # a starter begins text[i:] spelled out too, and it begins no stop
        tail = _spelled_out(text[i:])
        if any(s.startswith(tail) for s in spelled):
            return i
    return len(text)


@dataclass
class Generation:
    prompt: str
    text: str
    tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


def _model_and_tokenizer(model: object, tokenizer: object) -> tuple[GPT, Tokenizer]:
    """Engine's model and tokenizer, from the two or from a loaded model; UserError for anything else."""
    if isinstance(model, LoadedModel) and tokenizer in (None, model.tokenizer):
        return model.model, model.tokenizer
    if not (isinstance(model, torch.nn.Module) and isinstance(getattr(model, "config", None), ModelConfig)):
        raise wrong_kind("model", model, "a model (GPT) or a loaded model",
                         "load one with load_model(RUN_DIR) and pass it, or its .model and .tokenizer")
    if not isinstance(tokenizer, Tokenizer):
        raise wrong_kind("tokenizer", tokenizer, "a Tokenizer", "the loaded model's .tokenizer, or "
                         "Tokenizer.from_file(PATH)")
    # torch.compile's wrapper: its graph is specialized to the cache length, which every decode step
    # changes, so it recompiled each step until dynamo's limit (seconds a token); the module runs eager.
    model = getattr(model, "_orig_mod", model)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise bad_param("tokenizer", f"has {tokenizer.vocab_size:,} tokens, more than the model's "
                                     f"{model.config.vocab_size:,}: it is another model's; use the model's own")
    return model, tokenizer


def checked_kind(params: object) -> SamplingParams:
    """`params`, or the defaults for None; UserError for anything but SamplingParams."""
    if params is None:
        return SamplingParams()
    if not isinstance(params, SamplingParams):
        fix = "write SamplingParams(**settings)" if isinstance(params, dict) else ""
        raise wrong_kind("params", params, "SamplingParams", fix)
    return params


def generate(loaded: LoadedModel, prompt: str, params: SamplingParams | None = None) -> Generation:
    """One continuation of `prompt` by a loaded model: the simplest front of the engine (several
    samples, n > 1, and their logprobs come from `Engine.generate`). UserError for a bad
    argument: a path for `loaded`, a list of prompts, a dict of settings."""
    loaded = check_loaded(loaded)
    if isinstance(prompt, (list, tuple)):
        raise wrong_kind("prompt", prompt, "one text (str)", "for several prompts use "
                         "Engine(loaded.model, loaded.tokenizer).generate(prompts, params)")
    params = checked_kind(params)
    if params.n != 1:
        raise bad_param("n", f"generate() returns one continuation; for {params.n} samples per prompt use "
                             "Engine(loaded.model, loaded.tokenizer).generate([prompt], params)")
    [[completion]] = Engine(loaded.model, loaded.tokenizer).generate([prompt], params)
    return Generation(prompt=prompt, text=completion.text, tokens=len(completion.token_ids))
