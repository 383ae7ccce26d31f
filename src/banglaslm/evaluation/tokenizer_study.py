"""How well a tokenizer fits Bangla text, measured against a char tokenizer and BPEs of other sizes.

On a sample of normalized text: characters per token; tokens per word (whitespace-separated);
the share of the 1,000 most frequent Bangla words that are one token, after a space (mid-
sentence) and bare (at the start of a text); and the share of tokens that end inside a
grapheme cluster (`text.cluster_breaks`) or inside a UTF-8 character. The comparison
tokenizers are built on the sample itself, an optimistic "trained on what it is scored on"
reference.
"""

from __future__ import annotations

import re
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UserError
from ..text import ZWJ, ZWNJ, cluster_breaks, normalize
from ..tokenizer import Coverage, Tokenizer
from ..tokenizer_import import from_sentencepiece

BPE_VOCAB_SIZES = (512, 2048, 8000)
TOP_WORDS = 1000
MAX_SAMPLE_CHARS = 300_000

_BANGLA_WORD_RE = re.compile("[\u0980-\u09ff\u200c\u200d]+")


def inside_cluster_ends(tokenizer: Tokenizer, text: str, ids: list[int]) -> tuple[int, int] | None:
    """(tokens that end inside a grapheme cluster, tokens) for `ids` encoding `text`, or None
    when the tokens do not spell the text byte for byte (unknown characters, foreign kinds)."""
    pieces = [tokenizer.token_bytes(i) for i in ids if i not in tokenizer.special_ids]
    data = text.encode("utf-8")
    if b"".join(pieces) != data:
        return None
    breaks = cluster_breaks(text)
    char_at_byte = {}  # byte offset of each character start -> character index
    offset = 0
    for index, ch in enumerate(text):
        char_at_byte[offset] = index
        offset += len(ch.encode("utf-8"))
    char_at_byte[offset] = len(text)
    inside, end = 0, 0
    for piece in pieces:
        end += len(piece)
        index = char_at_byte.get(end)
        if index is None or not breaks[index]:
            inside += 1
    return inside, len(pieces)


# ---- tokenizer statistics ------------------------------------------------------------------
@dataclass
class TokenizerStats:
    name: str
    kind: str
    vocab_size: int
    chars_per_token: float
    tokens_per_word: float
    single_token_words_space: float  # share of top words encoding as one token after a space
    single_token_words_bare: float  # ... encoded alone, at the start of a text
    inside_cluster_share: float | None  # None when no document round-trips byte for byte
    unknown_share: float  # tokens the tokenizer could not represent
    tokens: int
    chars: int
    words: int
    top_words: int

    def to_dict(self) -> dict:
        return asdict(self)


def top_bangla_words(docs: list[str], n: int = TOP_WORDS) -> list[str]:
    """The `n` most frequent Bangla words (ties broken alphabetically, so it is deterministic)."""
    counts = Counter(w for doc in docs for w in _BANGLA_WORD_RE.findall(doc)
                     if not set(w) <= {ZWJ, ZWNJ})
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def tokenizer_stats(tokenizer: Tokenizer, docs: list[str], name: str, words: list[str] | None = None) -> TokenizerStats:
    """Statistics of `tokenizer` on already-normalized `docs` (see the module docstring)."""
    words = top_bangla_words(docs) if words is None else words
    tokens = chars = n_words = inside = counted = 0
    coverage = Coverage()
    for doc, ids in zip(docs, tokenizer.encode_batch(list(docs), coverage)):
        ids = [i for i in ids if i != tokenizer.eod_id]
        tokens += len(ids)
        chars += len(doc)
        n_words += len(doc.split())
        ends = inside_cluster_ends(tokenizer, doc, ids)
        if ends is not None:
            inside += ends[0]
            counted += ends[1]
    single_space = sum(len(tokenizer.encode(" " + w, normalized=True)) == 1 for w in words)
    single_bare = sum(len(tokenizer.encode(w, normalized=True)) == 1 for w in words)
    return TokenizerStats(
        name=name, kind=tokenizer.kind, vocab_size=tokenizer.vocab_size,
        chars_per_token=chars / max(tokens, 1), tokens_per_word=tokens / max(n_words, 1),
        single_token_words_space=single_space / max(len(words), 1),
        single_token_words_bare=single_bare / max(len(words), 1),
        inside_cluster_share=inside / counted if counted else None, unknown_share=coverage.unknown_share,
        tokens=tokens, chars=chars, words=n_words, top_words=len(words),
    )


def sample_documents(texts: list[tuple[str, str]] | None = None, max_chars: int = MAX_SAMPLE_CHARS) -> list[str]:
    """Normalized documents (paragraphs) for the tokenizer study, at most `max_chars` in all:
    from `texts` ((name, raw text) pairs) or else every 10th file of the embedded corpus."""
    if not texts:
        from ..data.corpus import corpus_files

        texts = [(str(p), p.read_text(encoding="utf-8")) for p in corpus_files()[::10]]
    docs, total = [], 0
    for _, raw in texts:
        for para in raw.replace("\r\n", "\n").split("\n\n"):
            para = normalize(para)
            if not para:
                continue
            if total + len(para) > max_chars:
                para = para[: max_chars - total].rstrip()
            if para:
                docs.append(para)
                total += len(para)
            if total >= max_chars:
                return docs
    return docs


def compare_tokenizers(run_tokenizer: Tokenizer, docs: list[str],
                       bpe_vocab_sizes: tuple[int, ...] = BPE_VOCAB_SIZES) -> list[TokenizerStats]:
    """The run's tokenizer, a char tokenizer and byte-level BPEs, all measured on `docs`."""
    if not docs:
        raise UserError("no text to measure the tokenizers on (the sample is empty)")
    words = top_bangla_words(docs)
    out = [tokenizer_stats(run_tokenizer, docs, f"run ({run_tokenizer.kind} {run_tokenizer.vocab_size})", words)]
    char = Tokenizer.build_char(ch for doc in docs for ch in doc)
    out.append(tokenizer_stats(char, docs, f"char ({char.vocab_size})", words))
    got: set[int] = set()
    for size in bpe_vocab_sizes:
        if run_tokenizer.kind == "bpe" and size == run_tokenizer.vocab_size:
            continue
        bpe = Tokenizer.train_bpe(docs, size)
        if bpe.vocab_size in got:  # a small sample ran out of merges: a larger size is the same tokenizer
            continue
        got.add(bpe.vocab_size)
        label = f"bpe {size}" + (f" (got {bpe.vocab_size})" if bpe.vocab_size != size else "")
        out.append(tokenizer_stats(bpe, docs, label, words))
    unigram = sentencepiece_unigram(docs, run_tokenizer.vocab_size)
    if unigram is not None:
        asked = run_tokenizer.vocab_size
        label = f"sentencepiece unigram {asked}" + (f" (got {unigram.vocab_size})" if unigram.vocab_size != asked else "")
        out.append(tokenizer_stats(unigram, docs, label, words))
    return out


def sentencepiece_unigram(docs: list[str], vocab_size: int) -> Tokenizer | None:
    """A SentencePiece unigram model (the course's kind of tokenizer) of about `vocab_size`
    pieces trained on `docs`; None without the sentencepiece package."""
    try:
        import sentencepiece
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(docs), encoding="utf-8")
        sentencepiece.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(Path(tmp) / "unigram"), model_type="unigram",
            vocab_size=vocab_size, hard_vocab_limit=False, character_coverage=0.9995, minloglevel=2)
        return from_sentencepiece(Path(tmp) / "unigram.model")
