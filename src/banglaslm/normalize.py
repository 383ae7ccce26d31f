"""The one text normalization, applied wherever text enters: prepare, eval and generate.

Bangla text from the wild encodes the same visible word in several ways. A model trained on
one spelling and prompted with another sees different tokens, so every stage runs the same
`normalize()` and the data folder records `NORMALIZATION` so a mismatch is detectable.

The policy (version "bn-1"):
1. Unicode NFC.
2. Nukta letters: য় ড় ঢ় are kept *precomposed* (U+09DF, U+09DC, U+09DD). NFC alone would
   decompose them into letter + nukta (U+09BC), because Unicode excludes them from
   composition; we recompose, since precomposed is what real corpora (and keyboards) use and
   it makes one code point per letter.
3. Khanda-ta written the pre-Unicode-4.1 way (ত + hasanta + ZWJ) becomes ৎ (U+09CE).
4. ZWJ / ZWNJ are kept only next to a hasanta (U+09CD), where they select a conjunct form
   (র‍্য, ক্‌ষ); anywhere else they are invisible noise and are removed.
5. Other invisible format characters (zero-width space, BOM, soft hyphen, direction marks)
   and control characters are removed; tabs and Unicode spaces become a plain space.
6. Line breaks become `\n`; runs of spaces collapse to one; spaces at line starts and ends are
   dropped; three or more line breaks become two; the text is stripped.
"""

from __future__ import annotations

import re
import sys
import unicodedata

NORMALIZATION = "bn-1"

HASANTA = "\u09cd"
ZWNJ, ZWJ = "\u200c", "\u200d"

_NUKTA_RECOMPOSE = {"\u09a1\u09bc": "\u09dc", "\u09a2\u09bc": "\u09dd", "\u09af\u09bc": "\u09df"}
_NUKTA_RE = re.compile("|".join(_NUKTA_RECOMPOSE))
_KHANDA_TA_RE = re.compile("\u09a4\u09cd\u200d")
# A joiner survives only when it touches a hasanta; `(?<!...)`/`(?!...)` keep this one pass.
_STRAY_JOINER_RE = re.compile(f"(?<!{HASANTA})[{ZWNJ}{ZWJ}]+(?![{ZWNJ}{ZWJ}]*{HASANTA})")
_REPEATED_JOINER_RE = re.compile(f"([{ZWNJ}{ZWJ}])[{ZWNJ}{ZWJ}]+")
_SPACES_RE = re.compile(r" {2,}")
_LINE_EDGE_SPACES_RE = re.compile(r" *\n *")
_MANY_NEWLINES_RE = re.compile(r"\n{3,}")


def _build_translation() -> dict[int, str | None]:
    """Map every control, format and space character to what rule 5/6 says, in one table."""
    table: dict[int, str | None] = {}
    for cp in range(sys.maxunicode + 1):
        ch = chr(cp)
        cat = unicodedata.category(ch)
        if ch in "\n":
            continue
        if ch in "\r\u2028\u2029\x85\x0b\x0c":
            table[cp] = "\n"
        elif ch == "\t" or cat == "Zs":
            table[cp] = " "
        elif cat == "Cc" or (cat == "Cf" and ch not in (ZWNJ, ZWJ)):
            table[cp] = None
    return table


_TRANSLATION = _build_translation()


def normalize(text: str) -> str:
    """Return `text` in the project's canonical form (see the module docstring)."""
    text = text.replace("\r\n", "\n")
    text = unicodedata.normalize("NFC", text)
    text = _NUKTA_RE.sub(lambda m: _NUKTA_RECOMPOSE[m.group(0)], text)
    text = _KHANDA_TA_RE.sub("\u09ce", text)
    text = text.translate(_TRANSLATION)
    text = _REPEATED_JOINER_RE.sub(r"\1", text)
    text = _STRAY_JOINER_RE.sub("", text)
    text = _SPACES_RE.sub(" ", text)
    text = _LINE_EDGE_SPACES_RE.sub("\n", text)
    text = _MANY_NEWLINES_RE.sub("\n\n", text)
    return text.strip()
