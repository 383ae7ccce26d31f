"""The one text normalization (policy `bn-1`) and the one grapheme-cluster rule.

The same visible Bangla word arrives in several encodings; a model trained on one and prompted
with another sees different tokens. So every stage that takes text runs `normalize()`, and
every stage that cuts text (streaming, the tokenizer study) uses `joins_previous()`. The policy,
rule by rule, is in docs/data.md.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Iterable, Iterator
from functools import lru_cache

from .errors import UserError, wrong_kind

NORMALIZATION = "bn-1"

HASANTA = "\u09cd"
ZWNJ, ZWJ = "\u200c", "\u200d"
LINE_BREAKS = "\r\u2028\u2029\x85\x0b\x0c"  # each becomes "\n"

_NUKTA_RECOMPOSE = {"\u09a1\u09bc": "\u09dc", "\u09a2\u09bc": "\u09dd", "\u09af\u09bc": "\u09df"}
_NUKTA_RE = re.compile("|".join(_NUKTA_RECOMPOSE))
_KHANDA_TA_RE = re.compile("\u09a4\u09cd\u200d")
# A joiner survives only when it touches a hasanta; `(?<!...)`/`(?!...)` keep this one pass.
_STRAY_JOINER_RE = re.compile(f"(?<!{HASANTA})[{ZWNJ}{ZWJ}]+(?![{ZWNJ}{ZWJ}]*{HASANTA})")
_REPEATED_JOINER_RE = re.compile(f"([{ZWNJ}{ZWJ}])[{ZWNJ}{ZWJ}]+")
_SPACES_RE = re.compile(r" {2,}")
_LINE_EDGE_SPACES_RE = re.compile(r" *\n *")
_MANY_NEWLINES_RE = re.compile(r"\n{3,}")


@lru_cache(maxsize=1)
def character_classes() -> dict[str, tuple[int, ...]]:
    """The code points `normalize` maps to a line break ("newline"), to a space ("space") and
    to nothing ("drop"), by Python's `unicodedata`. The Hugging Face export builds its
    normalizer from these same classes."""
    classes: dict[str, list[int]] = {"newline": [], "space": [], "drop": []}
    for cp in range(sys.maxunicode + 1):
        ch = chr(cp)
        if ch == "\n":
            continue
        category = unicodedata.category(ch)
        if ch in LINE_BREAKS:
            classes["newline"].append(cp)
        elif ch == "\t" or category == "Zs":
            classes["space"].append(cp)
        elif category == "Cc" or (category == "Cf" and ch not in (ZWNJ, ZWJ)):
            classes["drop"].append(cp)
    return {name: tuple(cps) for name, cps in classes.items()}


def char_class(cps: tuple[int, ...]) -> str:
    """A regex character-class body for code points `cps`, as literal `a-b` ranges (literal
    characters read the same in every regex dialect, Python's and tokenizer.json's)."""
    out, cps = [], sorted(cps)
    start = prev = cps[0]
    for cp in cps[1:] + [None]:
        if cp is not None and cp == prev + 1:
            prev = cp
            continue
        out.append(chr(start) if start == prev else f"{chr(start)}-{chr(prev)}")
        if cp is not None:
            start = prev = cp
    return "".join(out)


@lru_cache(maxsize=1)
def _line_rules() -> tuple[re.Pattern, re.Pattern]:
    """Every line break of the "newline" class; a line holding only what `normalize` turns
    into spaces or nothing (spaces, tabs, no-break spaces, zero-width and joiner characters)."""
    classes = character_classes()
    breaks = re.compile("\r\n|[" + char_class(classes["newline"]) + "]")
    blank = char_class(classes["space"] + classes["drop"] + (ord(ZWNJ), ord(ZWJ)))
    return breaks, re.compile(f"\n[{blank}]*\n")


def unify_line_breaks(text: str) -> str:
    """CRLF, a lone CR (old Mac files) and the other line-break characters become "\\n"."""
    return _line_rules()[0].sub("\n", text)


def split_stream(chunks: Iterable[str], by: str) -> Iterator[str]:
    """What `split_paragraphs` (`by` "paragraph") or splitting at "\\n" (`by` "line") gives for
    the text of `chunks` joined, its line breaks unified, piece by piece as each completes: a
    file larger than memory streams through, holding one piece at a time."""
    breaks, paragraph = _line_rules()
    rule = paragraph if by == "paragraph" else re.compile("\n")
    carry, cr = "", ""
    for chunk in chunks:
        raw = cr + chunk
        cr = "\r" if raw.endswith("\r") else ""  # a CRLF may straddle two chunks
        parts = rule.split(carry + breaks.sub("\n", raw[:len(raw) - len(cr)]))
        yield from parts[:-1]
        carry = parts[-1]  # the scan goes on from its start, as it would in the whole text
    yield from rule.split(carry + breaks.sub("\n", cr))


def split_paragraphs(text: str) -> list[str]:
    """Paragraphs separated by blank lines, where a line that only looks blank (spaces, a tab,
    a zero-width space) counts as blank."""
    return _line_rules()[1].split(unify_line_breaks(text))


@lru_cache(maxsize=1)
def _translation() -> dict[int, str | None]:
    classes = character_classes()
    table: dict[int, str | None] = {cp: "\n" for cp in classes["newline"]}
    table.update({cp: " " for cp in classes["space"]})
    table.update({cp: None for cp in classes["drop"]})
    return table


def check_text(text: str, what: str) -> str:
    """`text`, if it can be written as UTF-8; else a UserError naming `what`. A lone surrogate
    (JSON's "\\ud800", or a byte that was not UTF-8 in a command-line argument) cannot.
    Text given as bytes, a list or None (from Python) is a UserError too."""
    require_str(text, what)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UserError(f"{what} is not valid text: it holds a lone surrogate (U+{ord(text[exc.start]):04X}) at "
                        f"character {exc.start}, e.g. from bytes that are not UTF-8; send UTF-8 text",
                        param=what) from None
    return text


def require_str(text: object, what: str) -> str:
    """`text`, if it is a str; else the UserError naming `what` (bytes get the fix: decode them)."""
    if not isinstance(text, str):
        fix = "decode it first, e.g. data.decode(\"utf-8\")" if isinstance(text, (bytes, bytearray)) else ""
        raise wrong_kind(what, text, "text (str)", fix)
    return text


def normalize(text: str) -> str:
    """`text` in the project's canonical form (policy NORMALIZATION, docs/data.md); UserError for
    anything but a str."""
    return normalize_fragment(require_str(text, "text")).strip()


def normalize_prompt(text: str) -> str:
    """A prompt to continue, normalized as `normalize` does but for its end: a final line break
    stays (one, or the two of a blank line), since a prompt that ends its line asks for the next
    one, as training text continues after its line breaks; trailing spaces still go."""
    text = normalize_fragment(require_str(text, "prompt")).lstrip()
    return text.rstrip(" ") if text.strip() else ""


def opens_a_word(prompt: str) -> bool:
    """Whether `prompt` ends in a space after text (not after a line break): `normalize_prompt`
    drops that space, so its writer asks for a new word, which our tokenizers write with its
    space (" ভাত"), and the first token is kept to one that opens with a space."""
    text = normalize_fragment(prompt)
    kept = text.rstrip(" ")
    return kept != text and kept.strip() != "" and not kept.endswith("\n")


def prompt_shown(text: str) -> str:
    """The prompt as its writer typed it, less what `normalize_prompt` drops from its end: spaces,
    tabs, no-break spaces and invisible characters (a line break, in any spelling, stays). With
    them, a continuation that opens with its own space read as a double space."""
    end = len(text)
    while end and normalize_fragment(text[end - 1]) in ("", " "):
        end -= 1
    return text[:end]


def normalize_fragment(text: str) -> str:
    """The normalization of a piece of text that is looked for inside normalized text (a stop
    string, say): every rule but the final strip, so "\\n" stays a line break."""
    text = text.replace("\r\n", "\n")
    # One pass reaches the fixed point: invisible characters go before composition (ড + U+200B
    # + ় composes), and joiners are judged with the marks in canonical order (NFD), which
    # composition (NFC) then keeps; NFC first left such text for a second normalization.
    text = text.translate(_translation())
    text = unicodedata.normalize("NFD", text)
    text = _REPEATED_JOINER_RE.sub(r"\1", text)
    text = _STRAY_JOINER_RE.sub("", text)
    text = unicodedata.normalize("NFC", text)
    text = _NUKTA_RE.sub(lambda m: _NUKTA_RECOMPOSE[m.group(0)], text)
    text = _KHANDA_TA_RE.sub("\u09ce", text)
    text = _SPACES_RE.sub(" ", text)
    text = _LINE_EDGE_SPACES_RE.sub("\n", text)
    return _MANY_NEWLINES_RE.sub("\n\n", text)


# ---- grapheme clusters ---------------------------------------------------------------------
_MARK_CATEGORIES = ("Mn", "Mc", "Me")


def joins_previous(text: str, i: int) -> bool:
    """True when text[i] belongs to the grapheme cluster of text[i - 1] (i >= 1).

    Unicode's extended grapheme clusters (UAX #29) where they matter here, erring on the side
    of joining: a combining mark (Mn/Mc/Me), a ZWJ/ZWNJ, an emoji skin-tone modifier, the LF of
    a CRLF, anything after a ZWJ, and a letter after a hasanta or ZWNJ (a conjunct, GB9c)."""
    ch = text[i]
    if ch in (ZWJ, ZWNJ) or unicodedata.category(ch) in _MARK_CATEGORIES:
        return True
    if "\U0001f3fb" <= ch <= "\U0001f3ff":  # emoji skin-tone modifiers
        return True
    prev = text[i - 1]
    if prev == ZWJ:  # emoji ZWJ sequences, র‍্য
        return True
    if prev in (HASANTA, ZWNJ):  # consonant + hasanta (+ joiner) + consonant
        return unicodedata.category(ch).startswith("L")
    return prev == "\r" and ch == "\n"


def cluster_breaks(text: str) -> list[bool]:
    """`breaks[i]` is True when a grapheme-cluster boundary lies before `text[i]`
    (i = 0 .. len(text)); the start and the end of the text are always boundaries."""
    return [True] + [not joins_previous(text, i) for i in range(1, len(text))] + ([True] if text else [])
