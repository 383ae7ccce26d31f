"""The tokenizer study: statistics a char tokenizer, byte-level BPE and larger vocabularies must
satisfy on real Bangla."""

from __future__ import annotations

from banglaslm.evaluation.tokenizer_study import (
    inside_cluster_ends,
    sample_documents,
    tokenizer_stats,
    top_bangla_words,
)
from banglaslm.text import normalize
from banglaslm.tokenizer import Tokenizer

BANGLA = (
    "আমাদের গ্রামের পাশ দিয়ে একটি ছোট নদী বয়ে গেছে। বর্ষাকালে নদীতে অনেক জল থাকে, "
    "আর ছেলেমেয়েরা নৌকা নিয়ে খেলা করে।\n\n"
    "সকালবেলা মা রান্নাঘরে ভাত রাঁধেন, বাবা মাঠে কাজ করতে যান। স্কুলে যাওয়ার আগে আমি বই গুছিয়ে নিই। "
    "বিকেলে আমরা মাঠে ফুটবল খেলি, সন্ধ্যায় পড়তে বসি।\n"
)

def test_char_tokenizer_statistics():
    docs = [normalize(p) for p in BANGLA.split("\n\n")]
    char = Tokenizer.build_char(ch for d in docs for ch in d)
    words = top_bangla_words(docs)
    stats = tokenizer_stats(char, docs, "char", words)
    assert stats.chars_per_token == 1.0  # EOD excluded
    assert stats.single_token_words_space == 0.0
    multi = [w for w in words if len(w) > 1]
    assert tokenizer_stats(char, docs, "char", multi).single_token_words_bare == 0.0
    # Every Bangla word here has a vowel sign or a conjunct, so some char tokens end inside one.
    assert stats.inside_cluster_share > 0
    # Text with no combining sequences: a char tokenizer never ends inside a cluster.
    plain = ["অ আ ই এক অথচ", "কখন ঘর"]  # no vowel signs, no conjuncts
    plain_char = Tokenizer.build_char(ch for d in plain for ch in d)
    assert tokenizer_stats(plain_char, plain, "char").inside_cluster_share == 0.0


def test_byte_level_bpe_ends_inside_characters():
    plain = ["অ আ ই এক অথচ", "কখন ঘর"]  # no vowel signs, no conjuncts
    tiny = Tokenizer.train_bpe(plain, 258)  # bytes + one merge: every Bangla letter is 2-3 tokens
    text = plain[0]
    ends = inside_cluster_ends(tiny, text, tiny.encode(text, normalized=True))
    assert ends is not None and ends[0] > 0
    assert tokenizer_stats(tiny, plain, "bytes").inside_cluster_share > 0.3


def test_larger_bpe_vocab_packs_more_characters_per_token():
    docs = sample_documents(max_chars=20_000)  # every 10th embedded-corpus file
    assert 0 < sum(map(len, docs)) <= 20_000
    words = top_bangla_words(docs)
    assert 0 < len(words) <= 1000
    cpt = [tokenizer_stats(Tokenizer.train_bpe(docs, v), docs, str(v), words) for v in (300, 600, 1500)]
    assert all(a.chars_per_token <= b.chars_per_token for a, b in zip(cpt, cpt[1:]))
    assert all(a.single_token_words_space <= b.single_token_words_space for a, b in zip(cpt, cpt[1:]))
    assert cpt[-1].chars_per_token > cpt[0].chars_per_token


def test_sizes_a_small_sample_cannot_reach_are_one_row():
    """BPE on a small sample runs out of merges: 2,000 and 8,000 give the same tokenizer as 1,000,
    which the table shows once, not three times."""
    from banglaslm.evaluation.tokenizer_study import compare_tokenizers

    docs = [normalize("আমার সোনার বাংলা, আমি তোমায় ভালোবাসি।")] * 3
    run = Tokenizer.train_bpe(docs, 300)
    stats = compare_tokenizers(run, docs, bpe_vocab_sizes=(1000, 2000, 8000))
    bpe = [s for s in stats if s.name.startswith("bpe ")]
    assert len(bpe) == 1 and bpe[0].name == f"bpe 1000 (got {bpe[0].vocab_size})"
    [unigram] = [s for s in stats if s.name.startswith("sentencepiece unigram")]  # fewer pieces than asked, said so
    assert unigram.name == f"sentencepiece unigram {run.vocab_size} (got {unigram.vocab_size})"
