"""The chat template (version "bn-chat-2"), defined once for fine-tuning, `chat`, the server and
the exports:

    [eod]নির্দেশ: {system}\\n ব্যবহারকারী: {user}\\n সহকারী: {assistant}[eod] ব্যবহারকারী: ... সহকারী:

A conversation starts after the end-of-document token, as every document does; an assistant
turn ends with it, so a fine-tuned model learns to end its answer and generation stops there. A
base model, never taught that, is also stopped where it starts the next turn (`chat_stops`).
Each piece is encoded on its own (`encode_chat`), the same way in training and at inference,
and fine-tuning puts loss on the answers and their end only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .errors import UserError
from .text import normalize
from .tokenizer import Coverage, Tokenizer

CHAT_TEMPLATE_VERSION = "bn-chat-2"

CHAT_LABELS: dict[str, dict[str, str]] = {
    "bn": {"system": "নির্দেশ", "user": "ব্যবহারকারী", "assistant": "সহকারী"},
    "en": {"system": "System", "user": "User", "assistant": "Assistant"},
}
CHAT_ROLES = ("system", "user", "assistant")
# Other names clients and datasets use for those roles: OpenAI's "developer" is its newer name
# for the system role; ShareGPT rows say "human" and "gpt".
ROLE_ALIASES = {"developer": "system", "human": "user", "gpt": "assistant"}
END = None  # the end-of-document token in a list of segments


def content_text(content: Any) -> str:
    """A message's text: a string, or OpenAI's list of content parts (`{"type": "text", "text":
    ...}`) joined. UserError for anything else (images, audio: this model reads text only)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    if isinstance(content, list):
        raise UserError("only text content parts are supported ({\"type\": \"text\", \"text\": ...})")
    raise UserError(f"content must be text or a list of text parts, got {type(content).__name__}")


def chat_labels(language: str) -> dict[str, str]:
    """The role labels of `language` ("bn" or "en")."""
    try:
        return CHAT_LABELS[language]
    except KeyError:
        raise UserError(f"unknown chat language {language!r}; use one of {sorted(CHAT_LABELS)}") from None


def chat_segments(messages: Iterable[Mapping[str, str]], add_generation_prompt: bool = True,
                  language: str = "bn") -> list[tuple[str | None, bool]]:
    """The conversation as (text or END, whether fine-tuning puts loss on it) segments; with
    `add_generation_prompt`, the assistant's turn opened last for the model to answer."""
    labels = chat_labels(language)
    segments: list[tuple[str | None, bool]] = [(END, False)]
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
        if role not in labels:
            raise UserError(f"message {i}: role must be one of {list(CHAT_ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise UserError(f"message {i}: content must be text, got {type(content).__name__}")
        content = normalize(content)
        if role == "assistant":  # OpenAI's weight 0: an answer given as context, not to learn
            trained = message.get("weight", 1) != 0
            answer = [(f" {content}", trained)] if content else []  # an empty one: no space (the export's too)
            segments += [(f"{labels['assistant']}:", False), *answer, (END, trained)]
        else:
            segments.append((f"{labels[role]}: {content}\n", False))
    if add_generation_prompt:
        segments.append((f"{labels['assistant']}:", False))
    return segments


def encode_chat(tokenizer: Tokenizer, messages: Iterable[Mapping[str, str]], add_generation_prompt: bool = True,
                language: str = "bn", coverage: Coverage | None = None) -> tuple[list[int], list[bool]]:
    """(ids, trained) of a conversation: the context the model sees, starting with the
    end-of-document token, and for each id whether fine-tuning puts loss on it; `coverage`
    counts its unknown tokens."""
    ids: list[int] = []
    trained: list[bool] = []
    for text, loss in chat_segments(messages, add_generation_prompt, language):
        piece = [tokenizer.eod_id] if text is END else tokenizer.encode(text, normalized=True, coverage=coverage)
        ids += piece
        trained += [loss] * len(piece)
    return ids, trained


def render_chat(messages: Iterable[Mapping[str, str]], add_generation_prompt: bool = True, language: str = "bn",
                end: str = "") -> str:
    """The conversation as text (the end-of-document token as `end`): what a person reads, and
    what the exported Jinja template renders with `end` = the tokenizer's end token."""
    return "".join(end if text is END else text for text, _ in chat_segments(messages, add_generation_prompt,
                                                                               language))


def jinja_template(language: str = "bn") -> str:
    """The template for Hugging Face's `apply_chat_template` (tokenizer_config.json's
    "chat_template"): with the exported tokenizer it gives `encode_chat`'s ids. A message's
    content may be OpenAI's list of text parts, as `content_text` reads it; another kind of
    part, or a role without a label ("tool"), raises, as our own template does."""
    labels = chat_labels(language)
    return ("{{ bos_token }}{% for message in messages %}"
            "{% if message['content'] is string %}{% set text = message['content'] %}"
            "{% elif message['content'] is none %}{% set text = '' %}"
            # a loop and a namespace, not rejectattr / map filters: what every Jinja engine has (llama.cpp's too)
            "{% else %}{% set parts = namespace(text='') %}{% for part in message['content'] %}"
            "{% if part['type'] != 'text' %}{{ raise_exception('only text content parts are supported') }}{% endif %}"
            "{% set parts.text = parts.text + part['text'] %}{% endfor %}{% set text = parts.text %}{% endif %}"
            "{% set text = text | trim %}"
            "{% if message['role'] == 'assistant' %}" + labels["assistant"] + ":{% if text %} {{ text }}{% endif %}"
            "{{ eos_token }}{% elif message['role'] == 'user' %}" + labels["user"] + ": {{ text }}\n"
            "{% elif message['role'] in ['system', 'developer'] %}" + labels["system"] + ": {{ text }}\n"
            "{% else %}{{ raise_exception('role must be system, user or assistant, got ' + message['role']) }}"
            "{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}" + labels["assistant"] + ":{% endif %}")


def chat_stops(language: str = "bn", tokenizer: Tokenizer | None = None) -> list[str]:
    """Stop strings for a base model, which never learned to end its turn: the next turn's start,
    as `tokenizer` writes it. A SentencePiece model normalized with nmt_nfkc (BanglaT5's) turns
    a newline into a space, so its model can never write "\n{label}:": its stops are " {label}:"."""
    newline = "\n" if tokenizer is None or "\n" in tokenizer.decode(tokenizer.encode("১\n২")) else " "
    return [f"{newline}{label}:" for label in chat_labels(language).values()]


def clean_answer(text: str) -> str:
    """The assistant's answer from the generated text (leading whitespace removed)."""
    return text.lstrip()
