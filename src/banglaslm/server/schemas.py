"""The API's shapes: request bodies (pydantic), their translation into `SamplingParams`, the
limits a request must keep, and errors in OpenAI's form.

Requests follow OpenAI's completions and chat completions; beyond OpenAI's fields they take
top_k, min_p and repetition_penalty. Temperature 0 (or top_p 0) means greedy decoding. Every
out-of-range value is a 400 naming its field before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..config import SamplingParams
from ..errors import UserError


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
class SamplingRequest(BaseModel):
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


class CompletionRequest(SamplingRequest):
    prompt: str | list[str]
    logprobs: int | None = None

    def wanted_logprobs(self) -> int | None:
        _check_range("logprobs", self.logprobs, 0, MAX_TOP_LOGPROBS)
        return self.logprobs


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict] | None = None
    name: str | None = None


class ChatRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None

    def wanted_logprobs(self) -> int | None:
        _check_range("top_logprobs", self.top_logprobs, 0, MAX_TOP_LOGPROBS)
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value")
        return (self.top_logprobs or 0) if self.logprobs else None


def _check_range(name: str, value, low, high, low_open: bool = False) -> None:
    if value is None:
        return
    if value < low or (low_open and value == low) or value > high:
        interval = f"{'(' if low_open else '['}{low}, {high}]"
        raise APIError(400, f"{name} must be in {interval}, got {value}", param=name, code="invalid_value")


def sampling_params(req: SamplingRequest, limits: ServerLimits) -> SamplingParams:
    """The engine's params for a request, or APIError 400 for a value out of range."""
    max_tokens = req.max_tokens if req.max_tokens is not None else req.max_completion_tokens
    name = "max_tokens" if req.max_tokens is not None else "max_completion_tokens"
    _check_range(name, max_tokens, 1, limits.max_tokens)
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
        max_new_tokens=max_tokens or limits.default_max_tokens,
        temperature=temperature if temperature > 0 else 1.0,
        top_k=req.top_k, top_p=req.top_p if req.top_p else None, min_p=req.min_p,
        repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
        presence_penalty=req.presence_penalty or 0.0, frequency_penalty=req.frequency_penalty or 0.0,
        stop=stop, seed=req.seed, greedy=greedy, n=req.n or 1, logprobs=req.wanted_logprobs())
    try:
        params.validate()  # the library's own ranges (penalties, min_p, top_k, seed, ...)
    except UserError as exc:
        raise APIError(400, str(exc), param=exc.param, code="invalid_value") from None
    return params


def message_text(message: ChatMessage, i: int) -> str:
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
