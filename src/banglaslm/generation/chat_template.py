"""The chat template (version "bn-chat-1"), shared by `banglaslm chat` and the server.

Our models are base models, so a chat is plain continuation of a transcript:

    নির্দেশ: {system message}          (only when there is one)
    ব্যবহারকারী: {user message}
    সহকারী: {assistant message}
    সহকারী:                            (the assistant's turn, opened for the model)

Generation stops at the end of a document or where the model starts the next turn.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..errors import UserError

CHAT_TEMPLATE_VERSION = "bn-chat-1"

CHAT_LABELS: dict[str, dict[str, str]] = {
    "bn": {"system": "নির্দেশ", "user": "ব্যবহারকারী", "assistant": "সহকারী"},
    "en": {"system": "System", "user": "User", "assistant": "Assistant"},
}
CHAT_ROLES = ("system", "user", "assistant")


def chat_labels(language: str) -> dict[str, str]:
    """The role labels of `language` ("bn" or "en")."""
    try:
        return CHAT_LABELS[language]
    except KeyError:
        raise UserError(f"unknown chat language {language!r}; use one of {sorted(CHAT_LABELS)}") from None


def render_chat(messages: Iterable[Mapping[str, str]], language: str = "bn") -> str:
    """The prompt for `messages` ([{"role": "system"|"user"|"assistant", "content": str}]):
    one "{label}: {content}" line per message, then the assistant's label, opened for the
    model to continue (module docstring)."""
    labels = chat_labels(language)
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
    return [f"\n{label}:" for label in chat_labels(language).values()]


def clean_answer(text: str) -> str:
    """The assistant's answer from the generated text (leading whitespace removed)."""
    return text.lstrip()
