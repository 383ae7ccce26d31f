import random
import unicodedata

import pytest

from banglaslm.data.corpus import corpus_files
from banglaslm.generation.stream import StreamDecoder, safe_cut, tidy_end
from banglaslm.text import HASANTA, ZWJ, normalize
from banglaslm.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [normalize(p.read_text(encoding="utf-8")) for p in corpus_files()]


@pytest.fixture(scope="module")
def bpe(texts) -> Tokenizer:
    # A small vocabulary: most Bangla letters stay split across byte tokens.
    return Tokenizer.train_bpe(texts, 300)


def is_bengali_mark(ch: str) -> bool:
    return "\u0980" <= ch <= "\u09ff" and unicodedata.category(ch) in ("Mn", "Mc")


def stream(tok: Tokenizer, ids: list[int]) -> list[str]:
    dec = StreamDecoder(tok)
    pieces = [dec.push(i) for i in ids]
    pieces.append(dec.finish())
    return pieces


def test_real_bangla_streams_whole_characters_and_clusters(bpe, texts):
    # The longest paragraphs of a few documents from every register.
    paragraphs = [max(t.split("\n\n"), key=len) for t in texts[::10]]
    assert len(paragraphs) >= 10
    for para in paragraphs:
        ids = bpe.encode(para, normalized=True)
        # The test only means something if many tokens end inside a character.
        partial = sum(1 for i in ids if not _valid_utf8(bpe.token_bytes(i)))
        assert partial > len(ids) // 10
        pieces = stream(bpe, ids)
        for piece in pieces:
            assert "\ufffd" not in piece
            assert _valid_utf8(piece.encode("utf-8"))
            assert not piece or not is_bengali_mark(piece[0]), piece
            assert not piece.endswith(HASANTA)
        assert "".join(pieces) == bpe.decode(ids) == para
        # Streaming really streams: text comes out along the way, not only at the end.
        assert sum(1 for p in pieces[:-1] if p) > len(ids) // 4


def _valid_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_conjunct_and_vowel_sign_are_held_back_until_complete():
    word = "ক্ষা হ"  # ক + hasanta + ষ + া, a space, হ
    tok = Tokenizer.build_char(word)
    ids = tok.encode(word, normalized=True)
    dec = StreamDecoder(tok)
    pieces = [dec.push(i) for i in ids]
    # Nothing until the cluster ক্ষা is closed by the space; the space waits for হ.
    assert pieces == ["", "", "", "", "ক্ষা", " "]
    assert dec.finish() == "হ"


def test_dangling_hasanta_is_never_emitted_and_tidied_at_the_end():
    tok = Tokenizer.build_char("ক্\n")
    dec = StreamDecoder(tok)
    out = [dec.push(i) for i in tok.encode("ক্\nক্", normalized=True)]
    # A hasanta at the end may be tidied away, so "ক্" is shown only once text follows it.
    assert out == ["", "", "", "ক্\n", ""]
    assert dec.finish() == "ক"
    assert "".join(out) + "ক" == tidy_end("ক্\nক্")


def test_special_tokens_produce_no_text(bpe):
    text = "আমার সোনার বাংলা, আমি তোমায় ভালোবাসি।"
    ids = bpe.encode(text, normalized=True)
    mixed = [bpe.eod_id] + ids[:5] + [bpe.eod_id] + ids[5:] + [bpe.eod_id]
    pieces = stream(bpe, mixed)
    assert "".join(pieces) == text
    assert "<|endoftext|>" not in "".join(pieces)


def test_random_token_soup_keeps_the_invariant(bpe):
    # Arbitrary ids give stray continuation bytes, marks after spaces, dangling hasantas...
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.randrange(bpe.vocab_size) for _ in range(rng.randrange(1, 40))]
        dec = StreamDecoder(bpe)
        pieces, starts = [], []
        for i in ids:
            starts.append(dec.sent)
            pieces.append(dec.push(i))
        starts.append(dec.sent)
        pieces.append(dec.finish())
        assert "".join(pieces) == tidy_end(bpe.decode(ids))
        for start, piece in zip(starts, pieces):
            assert "\ufffd" not in piece
            if piece and start > 0:  # only the very start of the text may be a lone mark
                assert unicodedata.category(piece[0]) not in ("Mn", "Mc", "Me") and piece[0] not in (ZWJ,)


@pytest.mark.parametrize("text, end, cut", [
    ("আমি", None, 1),            # hold the last cluster: মি
    ("আমি ", None, 3),           # ... which is now the space
    ("ক্ষ", None, 0),             # one conjunct cluster
    ("ক্\n", None, 0),            # never right after a hasanta
    ("কা খা", 4, 3),              # an extra limit inside a cluster moves to its start
    ("", None, 0),
])
def test_safe_cut(text, end, cut):
    assert safe_cut(text, end) == cut
