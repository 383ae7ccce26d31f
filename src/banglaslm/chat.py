"""`banglaslm chat`: an interactive chat in the terminal, over the chat template.

Type a message and press Enter; a line ending in a backslash continues on the next line.
Commands start with "/" (/help lists them). The answer streams as it is generated; Ctrl-C
stops that answer, and Ctrl-C or Ctrl-D at the prompt ends the chat.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import sys
from collections.abc import Callable

from .chat_template import chat_labels, chat_stops, encode_chat
from .config import SamplingParams
from .errors import UserError
from .generation.engine import Engine
from .tokenizer import Coverage, Tokenizer

CHAT_DEFAULTS = {"top_k": 50}  # where chat differs from SamplingParams' defaults

# ---- the interactive loop ------------------------------------------------------------------

HELP = """\
Commands:
  /temp X        temperature (e.g. 0.7)          /greedy on|off   argmax decoding
  /topk N|off    keep the N most likely tokens   /topp X|off      nucleus sampling
  /minp X|off    min-p filter                    /rep X           repetition penalty (1 = off)
  /max N         longest answer, in tokens       /seed N|off      fixed seed for every answer
  /settings      show the settings               /reset           forget the conversation
  /system TEXT|off  the system prompt (instructions the answers follow); starts a new conversation
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
    try:
        new.validate()
    except UserError as exc:  # name the commands, not the parameters
        said = re.sub(r"`(\w+)`", lambda m: _COMMAND_OF.get(m.group(1), m.group(1)), str(exc))
        raise UserError(f"/{name}: {said}") from None
    return new


# What a sampling parameter named in an error (`greedy`) is called in chat.
_COMMAND_OF = {"temperature": "/temp", "top_k": "/topk", "top_p": "/topp", "min_p": "/minp",
               "repetition_penalty": "/rep", "max_new_tokens": "/max", "seed": "/seed", "greedy": "/greedy on"}


def _settings_text(p: SamplingParams) -> str:
    """Every setting the answers are sampled with (greedy also when temperature 0 makes it so)."""
    return (f"temperature={p.temperature} top_k={p.top_k} top_p={p.top_p} min_p={p.min_p} "
            f"repetition_penalty={p.repetition_penalty} presence_penalty={p.presence_penalty} "
            f"frequency_penalty={p.frequency_penalty} max={p.max_new_tokens} seed={p.seed} "
            f"greedy={'on' if p.greedy or p.temperature == 0 else 'off'}")


def read_piped(prompt: str) -> str:
    """`input` for a piped stdin, which shows the prompt but not the line: echo it, so that the
    transcript reads as the conversation it was."""
    line = input(prompt)
    _stdout_write(line + "\n")
    return line


def _read_message(read_line: Callable[[str], str], prompt: str) -> str:
    """One message: lines joined while they end with a backslash."""
    lines = []
    line = read_line(prompt)
    while line.endswith("\\"):
        lines.append(line[:-1])
        try:
            line = read_line("... ")
        except EOFError:  # the input ended inside a message: send what came (the next read ends the chat)
            return "\n".join(lines)
    lines.append(line)
    return "\n".join(lines)


def _answer(engine: Engine, prompt: list[int], params: SamplingParams, write: Callable[[str], None]) -> str:
    """Stream the model's answer to `prompt`, leading whitespace dropped; Ctrl-C stops it and
    what was shown stays the answer."""
    answer = ""
    try:
        with contextlib.closing(engine.stream(prompt, params)) as pieces:
            for piece in pieces:
                if not answer:
                    piece = piece.lstrip()
                    if not piece:
                        continue
                answer += piece
                write(piece)
        write("\n" if answer else "(no answer: the model ended it at once; /temp or /seed may help)\n")
    except KeyboardInterrupt:
        write(" [stopped]\n")
    return answer


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
    params = dataclasses.replace(params) if params else SamplingParams(**CHAT_DEFAULTS)
    params.n = 1
    params.validate()
    you = "আপনি> " if language == "bn" else "you> "
    fresh = [{"role": "system", "content": system}] if system else []
    history: list[dict[str, str]] = list(fresh)
    stops = chat_stops(language, engine.tokenizer)  # before the first turn: building them takes a moment
    write("Type a message; /help lists the commands.\n")
    while True:
        try:
            text = _read_message(read_line, you).lstrip("\ufeff").strip()  # a file from Windows may begin with a BOM
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return history
        if not text:
            continue
        if text.startswith("/"):
            name, _, arg = text[1:].partition(" ")
            name, arg = name.lower(), arg.strip()
            if name in {"quit", "exit", "q"}:
                return history
            if name == "reset":
                history = list(fresh)
            if name == "system":
                fresh = [] if _off(arg) or not arg else [{"role": "system", "content": arg}]
                history = list(fresh)
                write(f"(system prompt {'set' if fresh else 'off'}; conversation cleared)\n")
                continue
            params = _command(params, name, arg, write)
            continue
        history.append({"role": "user", "content": text})
        _note_unknown(engine.tokenizer, text, write)
        write(f"{chat_labels(language)['assistant']}: ")
        turn = dataclasses.replace(params, stop=list(params.stop) + stops)
        try:
            context, _ = encode_chat(engine.tokenizer, history, language=language)
            answer = _answer(engine, context, turn, write)
        except UserError as exc:
            write(f"\nerror: {exc}\n")
            history.pop()
            continue
        except KeyboardInterrupt:  # before the answer began (encoding the conversation): no answer
            write(" [stopped]\n")
            history.pop()
            continue
        history.append({"role": "assistant", "content": answer})


def _note_unknown(tokenizer: Tokenizer, text: str, write: Callable[[str], None]) -> None:
    coverage = Coverage()
    tokenizer.encode(text, coverage=coverage)
    if note := coverage.unknown_note("your message"):
        write(f"(note: {note})\n")


def _command(params: SamplingParams, name: str, arg: str, write: Callable[[str], None]) -> SamplingParams:
    """Run one /command other than /quit; the settings after it."""
    if name == "help":
        write(HELP + "\n")
    elif name == "reset":
        write("(conversation cleared)\n")
    elif name == "settings":
        write(_settings_text(params) + "\n")
    else:
        try:
            params = _apply_command(params, name, arg)
            write(_settings_text(params) + "\n")
        except UserError as exc:
            write(f"error: {exc}\n")
    return params
