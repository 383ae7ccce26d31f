"""Streaming detokenization: token ids in, one at a time; text that is safe to show, out.

Naive streaming is wrong for Bangla twice over: a byte-level token can end inside a UTF-8
character (every Bangla letter is three bytes), and a whole character can still change what is
on screen (a vowel sign, a hasanta and a following consonant, a joiner). So the decoder keeps
bytes until they form characters and holds back the last grapheme cluster (`text.joins_previous`)
until it is complete. Emitted text never ends in a hasanta or joiner, so

    "".join(pieces) == finished_text(tokenizer, ids)

holds exactly. Special tokens produce no text.
"""

from __future__ import annotations

import codecs

from ..text import HASANTA, ZWJ, ZWNJ, joins_previous
from ..tokenizer import Tokenizer

# What a cut-off generation may end in while it waits for the next letter.
DANGLING = HASANTA + ZWJ + ZWNJ
# Tokenizers that are not byte-level decode their recent ids again after each token; once this
# many have gathered twice over, the oldest are fixed as text, so a token costs the same at the
# 4,000th as at the first (decoding the whole continuation each time grew with its length).
FIX_IDS = 32


def tidy_end(text: str) -> str:
    """A cut-off generation may end in a hasanta or joiner waiting for the next letter."""
    return text.rstrip(DANGLING)


def finished_text(tokenizer: Tokenizer, ids: list[int]) -> str:
    """The text of a finished generation `ids`: a character that it stopped inside of (its
    first byte pieces sampled, the rest never) is left out, as byte-level decoding leaves out
    its bytes, and the end is tidied."""
    return tidy_end(tokenizer.decode(ids[:len(ids) - tokenizer.incomplete_tail(ids)], continuing=True))


def safe_cut(text: str, end: int | None = None) -> int:
    """The largest index <= `end` where `text` may be cut while more text may still follow.

    That is a grapheme cluster boundary before the last cluster (which may still grow), and
    not right after a hasanta or joiner (which the final tidy-up may remove). `end` is an
    extra limit (e.g. where a possible stop string begins); the default is the whole text.
    """
    end = len(text) if end is None else min(end, len(text))
    if end == len(text):
        end -= 1  # the last cluster is always held back: cut before the cluster holding text[-1]
    while end > 0:
        while end > 0 and joins_previous(text, end):
            end -= 1
        if end > 0 and text[end - 1] in DANGLING:
            end -= 1  # then back to the start of the cluster holding that hasanta/joiner
            continue
        break
    return max(end, 0)


class StreamDecoder:
    """Turns token ids, fed one at a time, into text pieces that are safe to display.

        dec = StreamDecoder(tokenizer)
        for token_id in ids:
            print(dec.push(token_id), end="")
        print(dec.finish())

    `text` is everything decoded so far (whole characters only), `sent` how much of it has
    been handed out. For byte-level BPE and char tokenizers the bytes are decoded
    incrementally (exact); for other tokenizers (SentencePiece) the ids not yet fixed are decoded
    again after each token, and the oldest of them are fixed as text where decoding them apart
    gives the same text as decoding them together (never inside one character's byte pieces).
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.text = ""
        self.sent = 0
        self._incremental = tokenizer.byte_level or tokenizer.kind == "char"
        # bytes that never form a character are written as Tokenizer.decode writes them
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors=tokenizer.decode_errors)
        self._ids: list[int] = []  # the ids not yet fixed (non-incremental tokenizers)
        self._fixed = ""           # the text of the ids before them
        self._finished = False

    def feed(self, token_id: int) -> None:
        """Add one token to `text` without handing anything out."""
        if self._finished:
            raise RuntimeError("StreamDecoder.feed() after finish()")
        if self._incremental:
            self.text += self._utf8.decode(self.tokenizer.token_bytes(token_id))
        else:
            self._ids.append(token_id)
            ready = len(self._ids) - self.tokenizer.incomplete_tail(self._ids)
            self.text = self._fixed + self.tokenizer.decode(self._ids[:ready], continuing=True)
            if ready >= 2 * FIX_IDS:
                self._fix_oldest(ready)

    def _fix_oldest(self, ready: int) -> None:
        """Move about FIX_IDS of the oldest ids into `_fixed`, at a cut where decoding the two
        sides apart gives `text` unchanged (a cut between one character's byte pieces does
        not); where no nearby cut does, the next token tries again."""
        decode, recent = self.tokenizer.decode, self.text[len(self._fixed):]
        for cut in range(FIX_IDS, FIX_IDS + 8):
            head = decode(self._ids[:cut], continuing=True)
            if recent.startswith(head) and head + decode(self._ids[cut:ready], continuing=True) == recent:
                self._fixed += head
                del self._ids[:cut]
                return

    def take(self, end: int | None = None) -> str:
        """The text that became safe since the last call (cut no later than `end`)."""
        cut = safe_cut(self.text, end)
        if cut <= self.sent:
            return ""
        piece, self.sent = self.text[self.sent:cut], cut
        return piece

    def push(self, token_id: int) -> str:
        """Feed one token; return the text that is now safe to emit (often '')."""
        self.feed(token_id)
        return self.take()

    def finish(self, end: int | None = None) -> str:
        """Flush: everything not yet handed out, up to `end` (e.g. where a stop string
        begins), without a dangling hasanta/joiner at the very end."""
        if not self._finished and self._incremental:
            self.text += self._utf8.decode(b"", final=True)
        elif not self._finished:  # a character whose byte pieces never completed is left out
            self.text = self._fixed + finished_text(self.tokenizer, self._ids)
        self._finished = True
        final = tidy_end(self.text if end is None else self.text[:end])
        piece = final[self.sent:]
        self.sent = max(self.sent, len(final))
        return piece
