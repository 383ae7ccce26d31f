import unicodedata

from conftest import require_literature
from hypothesis import given, settings
from hypothesis import strategies as st

from banglaslm.text import cluster_breaks, normalize

YA, RRA, RHA = "\u09df", "\u09dc", "\u09dd"
# Letters, signs and the invisible characters that may sit between them (tests/core checks the
# exported normalizer on the same sequences).
INSIDE_A_LETTER = ["ড", "য", "ক", "ত", "\u09c7", "\u09be", "\u09bc", "\u09cd", "\u09fe", "\u200c", "\u200d", "\u200b",
                   "\u00ad", "\ufeff", " ", "\n"]


def test_nukta_letters_are_precomposed_even_after_nfc():
    decomposed = "\u09af\u09bc \u09a1\u09bc \u09a2\u09bc"
    assert unicodedata.normalize("NFC", decomposed) == decomposed  # NFC alone keeps them split
    assert normalize(decomposed) == f"{YA} {RRA} {RHA}"
    assert normalize(f"{YA}{RRA}{RHA}") == f"{YA}{RRA}{RHA}"


def test_nfc_composes_split_vowel_signs():
    # ো written as e-sign + aa-sign must become the single code point U+09CB
    assert normalize("ক\u09c7\u09be") == "ক\u09cb"


def test_khanda_ta_old_encoding():
    assert normalize("উ\u09a4\u09cd\u200dসব") == "উ\u09ceসব"


def test_joiners_kept_only_beside_hasanta():
    assert normalize("ক্\u200cষ") == "ক্\u200cষ"          # ZWNJ after hasanta: visible hasanta
    assert normalize("র\u200d্য") == "র\u200d্য"          # ZWJ before hasanta: ya-phala form
    assert normalize("কম\u200dল\u200cকে") == "কমলকে"      # elsewhere: invisible noise
    assert normalize("ক্\u200c\u200c\u200cষ") == "ক্\u200cষ"


def test_invisible_and_control_characters_removed():
    assert normalize("\ufeffআমি\u200b তুমি\u00ad\x07") == "আমি তুমি"


def test_whitespace_policy():
    text = "  এক\u00a0\u00a0দুই\t তিন  \r\nচার\r\n\r\n\r\n\r\nপাঁচ  "
    assert normalize(text) == "এক দুই তিন\nচার\n\nপাঁচ"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("কখগড়য়ঢ়\u09bc\u09cd\u200c\u200dাি ো\n\t\r ।a\u200b")) | st.characters(), max_size=60))
def test_idempotent(text):
    once = normalize(text)
    assert normalize(once) == once


def test_real_corpus_differs_from_nfc_and_survives(tmp_path):
    books = require_literature()
    text = (books / "RabindranathTagore_Prose_Lipika.txt").read_text(encoding="utf-8")
    out = normalize(text)
    assert unicodedata.normalize("NFC", text) != text  # the shared text is not NFC ...
    assert "\u09bc" not in out                          # ... but we keep its precomposed nukta letters
    assert out.count(YA) >= text.count(YA) > 100
    assert normalize(out) == out
    # Only whitespace and invisible characters may disappear: the Bengali letters survive.
    bengali = lambda s: sum(1 for c in s if "\u0980" <= c <= "\u09ff")
    assert bengali(out) == bengali(text)


def test_cluster_breaks_bangla_rules():
    # ক + hasanta + ষ is one conjunct; কি keeps its vowel sign; a space separates clusters.
    assert cluster_breaks("ক্ষ") == [True, False, False, True]
    assert cluster_breaks("কি ক") == [True, False, True, True, True]
    # র + ZWJ + hasanta + য (ra-phala with a joiner): one cluster.
    assert cluster_breaks("র\u200d্য") == [True, False, False, False, True]
    # A hasanta before a space does not join anything.
    assert cluster_breaks("ক্ ক") == [True, False, True, True, True]


def test_one_grapheme_rule_for_streaming_and_the_tokenizer_study():
    # The stream decoder's cuts and the tokenizer study's boundaries come from the same rule.
    from banglaslm.generation.stream import safe_cut
    from banglaslm.text import joins_previous

    for text in ("ক্ষমা", "র\u200d্যাব", "কি ক", "ক্\u200cষ", "👍🏽 ভালো", "a\r\nb"):
        breaks = cluster_breaks(text)
        assert breaks[1:-1] == [not joins_previous(text, i) for i in range(1, len(text))]
        cut = safe_cut(text)
        assert breaks[cut], (text, cut)  # the stream only ever cuts at a cluster boundary


def test_idempotent_where_an_invisible_character_sits_inside_a_letter():
    """Composition ran before invisible characters were removed, so ড + U+200B + ় came out as
    ড + ়, and only a second normalization made it ড়. Every sequence of up to three of these
    characters normalizes in one pass."""
    import itertools

    from banglaslm.text import character_classes

    for n in (1, 2, 3):
        for combo in itertools.product(INSIDE_A_LETTER, repeat=n):
            text = "".join(combo)
            once = normalize(text)
            assert normalize(once) == once, [hex(ord(c)) for c in text]
    assert normalize("ড\u200b\u09bc") == RRA and normalize("ক\u09c7\u00ad\u09be") == "ক\u09cb"
    assert 0x200b in character_classes()["drop"]
