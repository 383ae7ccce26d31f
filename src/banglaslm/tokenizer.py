"""Tokenizers, all stored as a Hugging Face `tokenizer.json`: byte-level BPE trained here
("bpe"), one token per character ("char"), or any existing tokenizer.json.

Why our own split pattern: GPT-2/GPT-4 patterns use `\\p{L}+`, and Bangla vowel signs and
hasanta are `\\p{M}`, so they cut every word apart and BPE never learns whole words; ours
(llama.cpp's `qwen35` split) keeps letters and marks together. Every kind has one
end-of-document token; text is encoded without the tokenizer's own special tokens, and a
literal special-token string in text stays text. More in docs/data.md.
"""

from __future__ import annotations

import codecs
import hashlib
import itertools
import json
import operator
import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from .errors import UserError, bad_param, wrong_kind
from .fileio import as_path, atomic_write_text
from .text import normalize, require_str

EOD = "<|endoftext|>"
UNK = "<|unk|>"
# llama.cpp's LLAMA_VOCAB_PRE_TYPE_QWEN35 split: contractions, an optional leading
# non-letter then letters+marks, single digits, punctuation runs, newlines, spaces.
SPLIT_PATTERN = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
    r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# For our own kinds, no pre-token can span the point just after a run of newlines that is
# followed by a non-space, so documents may be cut there and encoded in parallel pieces with
# identical ids (tests/core/test_tokenizer.py checks this on real text). Foreign tokenizers (e.g.
# SentencePiece's metaspace, which marks the start of every piece) are encoded whole.
_SAFE_CUT = re.compile(r"(?<=\n)(?=\S)")
# Names other tokenizers use for their end-of-sequence token, tried in order.
EOD_CANDIDATES = (EOD, "</s>", "<eos>", "<|end_of_text|>", "<|eot_id|>", "[SEP]")
_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")
_CONTROL_SPELLING = re.compile(r"<[^<>\s]+>|\[[A-Z_]+\]")  # "<extra_id_0>", "[MASK]": a control token's name
# A plain sentence (words, spaces, a comma, a danda) that a tokenizer fit for Bangla gives back.
ROUND_TRIP_PROBE = "আমার সোনার বাংলা, আমি তোমায় ভালোবাসি।"
UNK_SURFACE = " \u2047 "  # what SentencePiece's decoding writes for an unknown piece
# SentencePiece decodes byte pieces one character at a time and writes U+FFFD for each byte that
# starts no valid character (Hugging Face's ByteFallback decoder turns a whole run of byte pieces
# into U+FFFD when any of it is invalid, losing the characters in it). As a codec error handler:
# resume right after the first bad byte.
SENTENCEPIECE_BYTES = "banglaslm-sentencepiece-bytes"
codecs.register_error(SENTENCEPIECE_BYTES, lambda err: ("\ufffd", err.start + 1))


ENCODE_GROUP_CHARS = 1 << 20  # characters per call to the Rust encoder (`Tokenizer.encode_batch`)
PIECE_CHARS = 1 << 16  # a longer piece of one line is cut (`_pieces`)


def _pieces(text: str, kind: str) -> list[str]:
    """`text` cut where no pre-token of our `kind` ("bpe", "char") can span, so that the pieces
    encode to the whole's ids: after a run of newlines before a non-space (`_SAFE_CUT`), and in
    a piece longer than PIECE_CHARS, every PIECE_CHARS or so before a space that follows a
    non-space (in SPLIT_PATTERN only a run of whitespace holds a space after its first
    character); for "char", anywhere. A long line with no such space stays whole."""
    pieces = []
    for line in _SAFE_CUT.split(text):
        start = 0
        while len(line) - start > PIECE_CHARS:
            cut = start + PIECE_CHARS if kind == "char" else _space_after_non_space(line, start + PIECE_CHARS)
            if cut < 0:
                break
            pieces.append(line[start:cut])
            start = cut
        pieces.append(line[start:])
    return pieces


def _space_after_non_space(line: str, start: int) -> int:
    """The first index from `start` of a " " whose previous character is not whitespace, or -1.
    (Python's isspace() holds for every character the pattern's \\s matches, and more: safe.)"""
    at = line.find(" ", start)
    while at > 0:
        if not line[at - 1].isspace():
            return at
        at = line.find(" ", at + 1)
    return -1


def _pre_tokenizer(kind: str):
    """The pre-tokenizer of our own kinds: SPLIT_PATTERN then bytes ("bpe"), or every
    character apart ("char")."""
    if kind == "char":
        return pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def _unk_id(model: dict, hf: HFTokenizer) -> int | None:
    """The id of the unknown token, if the model has one."""
    if model.get("type") == "Unigram":
        return model.get("unk_id")
    unk = model.get("unk_token")
    return hf.token_to_id(unk) if unk else None


MAX_UNKNOWN_SHARE = 0.01  # text with more unknown tokens than this is refused for training


@dataclass
class Coverage:
    """How well a tokenizer covers some text: tokens, unknown tokens, byte-fallback tokens,
    and the characters it could not represent (those that became unknown tokens)."""
    tokens: int = 0
    unknown: int = 0
    byte_fallback: int = 0
    unrepresented: Counter = field(default_factory=Counter)

    def add(self, other: "Coverage") -> None:
        self.tokens += other.tokens
        self.unknown += other.unknown
        self.byte_fallback += other.byte_fallback
        self.unrepresented.update(other.unrepresented)

    @property
    def unknown_share(self) -> float:
        return self.unknown / max(self.tokens, 1)

    def loses_text(self) -> bool:
        """More than MAX_UNKNOWN_SHARE of the tokens unknown: that text is lost, and a model
        trained on it learns little (a broken tokenizer.json that turned every word into <unk>
        once passed silently)."""
        return self.unknown_share > MAX_UNKNOWN_SHARE

    @property
    def byte_fallback_share(self) -> float:
        return self.byte_fallback / max(self.tokens, 1)

    def to_dict(self, top: int = 20) -> dict:
        return {"tokens": self.tokens, "unknown": self.unknown, "byte_fallback": self.byte_fallback,
                "unknown_share": self.unknown_share, "byte_fallback_share": self.byte_fallback_share,
                "unrepresented": [[ch, n] for ch, n in self.unrepresented.most_common(top)]}

    @classmethod
    def from_dict(cls, d: dict) -> "Coverage":
        """The counts `to_dict` wrote (its characters only as far as its `top`)."""
        return cls(d["tokens"], d["unknown"], d["byte_fallback"], Counter(dict(d["unrepresented"])))

    def unknown_note(self, what: str) -> str | None:
        """One line saying which characters of `what` (e.g. "the prompt") became unknown tokens,
        which the model reads as one and the same token; None when none did."""
        if not self.unknown:
            return None
        chars = ", ".join(repr(ch) for ch, _ in self.unrepresented.most_common(8)) or "some characters"
        return (f"{what} holds characters the tokenizer cannot represent ({chars}); the model reads an unknown "
                "token in their place")

    def describe(self) -> str:
        chars = ", ".join(f"{ch!r} ({n:,})" for ch, n in self.unrepresented.most_common(8))
        return (f"{self.unknown_share:.2%} unknown tokens, {self.byte_fallback_share:.2%} byte-fallback tokens"
                + (f"; not representable: {chars}" if chars else ""))
MIN_BPE_VOCAB = 256 + 2  # every byte, the end-of-document token and at least one merge


def check_bpe_vocab_size(vocab_size: int) -> None:
    if vocab_size < MIN_BPE_VOCAB:
        raise bad_param("vocab_size", f"{vocab_size} is too small for byte-level BPE: use at least {MIN_BPE_VOCAB}")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (the byte-level alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


_UNICODE_TO_BYTE = {ch: b for b, ch in _bytes_to_unicode().items()}


class Tokenizer:
    """A `tokenizers.Tokenizer` plus what this project needs: EOD id, hashing, safe decode."""

    def __init__(self, hf: HFTokenizer, kind: str):
        self.hf = hf
        self.kind = kind
        # Text that contains "<|endoftext|>" literally must stay text.
        self.hf.encode_special_tokens = True
        self.eod_id = self._find_eod()  # the end-of-document token: before every document, after every answer
        spec = json.loads(hf.to_str())
        self.byte_level = (spec.get("decoder") or {}).get("type") == "ByteLevel"
        self.special_ids = {i for i, t in hf.get_added_tokens_decoder().items() if t.special}
        self.special_ids.add(self.eod_id)
        self._id_to_token = [hf.id_to_token(i) for i in range(self.vocab_size)]
        self.unk_id = _unk_id(spec.get("model") or {}, hf)
        self._unk_by_id = (spec.get("model") or {}).get("type") == "Unigram"
        # byte-fallback pieces ("<0xE0>") and the byte each stands for
        self.byte_pieces = {i: int(t[3:5], 16) for i, t in enumerate(self._id_to_token)
                            if (spec.get("model") or {}).get("byte_fallback") and t and _BYTE_PIECE.fullmatch(t)}
        # control and byte pieces that text can spell in a foreign model (a SentencePiece unigram
        # matches "</s>" or "<0xE0>" in text, where SentencePiece never produces either from text;
        # T5's sentinels "<extra_id_N>", pieces of the converted vocabulary, are control pieces too)
        foreign = kind.startswith("external")
        as_text = _user_defined(spec.get("pre_tokenizer"))
        self._spellable = self.special_ids | {
            i for i, t in enumerate(self._id_to_token) if t and _CONTROL_SPELLING.fullmatch(t) and not as_text(t)
        } if foreign else set()
        self._shadow: HFTokenizer | None = None
        # An unknown piece decodes as SentencePiece's " ⁇ ", not as nothing (text would vanish).
        self._shown_unk = self.unk_id if foreign and not self.byte_level else None
        self._unk_decoder: HFTokenizer | None = None

    def check_unknown_id(self) -> None:
        """UserError when the unknown id is the end-of-document token, or (a unigram model names
        it by id, not by its text) a piece of text: no special token, nor named like one
        ("<unk>"). transformers' T5 conversion sets unk_id 2 (T5's layout) on any spiece.model:
        around one trained with SentencePiece's defaults that is "</s>", and every character it
        cannot spell ended a document; around other layouts, a piece of text. Checked where data
        is made (`prepare`), so that what was trained before still loads."""
        unk = self.unk_id
        if unk is None or (unk != self.eod_id and (not self._unk_by_id or unk in self.special_ids
                                                   or _CONTROL_SPELLING.fullmatch(self.hf.id_to_token(unk) or ""))):
            return
        what, consequence = ("end-of-document token", "would end a document") if unk == self.eod_id else \
            ("piece", "would be written as that text")
        raise UserError(f"the tokenizer's unknown id is its {what} {self.hf.id_to_token(unk)!r} (id "
                        f"{unk}): every character it cannot spell {consequence}; give the SentencePiece "
                        ".model file itself (its ids are read as trained), or fix unk_id in tokenizer.json")

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int, length: int | None = None,
                  show_progress: bool = False) -> "Tokenizer":
        """Train byte-level BPE on already-normalized `texts`."""
        check_bpe_vocab_size(vocab_size)
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = _pre_tokenizer("bpe")
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=2, special_tokens=[EOD],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress,
        )
        pieces = (piece for text in texts for piece in _pieces(text, "bpe"))
        _heeding_ctrl_c(lambda: hf.train_from_iterator(pieces, trainer=trainer, length=length))
        return cls(hf, "bpe")

    @classmethod
    def build_char(cls, chars: Iterable[str]) -> "Tokenizer":
        """One token per code point seen in the corpus, plus EOD and UNK."""
        vocab = {EOD: 0, UNK: 1}
        for ch in sorted(set(chars) - {EOD, UNK}):
            vocab[ch] = len(vocab)
        hf = HFTokenizer(models.WordLevel(vocab, unk_token=UNK))
        hf.pre_tokenizer = _pre_tokenizer("char")
        hf.decoder = decoders.Fuse()
        hf.add_special_tokens([EOD, UNK])
        return cls(hf, "char")

    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        """From a tokenizer.json file (a run's or data folder's, or any Hugging Face `tokenizers`
        one with an end-of-document token); UserError for a folder, a missing or invalid file."""
        path = as_path(path, "path", "a tokenizer.json")
        if path.is_dir():
            raise UserError(f"{path} is a folder; give the tokenizer file in it, e.g. {path / 'tokenizer.json'}")
        if not path.is_file():
            raise UserError(f"tokenizer file not found: {path}")
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises a bare Exception on bad JSON
            raise UserError(f"{path} is not a valid tokenizer.json ({str(exc).splitlines()[0]})") from None
        return cls.from_hf(hf)

    @classmethod
    def from_str(cls, text: str, where: str = "the tokenizer") -> "Tokenizer":
        """From tokenizer.json's text."""
        try:
            hf = HFTokenizer.from_str(text)
        except Exception as exc:
            raise UserError(f"{where} is not a valid tokenizer.json ({str(exc).splitlines()[0]})") from None
        return cls.from_hf(hf)

    @classmethod
    def from_hf(cls, hf: HFTokenizer) -> "Tokenizer":
        """Wrap a `tokenizers.Tokenizer`, telling ours (BPE, char) from others by its parts."""
        spec = json.loads(hf.to_str())
        kind = spec.get("model", {}).get("type", "unknown")
        decoder = (spec.get("decoder") or {}).get("type")
        # The pre-tokenizer decides where documents may be cut (`_SAFE_CUT`) and how llama.cpp
        # splits text (GGUF): GPT-2's own tokenizer.json, also byte-level BPE with an
        # "<|endoftext|>", is foreign. (Compared as this `tokenizers` version writes both.)
        split = hf.pre_tokenizer.__getstate__() if hf.pre_tokenizer is not None else None
        is_ours = kind == "BPE" and EOD in hf.get_vocab() and decoder == "ByteLevel" and \
            split == _pre_tokenizer("bpe").__getstate__()
        is_char = kind == "WordLevel" and decoder == "Fuse" and split == _pre_tokenizer("char").__getstate__()
        return cls(hf, "bpe" if is_ours else "char" if is_char else f"external-{kind.lower()}")

    def _find_eod(self) -> int:
        vocab = self.hf.get_vocab()
        for name in EOD_CANDIDATES:
            if name in vocab:
                return vocab[name]
        raise UserError(
            f"the tokenizer has no end-of-document token (looked for {', '.join(EOD_CANDIDATES)}); "
            "add one as a special token to tokenizer.json"
        )

    # ---- properties --------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Ids this tokenizer writes, special tokens included (a model's embedding may hold more rows)."""
        return self.hf.get_vocab_size(with_added_tokens=True)

    @cached_property
    def space_openers(self) -> list[int]:
        """The ids whose text is a space and the start of a word (" ভাত"), or where no token is
        (a character tokenizer) the space itself: what may come first after a prompt that ended
        in a space (`text.opens_a_word`)."""
        texts = [self.token_bytes(i) for i in range(self.vocab_size)]
        words = [i for i, b in enumerate(texts) if b.startswith(b" ") and len(b) > 1 and not b[1:2].isspace()]
        return words or [i for i, b in enumerate(texts) if b == b" "]

    @cached_property
    def sha256(self) -> str:
        """Identity of the tokenizer: hash of its canonical serialization."""
        return hashlib.sha256(self.hf.to_str().encode("utf-8")).hexdigest()

    # ---- encoding ----------------------------------------------------------------------
    def encode(self, text: str, normalized: bool = False, coverage: Coverage | None = None) -> list[int]:
        """Token ids of `text` (normalized first unless the caller already did); `coverage`
        counts its unknown and byte-fallback tokens."""
        text = normalize(text) if not normalized else require_str(text, "text")
        return self._ids(text, self.hf.encode(text, add_special_tokens=False), coverage)

    def encode_batch(self, texts: list[str], coverage: Coverage | None = None) -> list[list[int]]:
        """Encode already-normalized texts in parallel (the Rust side uses every core): unlike
        `encode`, no normalization here (prepare's texts are normalized once, before); for a
        user's text, `encode_batch([normalize(t) for t in texts])`.

        Ours are cut into pieces first (`_pieces`) and encoded ENCODE_GROUP_CHARS at a time:
        a few huge documents would leave cores idle, and the Rust side holds a few hundred
        bytes per token until a call returns (a 30 MB document took gigabytes).
        """
        texts = texts if isinstance(texts, (str, bytes)) else list(texts)
        if isinstance(texts, (str, bytes)) or not all(isinstance(t, str) for t in texts):
            raise wrong_kind("texts", texts, "a list of texts", "use [text] for one")
        if self.kind not in ("bpe", "char"):
            return [self._ids(t, e, coverage) for t, e in zip(texts, self.hf.encode_batch(texts, add_special_tokens=False))]
        out: list[list[int]] = [[] for _ in texts]
        group: list[tuple[int, str]] = []

        def flush() -> None:
            encoded = self.hf.encode_batch([piece for _, piece in group], add_special_tokens=False)
            for (doc, piece), encoding in zip(group, encoded):
                out[doc].extend(self._ids(piece, encoding, coverage))
            group.clear()

        size = 0
        for doc, text in enumerate(texts):
            for piece in _pieces(text, self.kind):
                group.append((doc, piece))
                size += len(piece)
                if size >= ENCODE_GROUP_CHARS:
                    flush()
                    size = 0
        if group:
            flush()
        return out

    def _ids(self, text: str, encoding, coverage: Coverage | None) -> list[int]:
        """An encoding's ids (with special pieces that text spelled read as text again, as
        SentencePiece reads them), counted into `coverage`."""
        ids = encoding.ids
        if self._spellable and any(i in self._spellable and self._spells(text[a:b], self._id_to_token[i])
                                   for i, (a, b) in zip(encoding.ids, encoding.offsets)):
            encoding = self._without_specials().encode(text, add_special_tokens=False)
            ids = self._bytes_for_unknown(text, encoding)
        if coverage is not None:
            coverage.tokens += len(ids)
            if self.unk_id is not None or self.byte_pieces:
                coverage.unknown += ids.count(self.unk_id)
                coverage.byte_fallback += sum(i in self.byte_pieces for i in ids)
                for i, (start, end) in zip(ids, encoding.offsets):
                    if i == self.unk_id:
                        coverage.unrepresented.update(text[start:end].strip() or text[start:end])
        return ids

    def _spells(self, span: str, piece: str) -> bool:
        """Whether text `span` spells control piece `piece`, as written or once the model's own
        normalizer has run (NFKC reads a full-width "＜/s＞" as "</s>")."""
        if span == piece:
            return True
        normalizer = self.hf.normalizer
        return normalizer is not None and normalizer.normalize_str(span).strip("▁ ") == piece

    def _without_specials(self) -> HFTokenizer:
        """This tokenizer with its special and byte pieces renamed so that no text can spell them
        (their ids unchanged), and so without byte fallback: what SentencePiece does, for the
        rare text that spells "</s>" or "<0xE0>"."""
        if self._shadow is None:
            spec = json.loads(self.hf.to_str())
            spec["added_tokens"] = []
            hidden = {self._id_to_token[i] for i in self._spellable}
            _rename_pieces(spec["model"], lambda p: "\x00" + p if p in hidden else p)
            spec["model"]["byte_fallback"] = False  # it would look up the renamed byte pieces
            self._shadow = HFTokenizer.from_str(json.dumps(spec))
        return self._shadow

    def _bytes_for_unknown(self, text: str, encoding) -> list[int]:
        """`_without_specials`' ids with each unknown piece written as byte pieces, as byte
        fallback writes it (the bytes of the span once the model's normalizer has run)."""
        if not self.byte_pieces:
            return encoding.ids
        byte_id = {b: i for i, b in self.byte_pieces.items()}
        normalizer = self.hf.normalizer
        ids: list[int] = []
        for i, (a, b) in zip(encoding.ids, encoding.offsets):
            if i != self.unk_id:
                ids.append(i)
                continue
            span = normalizer.normalize_str(text[a:b]) if normalizer is not None else text[a:b]
            ids.extend(byte_id[x] for x in span.encode("utf-8"))
        return ids

    def unknown_note(self, text: str, what: str) -> str | None:
        """`Coverage.unknown_note` of `text` (a prompt, a message) as this tokenizer encodes it."""
        coverage = Coverage()
        self.encode(text, coverage=coverage)
        return coverage.unknown_note(what)

    def round_trip_note(self) -> str | None:
        """One line when this tokenizer does not give back a plain Bangla sentence it encodes (up
        to NFKC, which SentencePiece's default normalizer applies): one that drops or adds spaces
        (a Whitespace pre-tokenizer, WordPiece) makes generated text and bits per character wrong
        without a word. None when it does, or when the sentence holds unknown pieces (coverage is
        checked elsewhere) after the sentence is tried without the characters and words it cannot
        spell."""
        probe = " ".join(w for w in map(self._probe_word, ROUND_TRIP_PROBE.split()) if w)
        ids = self.encode(probe)
        if not probe or self.unk_id in ids:
            return None
        back = self.decode(ids)  # a leading space (GPT-2's add_prefix_space) costs one character: not counted
        if unicodedata.normalize("NFKC", back.lstrip(" ")) == unicodedata.normalize("NFKC", normalize(probe)):
            return None
        return (f"the tokenizer does not give back the text it encodes: {probe!r} decodes as {back!r}, so "
                "generated text and bits per character will be off")

    def _probe_word(self, word: str) -> str:
        """`word`, or without the characters this tokenizer reads as unknown, or "" when it still
        reads it so (WordPiece reads a whole word as unknown, even one of known characters)."""
        if self.unk_id not in self.encode(word):
            return word
        kept = "".join(c for c in word if self.unk_id not in self.encode(c))
        return kept if kept and self.unk_id not in self.encode(kept) else ""

    @property
    def decode_errors(self) -> str:
        """How `decode` writes bytes that form no character, as a codec error handler: byte-level
        BPE drops them, SentencePiece's byte pieces show U+FFFD for each."""
        return "ignore" if self.byte_level else SENTENCEPIECE_BYTES

    def token_bytes(self, token_id: int, first: bool = False) -> bytes:
        """The UTF-8 bytes one token stands for (b'' for special tokens; a foreign tokenizer's
        unknown piece: UNK_SURFACE); `first`: at the start of a text, where SentencePiece's
        decoding drops a piece's leading "▁"."""
        return self._token_bytes(self._checked_id(token_id), first)

    def _token_bytes(self, token_id: int, first: bool = False) -> bytes:
        if self.byte_level:
            return self._byte_table[token_id]
        if token_id == self._shown_unk:
            return UNK_SURFACE.encode("utf-8")
        if token_id in self.special_ids:
            return b""
        if token_id in self.byte_pieces:  # "<0xE0>": one byte of a character (decoded alone, U+FFFD)
            return bytes([self.byte_pieces[token_id]])
        return self.decode([token_id], continuing=not first).encode("utf-8")  # "▁ভাত" is " ভাত" after other text

    def decode(self, ids: Iterable[int], continuing: bool = False) -> str:
        """Text of `ids` without special tokens, as valid UTF-8.

        A byte-level token can end inside a multi-byte character; bytes that do not form a
        complete character are dropped rather than shown as U+FFFD. A foreign (SentencePiece)
        tokenizer's unknown piece shows as SentencePiece shows it (UNK_SURFACE). `continuing`:
        the ids follow earlier text (a generated continuation, one token of many), so a
        SentencePiece piece's leading "▁" is the space it is inside a longer text, where a
        decoding of its own drops it ("আমি ভাত" + "খাই" instead of " খাই").
        Raises UserError for an id that is not a whole number in 0..vocab_size-1 (a negative
        one would otherwise read a token from the end of the vocabulary).
        """
        if isinstance(ids, (int, str, bytes)) or not hasattr(ids, "__iter__"):
            raise wrong_kind("ids", ids, "a list of token ids", "use [token_id] for one")
        ids = list(map(self._checked_id, ids.tolist() if hasattr(ids, "tolist") else ids))
        if self.byte_level:  # special tokens are b"" in the table
            return b"".join(map(self._byte_table.__getitem__, ids)).decode("utf-8", errors="ignore")
        ids = [i for i in ids if i not in self.special_ids or i == self._shown_unk]
        out: list[str] = []
        for is_bytes, run in itertools.groupby(ids, key=self.byte_pieces.__contains__):
            run = list(run)
            if is_bytes:  # as SentencePiece decodes them: U+FFFD for each byte that starts no character
                out.append(bytes(self.byte_pieces[i] for i in run).decode("utf-8", errors=SENTENCEPIECE_BYTES))
            else:
                out.append(self._decode_run(run, continuing or bool(out)))
        return "".join(out)

    @cached_property
    def _byte_table(self) -> list[bytes]:
        """A byte-level tokenizer's bytes for every id, built once: b'' for special tokens; a
        token spelled in the byte-level alphabet, its bytes; another (an added plain token, which
        tokenizers keeps as typed), its own text, as tokenizers' ByteLevel decoder does."""
        def token_bytes(token: str) -> bytes:  # as tokenizers' ByteLevel decoder reads it
            return bytes(map(_UNICODE_TO_BYTE.__getitem__, token)) if all(ch in _UNICODE_TO_BYTE for ch in token) \
                else token.encode("utf-8")
        return [b"" if i in self.special_ids else token_bytes(token) for i, token in enumerate(self._id_to_token)]

    def _checked_id(self, token_id) -> int:
        try:
            token_id = operator.index(token_id)
        except TypeError:
            raise bad_param("ids", f"must be whole token ids, got {token_id!r}: convert with int() "
                                   "(a tensor: .tolist())") from None
        if not 0 <= token_id < len(self._id_to_token):
            raise bad_param("ids", f"must be in 0..{len(self._id_to_token) - 1} (this tokenizer's "
                                   f"vocabulary), got {token_id}: were they made with another tokenizer?")
        return token_id

    def incomplete_tail(self, ids: list[int]) -> int:
        """How many of the last `ids` are byte pieces (SentencePiece's byte fallback, "<0xE6>")
        of a character still incomplete, which more ids may complete (0 for other tokenizers:
        a byte-level one drops such bytes when it decodes)."""
        run = 0
        while run < min(4, len(ids)) and ids[-1 - run] in self.byte_pieces:
            run += 1
        if not run:
            return 0
        utf8 = codecs.getincrementaldecoder("utf-8")(errors=SENTENCEPIECE_BYTES)
        utf8.decode(bytes(self.byte_pieces[i] for i in ids[-run:]))
        return len(utf8.getstate()[0])  # the bytes it keeps waiting for the rest of a character

    def _decode_run(self, ids: list[int], continuing: bool) -> str:
        if continuing and ids and self._anchor is not None:
            anchored = self._decode_pieces([self._anchor, *ids])
            return anchored[len(self._decode_pieces([self._anchor])):]
        return self._decode_pieces(ids)

    def _decode_pieces(self, ids: list[int]) -> str:
        if self._shown_unk is not None and self._shown_unk in ids:
            return self._with_unk_surface().decode(ids, skip_special_tokens=False)
        return self.hf.decode(ids, skip_special_tokens=True)

    @cached_property
    def _anchor(self) -> int | None:
        """A plain piece to decode in front of a continuation (it takes the start-of-text rules)."""
        for i, token in enumerate(self._id_to_token):
            if token and i not in self.special_ids and i not in self.byte_pieces and not token.startswith("▁") \
                    and token.isalpha() and self.hf.decode([i]) == token:
                return i
        return None

    def _with_unk_surface(self) -> HFTokenizer:
        """This tokenizer with its unknown piece spelled UNK_SURFACE, for decoding (its spacing
        around the piece is then exactly SentencePiece's)."""
        if self._unk_decoder is None:
            spec = json.loads(self.hf.to_str())
            unk = self._id_to_token[self._shown_unk]
            for added in spec["added_tokens"]:
                if added["id"] == self._shown_unk:
                    added.update(content=UNK_SURFACE, special=False)
            _rename_pieces(spec["model"], lambda p: UNK_SURFACE if p == unk else p)
            self._unk_decoder = HFTokenizer.from_str(json.dumps(spec))
        return self._unk_decoder

    def save(self, path: str | Path) -> None:
        """Write the tokenizer.json file `path` (atomically); UserError for a folder."""
        path = as_path(path, "path", "a tokenizer.json file")
        if path.is_dir():
            raise UserError(f"{path} is a folder; save to a file in it, e.g. {path / 'tokenizer.json'}")
        atomic_write_text(path, self.hf.to_str(pretty=True))


def _user_defined(pre_tokenizer: dict | None) -> Callable[[str], bool]:
    """Whether a piece is one of a SentencePiece model's user-defined symbols ("[URL]", "<br>"):
    text that SentencePiece matches whole, however much it looks like a control token's name.
    transformers' converter isolates them with a Split pre-tokenizer of their escaped spellings."""
    steps = (pre_tokenizer or {}).get("pretokenizers") or [pre_tokenizer or {}]
    patterns = [s["pattern"].get("Regex") for s in steps if s.get("type") == "Split" and s.get("behavior") == "Isolated"]
    try:
        compiled = [re.compile(p) for p in patterns if p]
    except re.error:  # not the converter's literal alternation: no piece is taken for a symbol
        compiled = []
    return lambda piece: any(p.fullmatch(piece) for p in compiled)


def _rename_pieces(model: dict, rename: Callable[[str], str]) -> None:
    """Rename the pieces of a tokenizer.json's model in place (ids unchanged), its unk_token too."""
    vocab = model.get("vocab")
    if isinstance(vocab, list):  # Unigram: [piece, score] by id
        model["vocab"] = [[rename(p), score] for p, score in vocab]
    elif isinstance(vocab, dict):
        model["vocab"] = {rename(p): i for p, i in vocab.items()}
    if model.get("unk_token") is not None:
        model["unk_token"] = rename(model["unk_token"])


def _heeding_ctrl_c(work: Callable[[], None]) -> None:
    """Run `work` in a thread while this one waits, so that Ctrl-C stops the caller at once: the
    BPE merges run in Rust, deaf to signals, for minutes on a large corpus. An abandoned thread
    ends with the process (in a notebook it finishes its merges in the background)."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 (re-raised in the caller's thread)
            failure.append(exc)

    thread = threading.Thread(target=run, name="bpe-training", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.25)  # a Ctrl-C is seen between waits, whichever thread the signal reached
    if failure:
        raise failure[0]


def iter_chunks(items: Iterable[str], max_chars: int) -> Iterator[list[str]]:
    """Group texts into lists of about `max_chars` characters (for batched encoding)."""
    chunk, size = [], 0
    for item in items:
        chunk.append(item)
        size += len(item)
        if size >= max_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk
