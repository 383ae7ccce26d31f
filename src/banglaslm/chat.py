"""Chat with a base model: the chat template (shared with the server) and an interactive loop.

Our models are *base* models: they were never tuned on conversations, so "chat" is plain text
continuation of a transcript. The template (version "bn-chat-1"):

    নির্দেশ: {system message}\\n          (only when there is a system message)
    ব্যবহারকারী: {user message}\\n
    সহকারী: {assistant message}\\n
    ...
    সহকারী:                                (the assistant's turn, opened for the model)

With `language="en"` the labels are "System", "User" and "Assistant". Each message's content is
stripped of leading/trailing whitespace; a message may span several lines. The prompt goes
through the same normalization as every prompt (`Engine.encode_prompt`). Generation stops at
the end of a document or when the model starts the next turn: the stop strings are
"\\n" + each label + ":" (`chat_stops`). The answer is the generated text with leading
whitespace removed (`clean_answer`).

The interactive loop (`chat_loop`, behind `banglaslm chat`-style front ends):
- Type a message and press Enter. A line that ends with a backslash continues on the next line
  (the backslash becomes a line break), so multi-line messages are possible.
- Commands start with "/": /temp X, /topk N|off, /topp X|off, /minp X|off, /rep X
  (repetition penalty), /max N, /seed N|off, /greedy on|off, /settings, /reset (forget the
  conversation), /help, /quit.
- The answer streams as it is generated. Ctrl-C during an answer stops that answer (the part
  already shown stays in the conversation) and returns to the prompt; Ctrl-C or end of input
  (Ctrl-D) at the prompt ends the chat.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterable, Mapping

from .engine import Engine, SamplingParams
from .errors import UserError

CHAT_TEMPLATE_VERSION = "bn-chat-1"

CHAT_LABELS: dict[str, dict[str, str]] = {
    "bn": {"system": "নির্দেশ", "user": "ব্যবহারকারী", "assistant": "সহকারী"},
    "en": {"system": "System", "user": "User", "assistant": "Assistant"},
}
CHAT_ROLES = ("system", "user", "assistant")


def _labels(language: str) -> dict[str, str]:
    try:
        return CHAT_LABELS[language]
    except KeyError:
        raise UserError(f"unknown chat language {language!r}; use one of {sorted(CHAT_LABELS)}") from None


def render_chat(messages: Iterable[Mapping[str, str]], language: str = "bn") -> str:
    """The prompt for `messages` ([{"role": "system"|"user"|"assistant", "content": str}]):
    one "{label}: {content}" line per message, then the assistant's label, opened for the
    model to continue (module docstring)."""
    labels = _labels(language)
    lines = []
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in labels:
            raise UserError(f"message {i}: role must be one of {list(CHAT_ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise UserError(f"message {i}: content must be text")
        lines.append(f"{labels[role]}: {content.strip()}\n")
    return "".join(lines) + f"{labels['assistant']}:"


def chat_stops(language: str = "bn") -> list[str]:
    """Stop strings that end the assistant's turn: the start of any next turn."""
    return [f"\n{label}:" for label in _labels(language).values()]


def clean_answer(text: str) -> str:
    """The assistant's answer from the generated text (leading whitespace removed)."""
    return text.lstrip()


# ---- the interactive loop ------------------------------------------------------------------

HELP = """\
Commands:
  /temp X        temperature (e.g. 0.7)          /greedy on|off   argmax decoding
  /topk N|off    keep the N most likely tokens   /topp X|off      nucleus sampling
  /minp X|off    min-p filter                    /rep X           repetition penalty (1 = off)
  /max N         longest answer, in tokens       /seed N|off      fixed seed for every answer
  /settings      show the settings               /reset           forget the conversation
  /help          this text                       /quit            end the chat
End a line with \\ to continue the message on the next line. Ctrl-C stops an answer."""


def _stdout_write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _off(value: str) -> bool:
    return value.lower() in {"off", "none", "0"}


def _apply_command(params: SamplingParams, name: str, arg: str) -> SamplingParams:
    """A copy of `params` with one setting changed; UserError on a bad value."""
    def number(kind):
        try:
            return kind(arg)
        except ValueError:
            raise UserError(f"/{name} needs a {'whole ' if kind is int else ''}number, got {arg!r}") from None

    if name not in {"temp", "topk", "topp", "minp", "rep", "max", "seed", "greedy"}:
        raise UserError(f"unknown command /{name}; type /help")
    if not arg:
        raise UserError(f"/{name} needs a value (see /help)")
    if name == "temp":
        new = dataclasses.replace(params, temperature=number(float))
    elif name == "topk":
        new = dataclasses.replace(params, top_k=None if _off(arg) else number(int))
    elif name == "topp":
        new = dataclasses.replace(params, top_p=None if arg.lower() in {"off", "none"} else number(float))
    elif name == "minp":
        new = dataclasses.replace(params, min_p=None if arg.lower() in {"off", "none"} else number(float))
    elif name == "rep":
        new = dataclasses.replace(params, repetition_penalty=number(float))
    elif name == "max":
        new = dataclasses.replace(params, max_new_tokens=number(int))
    elif name == "seed":
        new = dataclasses.replace(params, seed=None if arg.lower() in {"off", "none"} else number(int))
    elif name == "greedy":
        if arg.lower() not in {"on", "off"}:
            raise UserError(f"/greedy takes on or off, got {arg!r}")
        new = dataclasses.replace(params, greedy=arg.lower() == "on")
    else:
        raise UserError(f"unknown command /{name}; type /help")
    new.validate()
    return new


def _settings_text(p: SamplingParams) -> str:
    return (f"temperature={p.temperature} top_k={p.top_k} top_p={p.top_p} min_p={p.min_p} "
            f"repetition_penalty={p.repetition_penalty} max={p.max_new_tokens} seed={p.seed} "
            f"greedy={'on' if p.greedy else 'off'}")


def _read_message(read_line: Callable[[str], str], prompt: str) -> str:
    """One message: lines joined while they end with a backslash."""
    lines = []
    line = read_line(prompt)
    while line.endswith("\\"):
        lines.append(line[:-1])
        line = read_line("... ")
    lines.append(line)
    return "\n".join(lines)


def chat_loop(loaded, read_line: Callable[[str], str] = input, write: Callable[[str], None] | None = None,
              params: SamplingParams | None = None, language: str = "bn",
              system: str | None = None, engine: Engine | None = None) -> list[dict[str, str]]:
    """Chat with `loaded` (a `LoadedModel`) until /quit, Ctrl-C or end of input at the prompt.

    `read_line(prompt)` returns one line (like `input`; EOFError ends the chat); `write(text)`
    shows text as-is, without adding a newline (default: stdout, flushed). Returns the
    conversation (the messages since the last /reset). See the module docstring.
    """
    write = write or _stdout_write
    engine = engine or Engine(loaded.model, loaded.tokenizer)
    params = dataclasses.replace(params) if params else SamplingParams(max_new_tokens=200, temperature=0.8)
    params.n = 1
    params.validate()
    stops = chat_stops(language)
    you = "আপনি> " if language == "bn" else "you> "
    bot = f"{_labels(language)['assistant']}: "
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    write("Type a message; /help lists the commands.\n")
    while True:
        try:
            text = _read_message(read_line, you)
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return history
        stripped = text.strip()
        if not stripped:
            continue
        if stripped.startswith("/"):
            name, _, arg = stripped[1:].partition(" ")
            name, arg = name.lower(), arg.strip()
            if name in {"quit", "exit", "q"}:
                return history
            if name == "help":
                write(HELP + "\n")
            elif name == "reset":
                history = [{"role": "system", "content": system}] if system else []
                write("(conversation cleared)\n")
            elif name == "settings":
                write(_settings_text(params) + "\n")
            else:
                try:
                    params = _apply_command(params, name, arg)
                    write(_settings_text(params) + "\n")
                except UserError as exc:
                    write(f"error: {exc}\n")
            continue
        history.append({"role": "user", "content": stripped})
        turn = dataclasses.replace(params, stop=list(params.stop) + stops)
        answer = ""
        write(bot)
        try:
            with contextlib.closing(engine.stream(render_chat(history, language), turn)) as pieces:
                for piece in pieces:
                    if not answer:
                        piece = piece.lstrip()
                        if not piece:
                            continue
                    answer += piece
                    write(piece)
            write("\n")
        except KeyboardInterrupt:
            write(" [stopped]\n")
        except UserError as exc:
            write(f"\nerror: {exc}\n")
            history.pop()
            continue
        history.append({"role": "assistant", "content": answer})
