"""What goes over the wire, token by token: OpenAI's logprob shapes, server-sent events, and
the events of one streamed choice.
"""

from __future__ import annotations

import codecs
import json
import math
from collections.abc import Callable

from ..chat_template import clean_answer
from ..config import SamplingParams
from ..generation.batching import Sequence
from ..generation.engine import Completion, Step
from ..generation.sampling import TokenLogprob
from .worker import Job, Stopped


def sse(data: dict | str) -> str:
    """One server-sent event: `data: {json}` (or a literal such as [DONE]) and a blank line."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


class LogprobFormat:
    """OpenAI's logprobs shapes for the tokens of one choice, fed in order (streamed or not).
    Their texts join to the choice's text: an echoed prompt's first token is read as the start
    of a text, and leading whitespace the text drops (`strip_leading`: a chat answer's, by
    default), is dropped."""

    def __init__(self, tokenizer, chat: bool, strip_leading: bool | None = None):
        self.tokenizer, self.chat = tokenizer, chat
        self._chars = codecs.getincrementaldecoder("utf-8")(errors=tokenizer.decode_errors)  # as the text is
        self._offset = 0  # characters of the choice's text before the next token (text_offset)
        self._leading = chat if strip_leading is None else strip_leading  # before the first visible character

    def _token(self, token_id: int, first: bool = False) -> tuple[str, bytes]:
        raw = self.tokenizer.token_bytes(token_id, first)
        try:
            token = raw.decode("utf-8")
        except UnicodeDecodeError:  # part of a character: OpenAI's notation for raw bytes
            raw = raw.lstrip() if self._leading else raw  # b" \xe2\x80" opening an answer: its space goes too
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw), raw
        if self._leading:  # as the answer's content (chat_template.clean_answer)
            token = clean_answer(token)
            raw = token.encode("utf-8")
        return token, raw

    @staticmethod
    def _log(prob: float) -> float:
        return math.log(prob) if prob > 0 else -9999.0  # JSON has no -inf

    def _chat_entry(self, token_id: int, prob: float) -> dict:
        token, raw = self._token(token_id)
        return {"token": token, "logprob": self._log(prob), "bytes": list(raw)}

    def _chat_position(self, e: TokenLogprob) -> dict:
        entry = {**self._chat_entry(e.token_id, e.prob), "top_logprobs": [self._chat_entry(c.token_id, c.prob)
                                                                          for c in e.candidates]}
        self._leading = self._leading and not entry["bytes"]
        return entry

    def _top(self, candidates: list[tuple[int, float]], token: str, logprob: float) -> dict[str, float]:
        """Completions' top_logprobs of one position: the candidates, and the token itself when
        it is not among them (as OpenAI's: "up to logprobs+1 elements")."""
        top = {self._token(t)[0]: v for t, v in candidates}
        if candidates and token not in top:
            top[token] = logprob
        return top

    def prompt(self, token_ids: list[int], scored: list[tuple[float, list]], text: str) -> dict:
        """The echoed prompt's tokens (completions' `echo`): `scored[i]` is (log-probability,
        [(id, log-probability)] most likely first) of token_ids[i] given what precedes it. The
        first token's is null, as OpenAI's is; the completion's offsets then start after `text`."""
        out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for i, token_id in enumerate(token_ids):
            token, raw = self._token(token_id, first=i == 0)
            logprob, top = scored[i] if i else (None, None)
            out["top_logprobs"].append(None if top is None else self._top(top, token, logprob))
            self._leading = self._leading and not raw
            out["tokens"].append(token)
            out["token_logprobs"].append(logprob)
            out["text_offset"].append(self._offset)
            self._offset += len(self._chars.decode(raw))
        self._offset = len(text)
        return out

    def __call__(self, entries: list[TokenLogprob]) -> dict:
        if self.chat:
            return {"content": [self._chat_position(e) for e in entries]}
        out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for e in entries:
            token, raw = self._token(e.token_id)
            top = self._top([(c.token_id, self._log(c.prob)) for c in e.candidates], token, self._log(e.prob))
            self._leading = self._leading and not raw  # the first visible character's token ends it
            out["tokens"].append(token)
            out["token_logprobs"].append(self._log(e.prob))
            out["top_logprobs"].append(top)
            out["text_offset"].append(self._offset)
            self._offset += len(self._chars.decode(raw))
        return out


class ChoiceStream:
    """Turns one streamed choice's steps into ("piece", index, text, logprobs) and ("end", index,
    finish_reason, tokens, logprobs) events. Logprobs go out with the piece that holds the start
    of their token's text, so a click on a piece shows the choices that produced it."""

    def __init__(self, index: int, eod: int, strip_leading: bool, job: Job,
                 emit: Callable[[tuple], None], end: Callable[[int, BaseException | None], None]):
        self.index, self.eod, self.job, self.emit, self.end = index, eod, job, emit, end
        self.tokens, self.sent, self.shown, self.logged = 0, 0, not strip_leading, 0
        self.pending: list[tuple[int, TokenLogprob]] = []

    def sequence(self, ids: list[int], params: SamplingParams, opens_word: bool = False) -> Sequence:
        return Sequence(ids, params, on_step=self.on_step, on_done=self.on_done, check=self.job.check,
                        opens_word=opens_word, strip_leading=not self.shown)

    def on_step(self, step: Step) -> None:
        if step.token_id != self.eod:  # as Completion.token_ids
            self.tokens += 1
            if step.logprob is not None:
                self.pending.append((step.start, step.logprob))
        text = step.text
        self.sent += len(text)
        if not self.shown and text:
            text = clean_answer(text)
            self.shown = bool(text)
        if text:
            logprobs = [lp for start, lp in self.pending if start < self.sent]
            self.logged += len(logprobs)
            self.emit(("piece", self.index, text, logprobs))
            self.pending = [(start, lp) for start, lp in self.pending if start >= self.sent]

    def on_done(self, completion: Completion | None, error: BaseException | None) -> None:
        rest = [lp for _, lp in self.pending]
        if completion is not None:  # without a stop string's tokens, as the completion's own logprobs
            rest = rest[:max(0, len(completion.logprobs or []) - self.logged)]
            self.emit(("end", self.index, completion.finish_reason, self.tokens, rest))
        elif isinstance(error, Stopped) and self.job.timed_out:  # out of time: what came is the answer
            self.emit(("end", self.index, "length", self.tokens, rest))
            error = None
        self.end(self.index, error)
