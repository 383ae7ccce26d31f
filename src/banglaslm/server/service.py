"""The OpenAI-compatible API as a plain class: what each route answers, without HTTP.

`OpenAIService` turns validated requests into generations on the worker thread and their
results into OpenAI's response shapes; the FastAPI app (`app`) only routes to it. Concurrent
requests share decode steps but each gets exactly the text it would get alone (same seed,
same text, streamed or not). A request whose client goes away stops its generations.
"""

from __future__ import annotations

import asyncio
import functools
import random
import sys
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from ..chat_template import (
    ROLE_ALIASES,
    chat_stops,
    clean_answer,
    encode_chat,
    render_chat,
)
from ..config import SamplingParams
from ..errors import UserError
from ..evaluation.perplexity import window_logprobs
from ..generation.batching import Batch, Sequence
from ..generation.engine import Completion, Engine
from ..generation.sampling import sample_seed
from .events import ChoiceStream, LogprobFormat, sse
from .schemas import (
    APIError,
    ChatRequest,
    CompletionRequest,
    SamplingRequest,
    ServerLimits,
    check_supported,
    error_body,
    message_text,
    sampling_params,
)
from .worker import (
    Admit,
    GenerationWorker,
    Job,
    Steps,
    Stopped,
    request_error,
    shutting_down,
)

Disconnected = Callable[[], Awaitable[bool]]  # whether the client has gone away
WATCH_S = 0.25  # how often a waiting request checks that its client is still there


@dataclass
class Chat:
    """The messages of a chat request, rendered with the chat template on the worker."""
    messages: list[dict]


@dataclass
class Prompt:
    """One prompt of a request: the context the model sees, and what `echo` returns."""
    context: list[int]              # [eod] + the prompt's ids
    text: str                       # the prompt's ids decoded: the text as the model read it (normalized)
    opens_word: bool = False        # it ended in a space: the answer's first token opens a word
    scored: list = field(default_factory=list)  # window_logprobs of context[1:], when echoed with logprobs
    added: int = 1                  # the leading eod is the server's (0: the client's ids began with it)
    # The answer's leading whitespace is not shown (nor a stop looked for in it): a chat answer's
    # (`clean_answer`), and the space a prompt that ended in one, unechoed, already has.
    strip_leading: bool = False

    @property
    def tokens(self) -> int:
        """The prompt's tokens, as usage and the limit count them (the client's)."""
        return len(self.context) - self.added

    def echoed(self) -> tuple[list[int], list]:
        """The client's tokens and, for each, (log-probability, top) given what precedes it (the
        first one's is not used: OpenAI's is null)."""
        return self.context[self.added:], self.scored if self.added else [None, *self.scored]


class OpenAIService:
    def __init__(self, engine: Engine, model_id: str, limits: ServerLimits | None = None):
        self.engine, self.model_id = engine, model_id
        self.limits = limits or ServerLimits()
        self.worker = GenerationWorker(Batch(engine, capacity=self.limits.max_batch))
        # No prompt longer than this can fit the token limit: refused before normalizing a megabyte.
        longest = max(len(engine.tokenizer.token_bytes(i)) for i in range(engine.tokenizer.vocab_size))
        self.max_prompt_chars = self.limits.max_prompt_tokens * max(longest, 1)
        self.created = int(time.time())

    # ---- routes ----------------------------------------------------------------------------
    def models(self) -> dict:
        return {"object": "list", "data": [self.model_info(self.model_id)]}

    def model_info(self, name: str) -> dict:
        self.check_model(name)
        # max_model_len (vLLM's name): the tokens the model sees at once; a longer context keeps its last ones
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "banglaslm",
                "max_model_len": self.engine.block_size}

    async def completions(self, req: CompletionRequest, disconnected: Disconnected) -> dict | AsyncIterator[str]:
        """The response body, or (with `stream`) the server-sent events to send."""
        params, deadline = self._params(req), self._deadline()
        echo, generate = bool(req.echo), req.max_tokens != 0
        prompts = await self._prompts(self._prompt_items(req.prompt), params, disconnected, deadline, echo)
        for prompt in prompts:  # "একদিন সকালে " + " নদী" was a double space; an echo reads without it
            prompt.strip_leading = prompt.opens_word and not echo
        if req.stream:
            return self.stream(req, prompts, params, disconnected, deadline, chat=False, echo=echo)
        outs = await self.generate(prompts, params, disconnected, deadline) if generate else []
        # in a thread: the logprobs of a long echoed prompt take seconds to lay out, the other streams go on
        choices = await asyncio.to_thread(self._completion_choices, prompts, outs, echo, params)
        usage = self._usage(sum(p.tokens for p in prompts), sum(len(c.token_ids) for c in outs))
        return self._response("cmpl-", "text_completion", choices, usage)

    async def chat_completions(self, req: ChatRequest, disconnected: Disconnected) -> dict | AsyncIterator[str]:
        params = self._params(req)
        params.stop = params.stop + chat_stops(tokenizer=self.engine.tokenizer)
        messages = [{"role": ROLE_ALIASES.get(m.role, m.role), "content": message_text(m, i)}
                    for i, m in enumerate(req.messages)]
        deadline = self._deadline()
        prompts = await self._prompts([Chat(messages)], params, disconnected, deadline)
        if req.stream:
            return self.stream(req, prompts, params, disconnected, deadline, chat=True)
        outs = await self.generate(prompts, params, disconnected, deadline)
        choices = [{"index": i, "message": {"role": "assistant", "content": clean_answer(c.text)},
                    "logprobs": self._logprobs(c, chat=True), "finish_reason": c.finish_reason}
                   for i, c in enumerate(outs)]
        usage = self._usage(prompts[0].tokens, sum(len(c.token_ids) for c in outs))
        return self._response("chatcmpl-", "chat.completion", choices, usage)

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_id:
            raise APIError(404, f"the model {name!r} does not exist; this server has {self.model_id!r}",
                           param="model", code="model_not_found")

    def open(self) -> None:
        """Take requests (a service starts open; after `close`, again)."""
        self.worker.closing = False

    def close(self) -> None:
        """Stop every running or waiting generation and refuse new ones (at shutdown): each
        request answers 503 `server_shutdown`, a stream as an error event and [DONE]."""
        self.worker.cancel_all()

    # ---- checking a request ----------------------------------------------------------------
    def _params(self, req: SamplingRequest) -> SamplingParams:
        """The request's sampling, checked in full before any work: every field supported, every
        value in range, stop strings valid text (a 400 naming the field otherwise)."""
        self.check_model(req.model)
        check_supported(req)
        try:
            return self.engine.checked(sampling_params(req, self.limits))
        except UserError as exc:
            raise APIError(400, str(exc), param=exc.param, code="invalid_value") from None

    def _prompt_items(self, prompt) -> list[str | list[int]]:
        """The prompts of a completions request: one text, texts, one list of token ids, or lists."""
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            items = [prompt]
        else:
            items = list(prompt)
        if not items:
            raise APIError(400, "prompt: give at least one prompt", param="prompt", code="invalid_value")
        if len(items) > self.limits.max_n:
            raise APIError(400, f"prompt: at most {self.limits.max_n} prompts in one request, got {len(items)}",
                           param="prompt", code="invalid_value")
        return items

    def _encode(self, item: str | list[int] | Chat) -> Prompt:
        """The prompt's context, checked against the limits (in a thread of its own: a long
        prompt's normalizing and encoding do not hold up the worker's decode steps)."""
        if isinstance(item, Chat):
            prompt = self._encode_chat(item)
        elif isinstance(item, str):
            prompt = self._encode_text(item)
        else:
            prompt = self._encode_ids(item)
        if prompt.tokens > self.limits.max_prompt_tokens:
            raise APIError(400, f"the prompt has {prompt.tokens} tokens; the limit is "
                                f"{self.limits.max_prompt_tokens}", param="prompt", code="context_length_exceeded")
        return prompt

    def _check_length(self, chars: int, param: str) -> None:
        """Refuse unread a prompt longer than the token limit could hold."""
        if chars > self.max_prompt_chars:
            raise APIError(400, f"the prompt has {chars} characters, more than {self.limits.max_prompt_tokens} "
                                f"tokens can hold ({self.max_prompt_chars}); the limit is "
                                f"{self.limits.max_prompt_tokens} tokens", param=param, code="context_length_exceeded")

    def _encode_chat(self, chat: Chat) -> Prompt:
        self._check_length(sum(len(m["content"]) for m in chat.messages), "messages")
        try:
            return Prompt(encode_chat(self.engine.tokenizer, chat.messages)[0], render_chat(chat.messages),
                          strip_leading=True)
        except UserError as exc:
            raise APIError(400, str(exc), param="messages", code="invalid_value") from None

    def _encode_text(self, text: str) -> Prompt:
        self._check_length(len(text), "prompt")
        try:
            context = self.engine.encode_prompt(text)
        except UserError as exc:
            raise APIError(400, str(exc), param="prompt", code="invalid_value") from None
        return Prompt(context, self.engine.tokenizer.decode(context[1:]),  # as read: normalized
                      opens_word=self.engine.opens_word(text))

    def _encode_ids(self, ids: list[int]) -> Prompt:
        vocab = self.engine.vocab
        if not ids or any(t < 0 or t >= vocab for t in ids):
            raise APIError(400, f"prompt: token ids must be in [0, {vocab}) and not empty", param="prompt",
                           code="invalid_value")
        eod = self.engine.tokenizer.eod_id
        # Every document starts after the end-of-document token: put first unless the client did
        # (lm-eval's add_bos_token, with the exported tokenizer's BOS), never twice.
        added = int(ids[0] != eod)
        return Prompt([eod] * added + ids, self.engine.tokenizer.decode(ids), added=added)

    def _scoring(self, prompts: list[Prompt], params: SamplingParams) -> Iterator[None]:
        """Runs on the worker a window at a time (`Steps`), between the decode steps of other
        requests: each echoed prompt's token log-probabilities (plain softmax)."""
        for prompt in prompts:
            for scored in window_logprobs(self.engine.model, prompt.context, top=params.logprobs):
                prompt.scored.extend(scored)
                yield

    # ---- generation on the worker ----------------------------------------------------------
    def _deadline(self) -> float:
        """When a request that starts now is out of time: its scoring and its generation share it."""
        return time.monotonic() + self.limits.request_timeout_s

    @staticmethod
    def _samples(params: SamplingParams) -> list[SamplingParams]:
        """One SamplingParams per choice, each with its own seed (as Engine does for n samples)."""
        base = params.seed if params.seed is not None else random.randrange(2**62)
        return [SamplingParams(**{**params.__dict__, "n": 1, "seed": sample_seed(base, i)}) for i in range(params.n)]

    async def _prompts(self, items: list, params: SamplingParams, disconnected: Disconnected, deadline: float,
                       echo: bool = False) -> list[Prompt]:
        """The request's prompts, encoded and checked (and with echo and logprobs, scored on the
        worker) before any generation, so that their errors are plain 4xx answers."""
        if self.worker.closing:
            raise shutting_down()
        prompts = await asyncio.to_thread(lambda: [self._encode(item) for item in items])
        if echo and params.logprobs is not None:
            await self._until_done(Job(lambda job: Steps(self._scoring(prompts, params)), deadline), disconnected)
        return prompts

    async def generate(self, prompts: list[Prompt], params: SamplingParams, disconnected: Disconnected,
                       deadline: float) -> list[Completion]:
        """The `params.n` completions of each prompt (prompt-major); an error in one stops them all."""
        def work(job: Job):
            outs: dict[int, Completion] = {}
            total = len(prompts) * params.n

            def collect(index: int, completion: Completion | None, error: BaseException | None) -> None:
                if job.finished:
                    return
                if error is not None:
                    job.finished = True
                    job.cancel()  # the other choices stop too
                    job.resolve(None, error)
                    return
                outs[index] = completion
                if len(outs) == total:
                    job.finished = True
                    job.resolve([outs[i] for i in range(total)], None)
            return Admit([Sequence(p.context, one, check=job.check, on_done=functools.partial(collect, i * params.n + j),
                                   opens_word=p.opens_word, strip_leading=p.strip_leading)
                          for i, p in enumerate(prompts) for j, one in enumerate(self._samples(params))])
        return await self._until_done(Job(work, deadline), disconnected)

    async def _until_done(self, job: Job, disconnected: Disconnected):
        """The job's result; if the client goes away meanwhile, the job is cancelled."""
        task = asyncio.ensure_future(self.worker.run(job))
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=WATCH_S)
                if done:
                    return task.result()
                if await disconnected():
                    job.cancel()
                    raise APIError(499, "the client closed the connection", code="client_closed_request")
        finally:
            if not task.done():
                job.cancel()
                task.cancel()

    async def _choice_events(self, prompts: list[Prompt], params: SamplingParams, disconnected: Disconnected,
                             deadline: float) -> AsyncIterator[tuple]:
        """The events of every choice (`events.ChoiceStream`), generated side by side on the
        worker; the generation stops if the client goes away."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        done = asyncio.Event()
        outcome: dict = {}
        total = len(prompts) * params.n

        def finished(result, error):
            def settle():
                outcome["error"] = error
                done.set()
            loop.call_soon_threadsafe(settle)

        def emit(item):
            loop.call_soon_threadsafe(events.put_nowait, item)

        def work(job: Job):
            ended: set[int] = set()

            def end(index: int, error: BaseException | None) -> None:
                ended.add(index)
                if error is not None and not job.finished:
                    job.finished = True
                    job.cancel()  # the other choices stop too
                    finished(None, error)
                elif len(ended) == total and not job.finished:
                    job.finished = True
                    finished(None, None)
            eod = self.engine.tokenizer.eod_id
            return Admit([ChoiceStream(i * params.n + j, eod, p.strip_leading, job, emit, end).sequence(
                p.context, one, p.opens_word) for i, p in enumerate(prompts) for j, one in enumerate(self._samples(params))])

        job = Job(work, deadline)
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

    def _completion_choices(self, prompts: list[Prompt], outs: list[Completion], echo: bool,
                            params: SamplingParams) -> list[dict]:
        """Each prompt's `params.n` choices, in order (with no outputs, for `max_tokens` 0)."""
        empty = Completion("", [], "length", [] if params.logprobs is not None else None)
        return [self._completion_choice(i * params.n + j, prompt, outs[i * params.n + j] if outs else empty, echo, params)
                for i, prompt in enumerate(prompts) for j in range(params.n)]

    def _completion_choice(self, index: int, prompt: Prompt, out: Completion, echo: bool,
                           params: SamplingParams) -> dict:
        text, logprobs = clean_answer(out.text) if prompt.strip_leading else out.text, None
        if params.logprobs is not None:
            fmt = LogprobFormat(self.engine.tokenizer, chat=False, strip_leading=prompt.strip_leading)
            logprobs = fmt.prompt(*prompt.echoed(), prompt.text) if echo else None
            tail = fmt(out.logprobs or [])
            logprobs = tail if logprobs is None else {k: logprobs[k] + tail[k] for k in logprobs}
        if echo:
            text = prompt.text + text
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": out.finish_reason}

    def _response(self, prefix: str, kind: str, choices: list, usage: dict) -> dict:
        return {"id": prefix + uuid.uuid4().hex, "object": kind, "created": int(time.time()),
                "model": self.model_id, "system_fingerprint": None, "choices": choices, "usage": usage}

    def stream(self, req: SamplingRequest, prompts: list[Prompt], params: SamplingParams, disconnected: Disconnected,
               deadline: float, chat: bool, echo: bool = False) -> AsyncIterator[str]:
        """Server-sent events for a streamed request, once its prompts are checked (`_prompts`);
        an error after the stream has begun is sent as an error event, and every stream ends
        with [DONE]. Every choice ends with a chunk holding its finish_reason."""
        chunks = _Chunks(self.model_id, chat, params, self.engine.tokenizer, [p.strip_leading for p in prompts])
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        generate = getattr(req, "max_tokens", None) != 0

        async def body():
            completion_tokens = 0
            try:
                # in a thread, as a non-streamed answer's: a long prompt's logprobs take seconds to lay out
                for event in await asyncio.to_thread(lambda: [sse(c) for c in chunks.echoes(prompts)]) if echo else ():
                    yield event
                events = (self._choice_events(prompts, params, disconnected, deadline) if generate
                          else _scored_only(len(prompts) * params.n))
                async for event in events:
                    if event[0] == "end":
                        completion_tokens += event[3]
                    for chunk in chunks.of(event):
                        yield sse(chunk)
            except APIError as exc:
                yield sse(error_body(exc.message, exc.type, exc.param, exc.code))
            except UserError as exc:
                yield sse(error_body(str(exc), param=exc.param))
            except Exception as exc:  # noqa: BLE001 - a bug: say so in the stream, log it, end the stream
                traceback.print_exception(exc, file=sys.stderr)
                yield sse(error_body(f"the server failed while generating ({type(exc).__name__})",
                                     type="server_error", code="internal_error"))
            if include_usage:
                usage = self._usage(sum(p.tokens for p in prompts), completion_tokens)
                yield sse(chunks.chunk([], usage=usage))
            yield sse("[DONE]")
        return body()


async def _scored_only(choices: int) -> AsyncIterator[tuple]:
    """The end events of choices that generate nothing (echo with max_tokens 0)."""
    for index in range(choices):
        yield ("end", index, "length", 0, [])


class _Chunks:
    """The chunks (OpenAI's streamed objects) of one streamed response, event by event."""

    def __init__(self, model_id: str, chat: bool, params: SamplingParams, tokenizer, strips: list[bool]):
        self.model_id, self.chat, self.params = model_id, chat, params
        self.strips = strips  # each prompt's Prompt.strip_leading
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.formats: dict[int, LogprobFormat] = {}
        self.tokenizer = tokenizer
        self.started: set[int] = set()

    def _format(self, index: int) -> LogprobFormat:
        return self.formats.setdefault(index, LogprobFormat(self.tokenizer, self.chat,
                                                            self.strips[index // self.params.n]))

    def chunk(self, choices: list, **extra) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model_id, "system_fingerprint": None,
                "choices": choices, **extra}

    def echoes(self, prompts: list[Prompt]) -> list[dict]:
        """The first chunk of each choice with `echo`: its prompt (and the prompt's logprobs)."""
        out = []
        for i, prompt in enumerate(prompts):
            for j in range(self.params.n):
                index = i * self.params.n + j
                logprobs = None
                if self.params.logprobs is not None:
                    logprobs = self._format(index).prompt(*prompt.echoed(), prompt.text)
                out.append(self.chunk([{"index": index, "text": prompt.text, "logprobs": logprobs,
                                        "finish_reason": None}]))
        return out

    def _choice(self, index: int, content: str | None = None, finish: str | None = None, role: bool = False,
                logprobs: list | None = None) -> dict:
        shown = self._format(index)(logprobs) if logprobs and self.params.logprobs is not None else None
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
    """Events as they come until the job is done; checks the client every WATCH_S seconds
    (between pieces and while waiting) and cancels the job when it has gone."""
    checked = time.monotonic()
    while True:
        if time.monotonic() - checked > WATCH_S:
            checked = time.monotonic()
            if await disconnected():
                job.cancel()
                return
        if not events.empty():
            yield events.get_nowait()
            continue
        getter = asyncio.ensure_future(events.get())
        waiter = asyncio.ensure_future(done.wait())
        try:
            await asyncio.wait({getter, waiter}, timeout=WATCH_S, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when the stream is closed here (the client left): no task is left pending
            getter.cancel(), waiter.cancel()  # a task already done stays as it is
        if getter.done() and not getter.cancelled():
            yield getter.result()
            continue
        if waiter.done() and not waiter.cancelled():
            while not events.empty():
                yield events.get_nowait()
            error = outcome.get("error")
            if error is not None:
                error = request_error(error, job)
                if not isinstance(error, Stopped):  # Stopped: the client left, nobody to tell
                    raise error
            return
        waiter.cancel()
