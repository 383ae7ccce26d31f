"""The OpenAI-compatible API as a plain class: what each route answers, without HTTP.

`OpenAIService` turns validated requests into generations on the worker thread and their
results into OpenAI's response shapes; the FastAPI app (`app`) only routes to it. Concurrent
requests share decode steps but each gets exactly the text it would get alone (same seed,
same text, streamed or not).
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from ..config import SamplingParams
from ..errors import UserError
from ..generation.batching import Batch, Sequence
from ..generation.chat_template import chat_stops, clean_answer, render_chat
from ..generation.engine import Completion, Engine
from ..generation.sampling import sample_seed
from .events import ChoiceStream, LogprobFormat, sse
from .schemas import (
    APIError,
    ChatRequest,
    CompletionRequest,
    SamplingRequest,
    ServerLimits,
    error_body,
    message_text,
    sampling_params,
)
from .worker import Admit, GenerationWorker, Job, Stopped

Disconnected = Callable[[], Awaitable[bool]]  # whether the client has gone away


class OpenAIService:
    def __init__(self, engine: Engine, model_id: str, limits: ServerLimits | None = None):
        self.engine, self.model_id = engine, model_id
        self.limits = limits or ServerLimits()
        self.worker = GenerationWorker(Batch(engine, capacity=self.limits.max_batch))
        self.created = int(time.time())

    # ---- routes ----------------------------------------------------------------------------
    def models(self) -> dict:
        return {"object": "list", "data": [self.model_info(self.model_id)]}

    def model_info(self, name: str) -> dict:
        self.check_model(name)
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "banglaslm"}

    async def completions(self, req: CompletionRequest, disconnected: Disconnected) -> dict | AsyncIterator[str]:
        """The response body, or (with `stream`) the server-sent events to send."""
        self.check_model(req.model)
        params = sampling_params(req, self.limits)
        prompt = req.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise APIError(400, f"prompt: give one text (or a list of one), got a list of {len(prompt)}",
                               param="prompt", code="invalid_value")
            prompt = prompt[0]
        if req.stream:
            return await self.stream(req, prompt, params, disconnected, chat=False)
        ids, outs = await self.generate(prompt, params)
        choices = [{"index": i, "text": c.text, "logprobs": self._logprobs(c, chat=False),
                    "finish_reason": c.finish_reason} for i, c in enumerate(outs)]
        return self._response("cmpl-", "text_completion", choices, ids, outs)

    async def chat_completions(self, req: ChatRequest, disconnected: Disconnected) -> dict | AsyncIterator[str]:
        self.check_model(req.model)
        params = sampling_params(req, self.limits)
        params.stop = params.stop + chat_stops()
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": message_text(m, i)}
                    for i, m in enumerate(req.messages)]
        prompt = render_chat(messages)
        if req.stream:
            return await self.stream(req, prompt, params, disconnected, chat=True)
        ids, outs = await self.generate(prompt, params)
        choices = [{"index": i, "message": {"role": "assistant", "content": clean_answer(c.text)},
                    "logprobs": self._logprobs(c, chat=True), "finish_reason": c.finish_reason}
                   for i, c in enumerate(outs)]
        return self._response("chatcmpl-", "chat.completion", choices, ids, outs)

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_id:
            raise APIError(404, f"the model {name!r} does not exist; this server has {self.model_id!r}",
                           param="model", code="model_not_found")

    def close(self) -> None:
        """Stop every running or waiting generation (at shutdown)."""
        self.worker.cancel_all()

    # ---- generation on the worker ----------------------------------------------------------
    def _encode(self, prompt: str) -> list[int]:
        try:
            ids = self.engine.encode_prompt(prompt)
        except UserError as exc:
            raise APIError(400, str(exc), param="prompt", code="invalid_value") from None
        if len(ids) > self.limits.max_prompt_tokens:
            raise APIError(400, f"the prompt has {len(ids)} tokens; the limit is {self.limits.max_prompt_tokens}",
                           param="prompt", code="context_length_exceeded")
        return ids

    def _job(self, fn) -> Job:
        return Job(fn, time.monotonic() + self.limits.request_timeout_s)

    @staticmethod
    def _samples(params: SamplingParams) -> list[SamplingParams]:
        """One SamplingParams per choice, each with its own seed (as Engine does for n samples)."""
        base = params.seed if params.seed is not None else random.randrange(2**62)
        return [SamplingParams(**{**params.__dict__, "n": 1, "seed": sample_seed(base, i)}) for i in range(params.n)]

    async def generate(self, prompt: str, params: SamplingParams) -> tuple[list[int], list[Completion]]:
        """The prompt's ids and its `params.n` completions; an error in one stops them all."""
        def work(job: Job):
            ids = self._encode(prompt)
            outs: dict[int, Completion] = {}

            def collect(index: int, completion: Completion | None, error: BaseException | None) -> None:
                if job.finished:
                    return
                if error is not None:
                    job.finished = True
                    job.cancel()  # the other choices stop too
                    job.resolve(None, error)
                    return
                outs[index] = completion
                if len(outs) == params.n:
                    job.finished = True
                    job.resolve((ids, [outs[i] for i in range(params.n)]), None)
            return Admit([Sequence(ids, one, check=job.check, on_done=functools.partial(collect, i))
                          for i, one in enumerate(self._samples(params))])
        return await self.worker.run(self._job(work))

    async def _prompt_tokens(self, prompt: str) -> int:
        return await self.worker.run(self._job(lambda job: len(self._encode(prompt))))

    async def _choice_events(self, prompt: str, params: SamplingParams, strip_leading: bool,
                             disconnected: Disconnected) -> AsyncIterator[tuple]:
        """The events of every choice (`events.ChoiceStream`), generated side by side on the
        worker; the generation stops if the client goes away."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        done = asyncio.Event()
        outcome: dict = {}

        def finished(result, error):
            def settle():
                outcome["error"] = error
                done.set()
            loop.call_soon_threadsafe(settle)

        def emit(item):
            loop.call_soon_threadsafe(events.put_nowait, item)

        def work(job: Job):
            ids = self._encode(prompt)
            ended: set[int] = set()

            def end(index: int, error: BaseException | None) -> None:
                ended.add(index)
                if error is not None and not job.finished:
                    job.finished = True
                    job.cancel()  # the other choices stop too
                    finished(None, error)
                elif len(ended) == params.n and not job.finished:
                    job.finished = True
                    finished(None, None)
            eod = self.engine.tokenizer.eod_id
            return Admit([ChoiceStream(index, eod, strip_leading, job, emit, end).sequence(ids, one)
                          for index, one in enumerate(self._samples(params))])

        job = self._job(work)
        self.worker.submit(job, finished)
        try:
            async for event in _drain(events, done, outcome, disconnected, job):
                yield event
        finally:
            job.cancel()  # no-op once the job is done; stops it when the client left

    # ---- responses -------------------------------------------------------------------------
    @staticmethod
    def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    def _logprobs(self, completion: Completion, chat: bool) -> dict | None:
        if completion.logprobs is None:
            return None
        return LogprobFormat(self.engine.tokenizer, chat)(completion.logprobs)

    def _response(self, prefix: str, kind: str, choices: list, ids: list[int], outs: list[Completion]) -> dict:
        return {"id": prefix + uuid.uuid4().hex, "object": kind, "created": int(time.time()),
                "model": self.model_id, "system_fingerprint": None, "choices": choices,
                "usage": self._usage(len(ids), sum(len(c.token_ids) for c in outs))}

    async def stream(self, req: SamplingRequest, prompt: str, params: SamplingParams, disconnected: Disconnected,
                     chat: bool) -> AsyncIterator[str]:
        """Server-sent events for a streamed request. The prompt is checked first, so its
        errors are still plain 4xx answers; later errors are sent as an error event."""
        prompt_tokens = await self._prompt_tokens(prompt)
        chunks = _Chunks(self.model_id, chat, params, self.engine.tokenizer)
        include_usage = bool((req.stream_options or {}).get("include_usage"))

        async def body():
            completion_tokens = 0
            try:
                async for event in self._choice_events(prompt, params, chat, disconnected):
                    if event[0] == "end":
                        completion_tokens += event[3]
                    for chunk in chunks.of(event):
                        yield sse(chunk)
            except APIError as exc:
                yield sse(error_body(exc.message, exc.type, exc.param, exc.code))
            except UserError as exc:
                yield sse(error_body(str(exc)))
            if include_usage:
                yield sse(chunks.chunk([], usage=self._usage(prompt_tokens, completion_tokens)))
            yield sse("[DONE]")
        return body()


class _Chunks:
    """The chunks (OpenAI's streamed objects) of one streamed response, event by event."""

    def __init__(self, model_id: str, chat: bool, params: SamplingParams, tokenizer):
        self.model_id, self.chat, self.params = model_id, chat, params
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.formats = [LogprobFormat(tokenizer, chat) for _ in range(params.n)]
        self.started: set[int] = set()

    def chunk(self, choices: list, **extra) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model_id, "system_fingerprint": None,
                "choices": choices, **extra}

    def _choice(self, index: int, content: str | None = None, finish: str | None = None, role: bool = False,
                logprobs: list | None = None) -> dict:
        shown = self.formats[index](logprobs) if logprobs and self.params.logprobs is not None else None
        if not self.chat:
            return {"index": index, "text": content or "", "logprobs": shown, "finish_reason": finish}
        delta: dict = {}
        if role:
            delta = {"role": "assistant", "content": ""}
        elif content is not None:
            delta = {"content": content}
        return {"index": index, "delta": delta, "logprobs": shown, "finish_reason": finish}

    def of(self, event: tuple) -> list[dict]:
        """The chunks for one ("piece", ...) or ("end", ...) event of `events.ChoiceStream`."""
        kind, index = event[0], event[1]
        out = []
        if self.chat and index not in self.started:
            self.started.add(index)
            out.append(self.chunk([self._choice(index, role=True)]))
        if kind == "piece":
            out.append(self.chunk([self._choice(index, event[2], logprobs=event[3])]))
        else:
            out.append(self.chunk([self._choice(index, None if self.chat else "", finish=event[2],
                                                logprobs=event[4])]))
        return out


async def _drain(events: asyncio.Queue, done: asyncio.Event, outcome: dict, disconnected: Disconnected,
                 job: Job) -> AsyncIterator[tuple]:
    """Events as they come until the job is done; checks the client every 0.25 s (between
    pieces and while waiting) and cancels the job when it has gone."""
    checked = time.monotonic()
    while True:
        if time.monotonic() - checked > 0.25:
            checked = time.monotonic()
            if await disconnected():
                job.cancel()
                return
        if not events.empty():
            yield events.get_nowait()
            continue
        getter = asyncio.ensure_future(events.get())
        waiter = asyncio.ensure_future(done.wait())
        await asyncio.wait({getter, waiter}, timeout=0.25, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            waiter.cancel()
            yield getter.result()
            continue
        getter.cancel()
        if waiter.done():
            while not events.empty():
                yield events.get_nowait()
            error = outcome.get("error")
            if error is not None and not isinstance(error, Stopped):
                raise error
            return
        waiter.cancel()
