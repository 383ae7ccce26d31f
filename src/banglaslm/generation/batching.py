"""Continuous batching: many generations, each with its own settings, share every decode step.

    batch = Batch(engine)
    batch.add(Sequence(engine.encode_prompt("আমি"), SamplingParams(seed=1), on_done=print))
    while not batch.idle:
        batch.step()

A sequence joins after its own prefill and leaves as soon as it ends; each has its own KV-cache
row and length, so it computes exactly what it would alone (same seed, same text). The server
runs every request through one `Batch`; docs/generation.md says more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..config import SamplingParams
from ..model import KVCache
from .cpu_decode import CpuDecoder
from .engine import Completion, Engine, Row, Step, accept_token, shown_text
from .sampling import Sampler
from .stream import StreamDecoder


@dataclass
class Sequence:
    """One generation: `context` is [eod] + prompt ids (as `Engine.encode_prompt` makes them),
    `params` its sampling (n = 1; the seed is this sample's own)."""
    context: list[int]
    params: SamplingParams
    on_step: Callable[[Step], None] | None = None   # every sampled token, as Engine.stream_steps
    # At the end: (the Completion, None), or (None, the exception that stopped it).
    on_done: Callable[[Completion | None, BaseException | None], None] | None = None
    check: Callable[[], None] | None = None         # called before each step; may raise to stop
    opens_word: bool = False                         # the prompt ended in a space (`Row.opens_word`)
    strip_leading: bool = False                      # the text's leading whitespace is not shown (`Row.strip_leading`)


@dataclass
class _Live:
    """A running sequence and its decoding state."""
    seq: Sequence
    params: SamplingParams           # seq.params, checked and its stop strings normalized
    row: Row
    sampler: Sampler
    track_text: bool
    next_token: int = 0
    length: int = 0                  # filled slots in its KV cache row
    slot: int | None = None          # its row of the shared cache (C path)
    cache: KVCache | None = None     # its own cache (PyTorch path)
    start: int = 0                   # where the next token's text begins (Step.start)
    shown: list[str] = field(default_factory=list)


class Batch:
    """Runs `Sequence`s together (see the module docstring). Not thread-safe: one thread adds
    and steps. `capacity`: how many sequences may run at once (`full` says when to wait)."""

    def __init__(self, engine: Engine, capacity: int = 16):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.engine, self.model, self.capacity = engine, engine.model, capacity
        self.live: list[_Live] = []
        self.fused: CpuDecoder | None = None
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.free: list[int] = []

    @property
    def idle(self) -> bool:
        return not self.live

    @property
    def full(self) -> bool:
        return len(self.live) >= self.capacity

    @torch.inference_mode()
    def add(self, seq: Sequence) -> None:
        """Prefill `seq`, sample its first token and let it join the running batch. Its
        callbacks run from here and from `step`; an error ends only this sequence."""
        if self.full:
            raise RuntimeError("the batch is full; wait until `full` is False")
        if self.idle:
            self._choose_path()
        block = self.model.config.block_size
        row = Row(0, 0, list(seq.context), max(0, len(seq.context) - block), StreamDecoder(self.engine.tokenizer),
                  opens_word=seq.opens_word, strip_leading=seq.strip_leading)
        live = None
        try:
            params = self.engine.checked(seq.params)
            if params.n != 1:
                raise ValueError(f"a Sequence is one sample; got n={params.n}")
            live = _Live(seq, params, row, self.engine.sampler(params, [row]),
                         track_text=bool(params.stop) or seq.on_step is not None)
            if seq.check:
                seq.check()
            logits = self._prefill(live)
        except Exception as exc:  # noqa: BLE001 - handed to the sequence's owner (Ctrl-C is not)
            if live is not None:
                self._release(live)
            self._finish(seq, None, exc)
            return
        if self._advance(live, logits):
            self.live.append(live)
        else:
            self._release(live)

    @torch.inference_mode()
    def step(self) -> None:
        """One token for every running sequence."""
        block = self.model.config.block_size
        decode, refill = [], []
        for live in list(self.live):
            try:
                if live.seq.check:
                    live.seq.check()
            except Exception as exc:  # noqa: BLE001
                self._drop(live, exc)
                continue
            (decode if live.length < block else refill).append(live)
        logits: dict[int, torch.Tensor] = {}
        if decode and self.fused is not None:
            out = self.fused.step_rows(
                self.keys, self.values, torch.tensor([x.next_token for x in decode]),
                torch.tensor([x.length for x in decode]), torch.tensor([x.slot for x in decode]))
            for i, live in enumerate(decode):
                live.length += 1
                logits[id(live)] = out[i:i + 1]
        else:
            for live in decode:
                token = torch.tensor([[live.next_token]], device=self.engine.device)
                logits[id(live)] = self.engine.forward(live.cache, token)[:, -1]
                live.length = live.cache.length
        for live in refill:  # the engine's policy past the block size, for this sequence alone
            self.engine.slide(live.row)
            try:
                logits[id(live)] = self._prefill(live)
            except Exception as exc:  # noqa: BLE001
                self._drop(live, exc)
        for live in decode + refill:
            if id(live) in logits and not self._advance(live, logits[id(live)]):
                self.live.remove(live)
                self._release(live)

    def abort(self, exc: BaseException) -> None:
        """End every running sequence with `exc` (after an unexpected error in a step)."""
        for live in list(self.live):
            self._drop(live, exc)

    # ---- inside ----------------------------------------------------------------------------
    def _choose_path(self) -> None:
        """C decode steps over a shared cache when the kernel can run the model; else each
        sequence with its own cache through model(...). Decided whenever the batch starts."""
        self.model.eval()
        self.fused = CpuDecoder.for_model(self.model) if self.engine.use_kernel else None
        if self.fused is None:
            return
        cfg = self.model.config
        shape = (self.capacity, cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head)
        if not self.keys or self.keys[0].shape != shape:
            self.keys = [torch.zeros(shape) for _ in range(cfg.n_layer)]
            self.values = [torch.zeros(shape) for _ in range(cfg.n_layer)]
        self.free = list(range(self.capacity))[::-1]

    def _prefill(self, live: _Live) -> torch.Tensor:
        """Fill the sequence's cache from its window; the last position's logits (1, V)."""
        cache = self.model.new_cache(1)
        logits = self.engine.prefill(cache, [live.row], self.fused)
        live.length = cache.length
        if self.fused is None:
            live.cache = cache
            return logits
        if live.slot is None:
            live.slot = self.free.pop()
        for layer in range(len(self.keys)):
            self.keys[layer][live.slot, :, :cache.length] = cache.k[layer][0, :, :cache.length]
            self.values[layer][live.slot, :, :cache.length] = cache.v[layer][0, :, :cache.length]
        return logits

    def _advance(self, live: _Live, logits: torch.Tensor) -> bool:
        """Sample the sequence's next token from `logits` (1, V) and report it; whether it goes on."""
        seq, row, params = live.seq, live.row, live.params
        try:
            ids, logprobs = live.sampler(logits)
            live.sampler.update(ids)
            token, logprob = int(ids[0]), (logprobs[0] if logprobs else None)
            going = accept_token(row, token, logprob, params, self.engine.tokenizer.eod_id, live.track_text)
            if seq.on_step is not None:
                end = len(row.decoder.text)
                text = shown_text(row, params.stop)
                live.shown.append(text)
                seq.on_step(Step(token, text, row.finish_reason, logprob, live.start))
                live.start = end
        except Exception as exc:  # noqa: BLE001
            self._finish(seq, None, exc)
            return False
        live.next_token = token
        if not going:
            if seq.on_step is not None:  # the streamed pieces are the text
                done = Completion("".join(live.shown), row.generated, row.finish_reason, row.text_logprobs(params))
            else:
                done = self.engine.completion(row, params)
            self._finish(seq, done, None)
        return going

    def _drop(self, live: _Live, exc: BaseException) -> None:
        self.live.remove(live)
        self._release(live)
        self._finish(live.seq, None, exc)

    def _release(self, live: _Live) -> None:
        if live.slot is not None:
            self.free.append(live.slot)
            live.slot = None
        live.cache = None

    @staticmethod
    def _finish(seq: Sequence, done: Completion | None, exc: BaseException | None) -> None:
        if seq.on_done is None:
            return
        try:
            seq.on_done(done, exc)
        except Exception:  # noqa: BLE001 - its owner is gone (e.g. a closed event loop); the rest go on
            pass
