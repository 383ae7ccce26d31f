"""Tokenizers, all stored as a Hugging Face `tokenizer.json`: byte-level BPE trained here
("bpe"), one token per character ("char"), or any existing tokenizer.json.

Why our own split pattern: GPT-2/GPT-4 patterns use `\\p{L}+`, and Bangla vowel signs and
hasanta are `\\p{M}`, so they cut every word apart and BPE never learns whole words; ours
(llama.cpp's `qwen35` split) keeps letters and marks together. Every kind has one
end-of-document token; text is encoded without the tokenizer's own special tokens, and a
literal special-token string in text stays text. More in docs/data.md.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from functools import cached_property
from pathlib import Path

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from .errors import UserError, bad_param
from .fileio import atomic_write_text
from .text import normalize

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
_EOD_CANDIDATES = (EOD, "</s>", "<eos>", "<|end_of_text|>", "<|eot_id|>", "[SEP]")
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
        self.eod_id = self._find_eod()
        spec = json.loads(hf.to_str())
        self.byte_level = (spec.get("decoder") or {}).get("type") == "ByteLevel"
        self.special_ids = {i for i, t in hf.get_added_tokens_decoder().items() if t.special}
        self.special_ids.add(self.eod_id)
        self._id_to_token = [hf.id_to_token(i) for i in range(self.vocab_size)]

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int, length: int | None = None,
                  show_progress: bool = False) -> "Tokenizer":
        """Train byte-level BPE on already-normalized `texts`."""
        check_bpe_vocab_size(vocab_size)
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=2, special_tokens=[EOD],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress,
        )
        pieces = (piece for text in texts for piece in _SAFE_CUT.split(text))
        hf.train_from_iterator(pieces, trainer=trainer, length=length)
        return cls(hf, "bpe")

    @classmethod
    def build_char(cls, chars: Iterable[str]) -> "Tokenizer":
        """One token per code point seen in the corpus, plus EOD and UNK."""
        vocab = {EOD: 0, UNK: 1}
        for ch in sorted(set(chars) - {EOD, UNK}):
            vocab[ch] = len(vocab)
        hf = HFTokenizer(models.WordLevel(vocab, unk_token=UNK))
        hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        hf.decoder = decoders.Fuse()
        hf.add_special_tokens([EOD, UNK])
        return cls(hf, "char")

    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"tokenizer file not found: {path}")
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises a bare Exception on bad JSON
            raise UserError(f"{path} is not a valid tokenizer.json ({str(exc).splitlines()[0]})") from None
        spec = json.loads(hf.to_str())
        kind = spec.get("model", {}).get("type", "unknown")
        is_ours = kind == "BPE" and EOD in hf.get_vocab() and \
            (spec.get("decoder") or {}).get("type") == "ByteLevel"
        is_char = kind == "WordLevel" and (spec.get("decoder") or {}).get("type") == "Fuse"
        return cls(hf, "bpe" if is_ours else "char" if is_char else f"external-{kind.lower()}")

    def _find_eod(self) -> int:
        vocab = self.hf.get_vocab()
        for name in _EOD_CANDIDATES:
            if name in vocab:
                return vocab[name]
        raise UserError(
            f"the tokenizer has no end-of-document token (looked for {', '.join(_EOD_CANDIDATES)}); "
            "add one as a special token to tokenizer.json"
        )

    # ---- properties --------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    @cached_property
    def sha256(self) -> str:
        """Identity of the tokenizer: hash of its canonical serialization."""
        return hashlib.sha256(self.hf.to_str().encode("utf-8")).hexdigest()

    # ---- encoding ----------------------------------------------------------------------
    def encode(self, text: str, normalized: bool = False) -> list[int]:
        """Token ids of `text` (normalized first unless the caller already did)."""
        if not normalized:
            text = normalize(text)
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode already-normalized texts in parallel (the Rust side uses every core).

        A few huge documents would leave cores idle, so ours are cut into line pieces first.
        """
        if self.kind not in ("bpe", "char"):
            return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]
        split = [_SAFE_CUT.split(text) for text in texts]
        flat = [piece for pieces in split for piece in pieces]
        encoded = iter(self.hf.encode_batch(flat, add_special_tokens=False))
        out = []
        for pieces in split:
            ids: list[int] = []
            for _ in pieces:
                ids.extend(next(encoded).ids)
            out.append(ids)
        return out

    def token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes one token stands for (b'' for special tokens)."""
        if token_id in self.special_ids:
            return b""
        token = self._id_to_token[token_id]
        if self.byte_level:
            return bytes(_UNICODE_TO_BYTE[ch] for ch in token)
        return self.hf.decode([token_id], skip_special_tokens=True).encode("utf-8")

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` without special tokens, as valid UTF-8.

        A byte-level token can end inside a multi-byte character; bytes that do not form a
        complete character are dropped rather than shown as U+FFFD.
        """
        ids = [i for i in ids if i not in self.special_ids]
        if self.byte_level:
            return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="ignore")
        return self.hf.decode(ids, skip_special_tokens=True)

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), self.hf.to_str(pretty=True))


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
