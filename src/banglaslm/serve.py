"""An OpenAI-compatible HTTP server for a run folder (FastAPI + uvicorn).

    from banglaslm.serve import create_app, run_server
    run_server("runs/first")                       # http://127.0.0.1:8000/v1
    # any OpenAI client: openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")

Routes:
- GET  /health                 {"status": "ok", "model": ...}
- GET  /v1/models              one model; its id is `model_name` or the run folder's name
- POST /v1/completions         prompt (text, or a list of one text), max_tokens, temperature,
                               top_p, n, stop (text or list), seed, presence_penalty,
                               frequency_penalty, logprobs (0..20), stream,
                               stream_options.include_usage; and, beyond OpenAI's fields, top_k,
                               min_p, repetition_penalty
- POST /v1/chat/completions    messages [{role: system|user|assistant, content}] and the same
                               sampling fields (logprobs is true/false, top_logprobs 0..20).
                               Our models are base models: the messages are
                               rendered with the chat template of `banglaslm.chat`
                               (`render_chat`: one "{label}: {content}" line per message, labels
                               নির্দেশ / ব্যবহারকারী / সহকারী, then "সহকারী:" opened for the
                               model), and the "\\n{label}:" stop strings end the answer at the
                               next turn. The answer has its leading whitespace removed.
- GET  /                       a playground page (static/playground.html; it makes no requests
                               outside this server)

Bodies follow OpenAI's shapes; `stream: true` answers with server-sent events
(`data: {chunk}\\n\\n` ... `data: [DONE]\\n\\n`). Logprobs come in OpenAI's shapes (completions:
tokens / token_logprobs / top_logprobs / text_offset; chat: content [{token, logprob, bytes,
top_logprobs}]), streamed with the text they belong to; they are the probabilities of the
distribution each token was drawn from (after penalties, temperature, top-k/top-p/min-p), and a
token that is not whole UTF-8 shows as "bytes:\\xe0\\xa6". Sampling: temperature 0 (or top_p 0) means
greedy decoding; with a seed, the same request gives the same text, streamed or not, alone or
among concurrent requests. n > 1 while streaming sends the choices one after the other.

Every error is JSON in OpenAI's shape {"error": {"message", "type", "param", "code"}}: 400 for
invalid requests (malformed JSON, wrong types, out-of-range values; FastAPI's 422 is replaced),
401 for a missing or wrong bearer key, 404 for an unknown model or route, 413 for a body over
the limit, 408 when a (non-streamed) generation runs past the time-out.

Concurrency: one dedicated worker thread runs everything that touches the model, and the event
loop is never blocked. Generations run in a continuous batch (batching.py): a request's
choices join after their prefill, share every decode step with whatever else is running (up
to `max_batch`; more wait their turn in arrival order) and leave when they end, so aggregate
throughput grows with concurrency while each answer stays exactly what it would be alone
(same seed, same text). A generation stops when its client goes away (streaming) or when the
request's time-out passes: each one checks before every step.

Safe defaults (`ServerLimits`): bind to 127.0.0.1; optional `Authorization: Bearer KEY`;
request bodies up to 1 MB; prompts up to 4096 tokens; max_tokens up to 1024 (default 256);
n up to 8; 4 stop strings; 300 s per request (a stream that runs out of time ends with
finish_reason "length").
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import functools
import math
import hmac
import json
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .batching import Batch, Sequence
from .chat import chat_stops, clean_answer, render_chat
from .cpu_decode import CpuDecoder
from .engine import Completion, Engine, SamplingParams, Step, TokenLogprob, sample_seed
from .errors import UserError
from .runfolder import load_model


@dataclass
class ServerLimits:
    max_body_bytes: int = 1_000_000
    max_prompt_tokens: int = 4096
    max_tokens: int = 1024            # the most a request may ask for
    default_max_tokens: int = 256     # when a request does not say
    max_n: int = 8
    max_stop: int = 4
    max_batch: int = 16               # generations decoded together; more wait their turn
    request_timeout_s: float = 300.0


# ---- errors in OpenAI's shape --------------------------------------------------------------

class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _error_response(exc: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(error_body(exc.message, exc.type, exc.param, exc.code), status_code=exc.status,
                        headers=headers)


class _Stopped(Exception):
    """Raised inside the worker when a generation is cancelled or out of time."""


def _request_error(error: BaseException, job: "_Job") -> BaseException:
    """What a request that failed on the worker answers: 408 past its time-out, 400 for
    settings the engine refused, anything else as it is."""
    if isinstance(error, _Stopped) and job.timed_out:
        return APIError(408, "the generation took longer than the server's time-out",
                        type="timeout_error", code="timeout")
    if isinstance(error, UserError):
        return APIError(400, str(error), code="invalid_value")
    return error


def _settle(done: Callable[[Any, BaseException | None], None], result, error) -> None:
    try:
        done(result, error)
    except Exception:  # noqa: BLE001 - the request's event loop is gone
        pass


# ---- the worker thread ---------------------------------------------------------------------

class _Job:
    def __init__(self, fn: Callable[["_Job"], Any], deadline: float):
        self.fn = fn
        self.deadline = deadline
        self.cancelled = threading.Event()
        self.timed_out = False
        self.finished = False  # set when its generations have all ended
        self.resolve: Callable[[Any, BaseException | None], None] = lambda result, error: None

    def cancel(self) -> None:
        self.cancelled.set()

    def check(self) -> None:
        if self.cancelled.is_set():
            raise _Stopped("cancelled")
        if time.monotonic() > self.deadline:
            self.timed_out = True
            raise _Stopped("timed out")


class _Admit:
    """What a job returns to start generations: the sequences join the batch, and their own
    callbacks answer the request (the worker does not)."""

    def __init__(self, sequences: list[Sequence]):
        self.sequences = sequences


class GenerationWorker:
    """One thread runs everything that touches the model, in arrival order: small jobs (prompt
    encoding) at once, and generations in a continuous batch (batching.py), where each request
    joins after its prefill and leaves when it ends. Every sequence checks its job's cancel
    flag and deadline before each step."""

    def __init__(self, batch: Batch):
        self.batch = batch
        self._queue: queue.Queue = queue.Queue()
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._jobs: list[_Job] = []  # jobs with sequences waiting or running
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="banglaslm-generate", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            busy = not self.batch.idle or bool(self._waiting)
            try:
                item = self._queue.get(block=not busy)
            except queue.Empty:
                item = None
            while item is not None:  # everything that arrived, in order
                self._take(*item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            try:
                while self._waiting and not self.batch.full:
                    self.batch.add(self._waiting.popleft())
                if not self.batch.idle:
                    self.batch.step()
            except Exception as exc:  # noqa: BLE001 - a bug: fail what runs (500s), keep serving
                self.batch.abort(exc)
            self._jobs = [job for job in self._jobs if not job.finished]

    def _take(self, job: _Job, done: Callable[[Any, BaseException | None], None]) -> None:
        try:
            if job.cancelled.is_set():  # its client left while it waited
                raise _Stopped("cancelled")
            result = job.fn(job)
        except BaseException as exc:  # handed to the request; the worker lives on
            _settle(done, None, exc)
            return
        if isinstance(result, _Admit):
            self._jobs.append(job)
            self._waiting.extend(result.sequences)
        else:
            job.finished = True
            _settle(done, result, None)

    def cancel_all(self) -> None:
        """Stop every running or waiting generation (at shutdown); the idle thread itself is a daemon."""
        for job in list(self._jobs):
            job.cancel()

    def submit(self, job: _Job, done: Callable[[Any, BaseException | None], None]) -> None:
        self._ensure_thread()
        self._queue.put((job, done))

    async def run(self, job: _Job) -> Any:
        """Run `job` on the worker; its result (or its exception, raised here)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def settle(result, error):
            if future.done():
                return
            if error is not None:
                future.set_exception(_request_error(error, job))
            else:
                future.set_result(result)

        # A job that starts generations (_Admit) answers through job.resolve when they end.
        job.resolve = lambda r, e: loop.call_soon_threadsafe(settle, r, e)
        self.submit(job, job.resolve)
        try:
            return await future
        finally:
            if not future.done():  # the request was cancelled while waiting
                job.cancel()


# ---- request bodies ------------------------------------------------------------------------

class _Sampling(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    model: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stream: bool | None = False
    stream_options: dict | None = None
    # extensions
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None

    def wanted_logprobs(self) -> int | None:
        return None


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    logprobs: int | None = None

    def wanted_logprobs(self) -> int | None:
        _check_range("logprobs", self.logprobs, 0, MAX_LOGPROBS)
        return self.logprobs


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict] | None = None
    name: str | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None

    def wanted_logprobs(self) -> int | None:
        _check_range("top_logprobs", self.top_logprobs, 0, MAX_LOGPROBS)
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value")
        return (self.top_logprobs or 0) if self.logprobs else None


def _check_range(name: str, value, low, high, low_open: bool = False) -> None:
    if value is None:
        return
    if value < low or (low_open and value == low) or value > high:
        interval = f"{'(' if low_open else '['}{low}, {high}]"
        raise APIError(400, f"{name} must be in {interval}, got {value}", param=name, code="invalid_value")


def sampling_params(req: _Sampling, limits: ServerLimits) -> SamplingParams:
    """The engine's params for a request, or APIError 400 for a value out of range."""
    max_tokens = req.max_tokens if req.max_tokens is not None else req.max_completion_tokens
    name = "max_tokens" if req.max_tokens is not None else "max_completion_tokens"
    _check_range(name, max_tokens, 1, limits.max_tokens)
    _check_range("temperature", req.temperature, 0, 2)
    _check_range("top_p", req.top_p, 0, 1)
    _check_range("n", req.n, 1, limits.max_n)
    _check_range("presence_penalty", req.presence_penalty, -2, 2)
    _check_range("frequency_penalty", req.frequency_penalty, -2, 2)
    _check_range("min_p", req.min_p, 0, 1)
    _check_range("repetition_penalty", req.repetition_penalty, 0, 10, low_open=True)
    if req.top_k is not None and req.top_k < 1:
        raise APIError(400, f"top_k must be at least 1, got {req.top_k}", param="top_k", code="invalid_value")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > limits.max_stop or any(not s for s in stop):
        raise APIError(400, f"stop takes up to {limits.max_stop} non-empty strings", param="stop",
                       code="invalid_value")
    temperature = 1.0 if req.temperature is None else req.temperature
    greedy = temperature == 0 or req.top_p == 0
    params = SamplingParams(
        max_new_tokens=max_tokens or limits.default_max_tokens,
        temperature=temperature if temperature > 0 else 1.0,
        top_k=req.top_k, top_p=req.top_p if req.top_p else None, min_p=req.min_p,
        repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
        presence_penalty=req.presence_penalty or 0.0, frequency_penalty=req.frequency_penalty or 0.0,
        stop=stop, seed=req.seed, greedy=greedy, n=req.n or 1, logprobs=req.wanted_logprobs())
    try:
        params.validate()
    except UserError as exc:
        raise APIError(400, str(exc), code="invalid_value") from None
    return params


def _message_text(message: ChatMessage, i: int) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    parts = []
    for part in message.content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise APIError(400, f"messages[{i}].content: only text parts are supported",
                           param=f"messages.{i}.content", code="invalid_value")
        parts.append(part["text"])
    return "".join(parts)


# ---- auth and size limit (a plain ASGI middleware: it sees the raw body) ------------------

MAX_LOGPROBS = 20  # OpenAI's own limit for top_logprobs


class LogprobFormat:
    """OpenAI's logprobs shapes for the tokens of one choice, fed in order (streamed or not)."""

    def __init__(self, tokenizer, chat: bool):
        self.tokenizer, self.chat = tokenizer, chat
        self._chars = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        self._offset = 0  # characters of the completion before the next token (text_offset)

    def _token(self, token_id: int) -> tuple[str, bytes]:
        raw = self.tokenizer.token_bytes(token_id)
        try:
            return raw.decode("utf-8"), raw
        except UnicodeDecodeError:  # part of a character: OpenAI's notation for raw bytes
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw), raw

    @staticmethod
    def _log(prob: float) -> float:
        return math.log(prob) if prob > 0 else -9999.0  # JSON has no -inf

    def _chat_entry(self, token_id: int, prob: float) -> dict:
        token, raw = self._token(token_id)
        return {"token": token, "logprob": self._log(prob), "bytes": list(raw)}

    def __call__(self, entries: list[TokenLogprob]) -> dict:
        if self.chat:
            return {"content": [{**self._chat_entry(e.token_id, e.prob),
                                 "top_logprobs": [self._chat_entry(c.token_id, c.prob) for c in e.candidates]}
                                for e in entries]}
        out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for e in entries:
            token, raw = self._token(e.token_id)
            out["tokens"].append(token)
            out["token_logprobs"].append(self._log(e.prob))
            out["top_logprobs"].append({self._token(c.token_id)[0]: self._log(c.prob) for c in e.candidates})
            out["text_offset"].append(self._offset)
            self._offset += len(self._chars.decode(raw))
        return out


class _BodyTooLarge(HTTPException):
    def __init__(self, max_bytes: int):
        super().__init__(413, f"request body is larger than {max_bytes} bytes")


class GuardMiddleware:
    """401 for /v1 requests without the bearer key (when one is set); 413 for a body over
    `max_bytes`, by its Content-Length or by counting a chunked body as it is read."""

    def __init__(self, app, max_bytes: int, api_key: str | None):
        self.app, self.max_bytes, self.api_key = app, max_bytes, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", []))
        if self.api_key is not None and scope.get("path", "").startswith("/v1"):
            scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                return await _error_response(APIError(
                    401, "missing or wrong API key (send Authorization: Bearer KEY)",
                    type="authentication_error", code="invalid_api_key"))(scope, receive, send)
        try:
            too_big = int(headers.get(b"content-length", b"0")) > self.max_bytes
        except ValueError:
            too_big = False
        if too_big:
            return await self._reject(scope, receive, send)
        seen = 0
        started = False

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._reject(scope, receive, send)

    async def _reject(self, scope, receive, send):
        await _error_response(APIError(413, f"request body is larger than {self.max_bytes} bytes",
                                       code="request_too_large"))(scope, receive, send)


# ---- the app -------------------------------------------------------------------------------

def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


class _ChoiceStream:
    """Turns one streamed choice's steps into ("piece", ...) / ("end", ...) events (see
    `stream_choices` in create_app). Logprobs go out with the piece that holds the start of
    their token's text, so a click on a piece shows the choices that produced it."""

    def __init__(self, index: int, eod: int, strip_leading: bool, job: _Job,
                 emit: Callable[[tuple], None], end: Callable[[int, BaseException | None], None]):
        self.index, self.eod, self.job, self.emit, self.end = index, eod, job, emit, end
        self.tokens, self.sent, self.shown = 0, 0, not strip_leading
        self.pending: list[tuple[int, TokenLogprob]] = []

    def sequence(self, ids: list[int], params: SamplingParams) -> Sequence:
        return Sequence(ids, params, on_step=self.on_step, on_done=self.on_done, check=self.job.check)

    def on_step(self, step: Step) -> None:
        if step.token_id != self.eod:  # as Completion.token_ids
            self.tokens += 1
            if step.logprob is not None:
                self.pending.append((step.start, step.logprob))
        text = step.text
        self.sent += len(text)
        if not self.shown and text:
            text = text.lstrip()
            self.shown = bool(text)
        if text:
            self.emit(("piece", self.index, text, [lp for start, lp in self.pending if start < self.sent]))
            self.pending = [(start, lp) for start, lp in self.pending if start >= self.sent]

    def on_done(self, completion: Completion | None, error: BaseException | None) -> None:
        rest = [lp for _, lp in self.pending]
        if completion is not None:
            self.emit(("end", self.index, completion.finish_reason, self.tokens, rest))
        elif isinstance(error, _Stopped) and self.job.timed_out:  # out of time: what came is the answer
            self.emit(("end", self.index, "length", self.tokens, rest))
            error = None
        self.end(self.index, error)


def create_app(run_dir, api_key: str | None = None, model_name: str | None = None,
               limits: ServerLimits | None = None, which: str = "best") -> FastAPI:
    """The FastAPI app serving the model in `run_dir` (see the module docstring)."""
    limits = limits or ServerLimits()
    loaded = load_model(run_dir, which)
    engine = Engine(loaded.model, loaded.tokenizer)
    CpuDecoder.for_model(loaded.model)  # build the C decode step now, not in the first request
    worker = GenerationWorker(Batch(engine, capacity=limits.max_batch))
    model_id = model_name or Path(run_dir).resolve().name
    created_at = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        worker.cancel_all()

    app = FastAPI(title="banglaslm", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.engine, app.state.worker, app.state.limits, app.state.model_id = engine, worker, limits, model_id
    app.add_middleware(GuardMiddleware, max_bytes=limits.max_body_bytes, api_key=api_key)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            return _error_response(APIError(400, "the request body is not valid JSON", code="invalid_json"))
        param = ".".join(loc) or None
        if param is None and first.get("type") == "model_attributes_type":
            return _error_response(APIError(400, "the request body must be a JSON object "
                                            "(Content-Type: application/json)", code="invalid_type"))
        message = f"{param}: {first.get('msg', 'invalid value')}" if param else first.get("msg", "invalid request")
        return _error_response(APIError(400, message, param=param, code="invalid_type"
                                        if "type" in first.get("type", "") else "invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        code = "request_too_large" if exc.status_code == 413 else None
        return _error_response(APIError(exc.status_code, str(exc.detail), type=kind, code=code))

    def check_model(name: str | None) -> None:
        if name is not None and name != model_id:
            raise APIError(404, f"the model {name!r} does not exist; this server has {model_id!r}",
                           param="model", code="model_not_found")

    def encode(prompt: str) -> list[int]:
        try:
            ids = engine.encode_prompt(prompt)
        except UserError as exc:
            raise APIError(400, str(exc), param="prompt", code="invalid_value") from None
        if len(ids) > limits.max_prompt_tokens:
            raise APIError(400, f"the prompt has {len(ids)} tokens; the limit is {limits.max_prompt_tokens}",
                           param="prompt", code="context_length_exceeded")
        return ids

    def new_job(fn) -> _Job:
        return _Job(fn, time.monotonic() + limits.request_timeout_s)

    def samples(params: SamplingParams) -> list[SamplingParams]:
        """One SamplingParams per choice, each with its own seed (as Engine does for n samples)."""
        base = params.seed if params.seed is not None else random.randrange(2**62)
        return [SamplingParams(**{**params.__dict__, "n": 1, "seed": sample_seed(base, i)}) for i in range(params.n)]

    async def generate(prompt: str, params: SamplingParams):
        def work(job: _Job):
            ids = encode(prompt)
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
            return _Admit([Sequence(ids, one, check=job.check, on_done=functools.partial(collect, i))
                           for i, one in enumerate(samples(params))])
        return await worker.run(new_job(work))

    async def prepare_stream(prompt: str) -> int:
        def work(job: _Job):
            return len(encode(prompt))
        return await worker.run(new_job(work))

    async def stream_choices(request: Request, prompt: str, params: SamplingParams, strip_leading: bool):
        """("piece", index, text, logprobs) and ("end", index, finish_reason, tokens, logprobs)
        events for every choice, the choices generated side by side (logprobs: the TokenLogprobs
        of the tokens since the last event, [] unless asked for); the generation runs on the
        worker and stops if the client goes away."""
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

        def work(job: _Job):
            ids = encode(prompt)
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
            return _Admit([_ChoiceStream(index, engine.tokenizer.eod_id, strip_leading, job, emit, end).sequence(ids, one)
                           for index, one in enumerate(samples(params))])

        job = new_job(work)
        worker.submit(job, finished)
        checked = time.monotonic()
        try:
            while True:
                if time.monotonic() - checked > 0.25:  # between pieces, and while waiting
                    checked = time.monotonic()
                    if await request.is_disconnected():
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
                    if error is not None and not isinstance(error, _Stopped):
                        raise error
                    return
                waiter.cancel()
        finally:
            job.cancel()  # no-op once the job is done; stops it when the client left

    def usage(prompt_tokens: int, completion_tokens: int) -> dict:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    def logprobs(completion, chat: bool) -> dict | None:
        if completion.logprobs is None:
            return None
        return LogprobFormat(engine.tokenizer, chat)(completion.logprobs)

    def include_usage(req: _Sampling) -> bool:
        return bool((req.stream_options or {}).get("include_usage"))

    async def streaming(request: Request, req: _Sampling, prompt: str, params: SamplingParams, chat: bool):
        prompt_tokens = await prepare_stream(prompt)  # errors here are still plain 4xx answers
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choices: list, **extra) -> dict:
            return {"id": rid, "object": obj, "created": created, "model": model_id,
                    "system_fingerprint": None, "choices": choices, **extra}

        formats = [LogprobFormat(engine.tokenizer, chat) for _ in range(params.n)]

        def choice(index: int, content: str | None = None, finish: str | None = None, role: bool = False,
                   logprobs: list[TokenLogprob] | None = None) -> dict:
            shown = formats[index](logprobs) if logprobs and params.logprobs is not None else None
            if chat:
                delta: dict = {}
                if role:
                    delta = {"role": "assistant", "content": ""}
                elif content is not None:
                    delta = {"content": content}
                return {"index": index, "delta": delta, "logprobs": shown, "finish_reason": finish}
            return {"index": index, "text": content or "", "logprobs": shown, "finish_reason": finish}

        async def body():
            completion_tokens = 0
            started: set[int] = set()
            try:
                async for event in stream_choices(request, prompt, params, strip_leading=chat):
                    kind, index = event[0], event[1]
                    if chat and index not in started:
                        started.add(index)
                        yield _sse(chunk([choice(index, role=True)]))
                    if kind == "piece":
                        yield _sse(chunk([choice(index, event[2], logprobs=event[3])]))
                    else:
                        completion_tokens += event[3]
                        yield _sse(chunk([choice(index, None if chat else "", finish=event[2], logprobs=event[4])]))
            except APIError as exc:
                yield _sse(error_body(exc.message, exc.type, exc.param, exc.code))
            except UserError as exc:
                yield _sse(error_body(str(exc)))
            if include_usage(req):
                yield _sse(chunk([], usage=usage(prompt_tokens, completion_tokens)))
            yield _sse("[DONE]")

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created_at,
                                            "owned_by": "banglaslm"}]}

    @app.get("/v1/models/{name}")
    async def model_info(name: str):
        check_model(name)
        return {"id": model_id, "object": "model", "created": created_at, "owned_by": "banglaslm"}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        check_model(req.model)
        params = sampling_params(req, limits)
        prompt = req.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise APIError(400, f"prompt: give one text (or a list of one), got a list of {len(prompt)}",
                               param="prompt", code="invalid_value")
            prompt = prompt[0]
        if req.stream:
            return await streaming(request, req, prompt, params, chat=False)
        ids, outs = await generate(prompt, params)
        choices = [{"index": i, "text": c.text, "logprobs": logprobs(c, chat=False), "finish_reason": c.finish_reason}
                   for i, c in enumerate(outs)]
        return {"id": "cmpl-" + uuid.uuid4().hex, "object": "text_completion", "created": int(time.time()),
                "model": model_id, "system_fingerprint": None, "choices": choices,
                "usage": usage(len(ids), sum(len(c.token_ids) for c in outs))}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request):
        check_model(req.model)
        params = sampling_params(req, limits)
        params.stop = params.stop + chat_stops()
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": _message_text(m, i)}
                    for i, m in enumerate(req.messages)]
        prompt = render_chat(messages)
        if req.stream:
            return await streaming(request, req, prompt, params, chat=True)
        ids, outs = await generate(prompt, params)
        choices = [{"index": i, "message": {"role": "assistant", "content": clean_answer(c.text)},
                    "logprobs": logprobs(c, chat=True), "finish_reason": c.finish_reason} for i, c in enumerate(outs)]
        return {"id": "chatcmpl-" + uuid.uuid4().hex, "object": "chat.completion", "created": int(time.time()),
                "model": model_id, "system_fingerprint": None, "choices": choices,
                "usage": usage(len(ids), sum(len(c.token_ids) for c in outs))}

    @app.get("/", response_class=HTMLResponse)
    async def playground():
        return HTMLResponse(_playground_html(), headers={
            "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                                       "style-src 'unsafe-inline'; connect-src 'self'"})

    return app


def _playground_html() -> str:
    from importlib import resources

    try:
        return resources.files("banglaslm").joinpath("static/playground.html").read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        return "<!doctype html><meta charset=utf-8><title>banglaslm</title><p>The playground page is not installed."


def run_server(run_dir, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
               model_name: str | None = None, limits: ServerLimits | None = None,
               log_level: str = "info") -> None:
    """Serve `run_dir` with uvicorn until interrupted (loopback only unless `host` says otherwise)."""
    import uvicorn

    app = create_app(run_dir, api_key=api_key, model_name=model_name, limits=limits)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
