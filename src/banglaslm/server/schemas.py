"""The API's shapes: request bodies (pydantic), their translation into `SamplingParams`, the
limits a request must keep, and errors in OpenAI's form.

Requests follow OpenAI's completions and chat completions; beyond OpenAI's fields they take
top_k, min_p and repetition_penalty. Temperature 0 (or top_p 0) means greedy decoding. Every
out-of-range value is a 400 naming its field before any work starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..chat_template import content_text
from ..config import SamplingParams
from ..errors import UserError
from ..text import check_text


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


MAX_TOP_LOGPROBS = 20  # OpenAI's own limit for (top_)logprobs (the library allows more)


class APIError(Exception):
    """An answer other than 200, in OpenAI's error shape (`error_body`)."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# ---- request bodies ------------------------------------------------------------------------
# Every field of OpenAI's two endpoints is named here: a field that changes what is generated
# does what OpenAI's does, or is refused with a 400 naming it when set (`refused()`); a field
# with no effect on the output (user, metadata, ...) is accepted; anything else is a 400.
class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class StreamOptions(_Body):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class SamplingRequest(_Body):
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # for the caller's own records; changes nothing
    # extensions
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None

    def wanted_logprobs(self) -> int | None:
        return None

    def refused(self) -> list[tuple[str, str]]:
        """(field, why) for every field set to something this server cannot do."""
        out = []
        if self.stream_options is not None and self.stream_options.include_obfuscation:
            out.append(("stream_options.include_obfuscation", "this server does not pad its stream"))
        return out


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = None
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None

    def wanted_logprobs(self) -> int | None:
        _check_range("logprobs", self.logprobs, 0, MAX_TOP_LOGPROBS)
        return self.logprobs

    def refused(self) -> list[tuple[str, str]]:
        out = super().refused()
        if self.best_of is not None and self.best_of != (self.n or 1):
            out.append(("best_of", "only best_of equal to n is supported (every sample is returned)"))
        if self.suffix:
            out.append(("suffix", "inserting text before a suffix is not supported"))
        return out


class ChatMessage(_Body):
    # "tool" and "function" are OpenAI roles too: taken here so that refused() names the reason
    role: Literal["system", "user", "assistant", "developer", "tool", "function"]
    tool_call_id: str | None = None
    content: str | list[dict] | None = None
    name: str | None = None  # accepted; the chat template has no place for it
    # what clients send back with an earlier answer: accepted when empty
    refusal: str | None = None
    annotations: list | None = None
    audio: dict | None = None
    function_call: dict | None = None
    tool_calls: list | None = None


class ChatRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict | None = None
    tools: list | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None
    functions: list | None = None
    function_call: str | dict | None = None
    modalities: list[str] | None = None
    audio: dict | None = None
    prediction: dict | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    web_search_options: dict | None = None
    store: bool | None = None
    service_tier: str | None = None
    metadata: dict | None = None            # kept with stored answers: nothing is stored
    prompt_cache_key: str | None = None     # a cache hint: changes nothing
    prompt_cache_retention: str | None = None  # a cache hint: changes nothing
    prompt_cache_options: dict | None = None   # a cache hint: changes nothing
    moderation: dict | None = None
    safety_identifier: str | None = None    # for the caller's own records: changes nothing

    def wanted_logprobs(self) -> int | None:
        _check_range("top_logprobs", self.top_logprobs, 0, MAX_TOP_LOGPROBS)
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value")
        return (self.top_logprobs or 0) if self.logprobs else None

    def refused(self) -> list[tuple[str, str]]:
        out = super().refused()
        rules = [
            ("response_format", (self.response_format or {"type": "text"}).get("type") != "text",
             "only {\"type\": \"text\"}: this model does not constrain its output to JSON"),
            ("tools", bool(self.tools), "tool calling is not supported"),
            ("functions", bool(self.functions), "function calling is not supported"),
            ("tool_choice", self.tool_choice not in (None, "none", "auto"), "tool calling is not supported"),
            ("function_call", self.function_call not in (None, "none", "auto"), "function calling is not supported"),
            ("modalities", self.modalities not in (None, ["text"]), "only text is generated"),
            ("audio", self.audio is not None, "only text is generated"),
            ("prediction", self.prediction is not None, "predicted outputs are not supported"),
            ("reasoning_effort", self.reasoning_effort is not None, "this is not a reasoning model"),
            ("verbosity", self.verbosity not in (None, "medium"), "answers follow the model, not a verbosity"),
            ("web_search_options", self.web_search_options is not None, "web search is not supported"),
            ("store", bool(self.store), "answers are not stored"),
            ("moderation", self.moderation is not None, "requests and answers are not moderated"),
            ("service_tier", self.service_tier not in (None, "auto", "default"), "there is one service tier"),
        ]
        out += [(name, why) for name, bad, why in rules if bad]
        for i, m in enumerate(self.messages):
            if m.tool_calls or m.function_call or m.audio or m.tool_call_id or m.role in ("tool", "function"):
                out.append((f"messages.{i}", "tool calls, their results and audio in messages are not supported"))
        return out


def check_supported(req: SamplingRequest) -> None:
    """A 400 naming the first field set to something this server cannot do."""
    refused = req.refused()
    if refused:
        name, why = refused[0]
        raise APIError(400, f"{name} is not supported here: {why}", param=name, code="unsupported_value")


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float] | None:
    """OpenAI's logit_bias (token ids as strings) as the library's (ids as integers)."""
    if not bias:
        return None
    bad = [token for token in bias if not (token.isascii() and token.isdigit())]  # int() takes " 5" and "৫"
    if bad:
        raise APIError(400, f"logit_bias keys must be token ids written in ASCII digits (e.g. {{\"42\": -100}}), "
                            f"not {bad[0]!r}", param="logit_bias", code="invalid_value")
    huge = [token for token in bias if len(token.lstrip("0")) > 18]  # past any vocabulary (and int()'s 4,300 digits)
    if huge:
        raise APIError(400, f"logit_bias holds the token id {huge[0][:20]}... ({len(huge[0]):,} digits), outside the "
                            "vocabulary", param="logit_bias", code="invalid_value")
    return {int(token): value for token, value in bias.items()}


def _check_range(name: str, value, low, high, low_open: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise APIError(400, f"{name} must be a finite number, got {value}", param=name, code="invalid_value")
    if value < low or (low_open and value == low) or value > high:
        interval = f"{'(' if low_open else '['}{low}, {high}]"
        raise APIError(400, f"{name} must be in {interval}, got {value}", param=name, code="invalid_value")


def _max_tokens(req: SamplingRequest, limits: ServerLimits) -> int | None:
    """The request's token limit: `max_tokens`, or chat's newer `max_completion_tokens`, each
    checked; both given must agree (one of them would be ignored)."""
    echo = bool(getattr(req, "echo", False))  # with echo, 0 new tokens scores the prompt alone
    given = {name: getattr(req, name, None) for name in ("max_tokens", "max_completion_tokens")}
    given = {name: value for name, value in given.items() if value is not None}
    for name, value in given.items():
        _check_range(name, value, 0 if echo else 1, limits.max_tokens)
    if len(set(given.values())) > 1:
        raise APIError(400, f"max_tokens ({given['max_tokens']}) and max_completion_tokens "
                            f"({given['max_completion_tokens']}) differ; give one of them",
                       param="max_completion_tokens", code="invalid_value")
    return next(iter(given.values()), None)


def sampling_params(req: SamplingRequest, limits: ServerLimits) -> SamplingParams:
    """The engine's params for a request, or APIError 400 for a value out of range."""
    if req.stream_options is not None and not req.stream:  # as OpenAI answers it
        raise APIError(400, "stream_options is only allowed when stream is true", param="stream_options",
                       code="invalid_value")
    max_tokens = _max_tokens(req, limits)
    _check_range("temperature", req.temperature, 0, 2)
    _check_range("top_p", req.top_p, 0, 1)
    _check_range("n", req.n, 1, limits.max_n)
    _check_range("repetition_penalty", req.repetition_penalty, 0, 10, low_open=True)
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > limits.max_stop or any(not s for s in stop):
        raise APIError(400, f"stop takes up to {limits.max_stop} non-empty strings", param="stop",
                       code="invalid_value")
    temperature = 1.0 if req.temperature is None else req.temperature
    greedy = temperature == 0 or req.top_p == 0
    params = SamplingParams(
        max_new_tokens=limits.default_max_tokens if max_tokens is None else max(max_tokens, 1),
        temperature=temperature if temperature > 0 else 1.0,
        top_k=req.top_k, top_p=req.top_p if req.top_p else None, min_p=req.min_p,
        repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
        presence_penalty=req.presence_penalty or 0.0, frequency_penalty=req.frequency_penalty or 0.0,
        stop=stop, seed=req.seed, greedy=greedy, n=req.n or 1, logprobs=req.wanted_logprobs(),
        logit_bias=_logit_bias(req.logit_bias))
    try:
        params.validate()  # the library's own ranges (penalties, min_p, top_k, seed, ...)
    except UserError as exc:
        raise APIError(400, str(exc), param=exc.param, code="invalid_value") from None
    return params


def message_text(message: ChatMessage, i: int) -> str:
    """The text of message `i` (its text parts joined), checked to be valid Unicode. Only an
    assistant message may leave its content out (OpenAI's rule: one that called tools)."""
    param = f"messages.{i}.content"
    if message.content is None:
        if message.role == "assistant":
            return ""
        raise APIError(400, f"{param} is missing: a {message.role} message needs its text", param=param,
                       code="invalid_value")
    try:
        return check_text(content_text(message.content), param)
    except UserError as exc:
        raise APIError(400, str(exc), param=param, code="invalid_value") from None
