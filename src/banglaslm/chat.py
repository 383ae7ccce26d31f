"""`banglaslm chat`: an interactive chat in the terminal, over the chat template.

Type a message and press Enter; a line ending in a backslash continues on the next line.
Commands start with "/" (/help lists them). The answer streams as it is generated; Ctrl-C
stops that answer, and Ctrl-C twice or Ctrl-D at the prompt ends the chat (one Ctrl-C there
may have been meant for an answer that had just ended).
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
from .text import normalize

CHAT_DEFAULTS = {"top_k": 50}  # where chat differs from SamplingParams' defaults

# ---- the interactive loop ------------------------------------------------------------------

HELP = """\
Commands:
  /temp X        temperature (e.g. 0.7)          /greedy on|off   argmax decoding
  /topk N|off    keep the N most likely tokens   /topp X|off      nucleus sampling
  /minp X|off    min-p filter                    /rep X           repetition penalty (1 = off)
  /max N         longest answer, in tokens       /seed N|off      fixed seed for every answer
  /settings      show the settings               /reset           forget the conversation
  /system TEXT|off  the system prompt (instructions the answers follow); starts a new conversation;
                 /system alone shows it
  /help          this text                       /quit            end the chat
End a line with \\ to continue the message on the next line. Ctrl-C stops an answer; at the
prompt, Ctrl-C twice or Ctrl-D ends the chat."""


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
        if new.top_k is not None and new.top_k < 1:  # the library's words name None, not chat's "off"
            raise UserError(f"/topk takes a whole number of at least 1, or off (no top-k); got {arg}")
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
    line = read_line(prompt).rstrip("\r")  # a piped file with Windows line ends
    while line.endswith("\\"):
        lines.append(line[:-1])
        try:
            line = read_line("... ").rstrip("\r")
        except EOFError:  # the input ended inside a message: send what came (the next read ends the chat)
            return "\n".join(lines)
    lines.append(line)
    return "\n".join(lines)


def _answer(engine: Engine, prompt: list[int], params: SamplingParams, write: Callable[[str], None]) -> str:
    """Stream the model's answer to `prompt`, leading whitespace dropped; Ctrl-C stops it and
    what was shown stays the answer."""
    answer = ""
    try:
        with contextlib.closing(engine.stream(prompt, params, strip_leading=True)) as pieces:
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


@dataclasses.dataclass
class _Conversation:
    """The messages since the last /reset, the system prompt that starts them first."""
    system: str | None
    history: list[dict[str, str]] = dataclasses.field(default_factory=list)
    told_long: bool = False  # said that it outgrew the model's context

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.history = [{"role": "system", "content": self.system}] if self.system else []
        self.told_long = False


def chat_loop(loaded, read_line: Callable[[str], str] = input, write: Callable[[str], None] | None = None,
              params: SamplingParams | None = None, language: str = "bn",
              system: str | None = None, engine: Engine | None = None) -> list[dict[str, str]]:
    """Chat with `loaded` (a `LoadedModel`) until /quit, end of input, or Ctrl-C twice at the prompt.

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
    chat = _Conversation(system)
    stops = chat_stops(language, engine.tokenizer)  # before the first turn: building them takes a moment
    write("Type a message; /help lists the commands.\n")
    interrupted = False  # Ctrl-C at the prompt once: a second one ends the chat
    while True:
        try:
            text = _read_message(read_line, you).lstrip("\ufeff").strip()  # a file from Windows may begin with a BOM
        except (EOFError, KeyboardInterrupt) as stop:
            if isinstance(stop, KeyboardInterrupt) and not interrupted:  # maybe meant for an answer that just ended
                interrupted = True
                write("\n(Ctrl-C again, Ctrl-D or /quit ends the chat)\n")
                continue
            write("\n")
            return chat.history
        interrupted = False
        if not normalize(text):  # blank, or only invisible characters (a zero-width space)
            continue
        if text.startswith("/"):
            params, quit_now = _slash(chat, params, text, write)
            if quit_now:
                return chat.history
            continue
        _turn(engine, chat, text, dataclasses.replace(params, stop=list(params.stop) + stops), language, write)


def _turn(engine: Engine, chat: _Conversation, text: str, params: SamplingParams, language: str,
          write: Callable[[str], None]) -> None:
    """One message and its answer, added to `chat`; neither when it fails or Ctrl-C comes
    before the answer begins."""
    chat.history.append({"role": "user", "content": text})
    try:
        if note := engine.tokenizer.unknown_note(text, "your message"):
            write(f"(note: {note})\n")
        context, _ = encode_chat(engine.tokenizer, chat.history, language=language)
        if len(context) > engine.block_size and not chat.told_long:
            chat.told_long = True
            write(f"(note: the conversation has outgrown the model's context of {engine.block_size:,} tokens; "
                  "the answers see only its latest part, and /reset starts afresh)\n")
        write(f"{chat_labels(language)['assistant']}: ")
        answer = _answer(engine, context, params, write)
    except UserError as exc:
        write(f"\nerror: {exc}\n")
        chat.history.pop()
        return
    except KeyboardInterrupt:  # before the answer began (encoding the conversation): no answer
        write(" [stopped]\n")
        chat.history.pop()
        return
    chat.history.append({"role": "assistant", "content": answer})


def _slash(chat: _Conversation, params: SamplingParams, text: str,
           write: Callable[[str], None]) -> tuple[SamplingParams, bool]:
    """Run the /command `text`: the settings after it, and whether it ends the chat."""
    name, _, arg = text[1:].partition(" ")
    name, arg = name.lower(), arg.strip()
    if name in {"quit", "exit", "q"}:
        return params, True
    if name == "system":
        _system(chat, arg, write)
    elif name == "reset":
        chat.reset()
        write("(conversation cleared)\n")
    elif name == "settings":
        write(_settings_text(params) + "\n" + f"system prompt: {chat.system or 'off'}\n")
    else:
        params = _command(params, name, arg, write)
    return params, False


def _system(chat: _Conversation, arg: str, write: Callable[[str], None]) -> None:
    """/system TEXT sets the system prompt, /system off drops it (either starts a new
    conversation), /system alone shows it."""
    if not arg:
        write(f"(system prompt: {chat.system})\n" if chat.system else "(no system prompt; /system TEXT sets one)\n")
        return
    chat.system = None if _off(arg) else arg
    chat.reset()
    write(f"(system prompt {'set' if chat.system else 'off'}; conversation cleared)\n")


def _command(params: SamplingParams, name: str, arg: str, write: Callable[[str], None]) -> SamplingParams:
    """Run /help or a sampling setting's command; the settings after it."""
    if name == "help":
        write(HELP + "\n")
    else:
        try:
            params = _apply_command(params, name, arg)
            write(_settings_text(params) + "\n")
        except UserError as exc:
            write(f"error: {exc}\n")
    return params
