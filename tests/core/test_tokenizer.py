import collections
import re

import pytest
from conftest import require_literature

from banglaslm.errors import UserError
from banglaslm.text import normalize
from banglaslm.tokenizer import EOD, Tokenizer

WORD = re.compile(r"[\u0980-\u09ff]+")


@pytest.fixture(scope="module")
def books_text():
    books = require_literature()
    names = ["RabindranathTagore_Prose_Lipika.txt", "SukumarRay_Prose_PaglaDashu.txt",
             "RabindranathTagore_Poetry_Kalpana.txt", "AbanindranathTagore_Prose_BuroAngla.txt"]
    return [normalize((books / n).read_text(encoding="utf-8")) for n in names]


@pytest.fixture(scope="module")
def bpe(books_text):
    return Tokenizer.train_bpe(books_text, vocab_size=4000)


def test_frequent_bangla_words_are_single_tokens(bpe, books_text):
    counts = collections.Counter(w for text in books_text for w in WORD.findall(text))
    frequent = [w for w, _ in counts.most_common(200) if any("\u0980" <= c <= "\u09ff" for c in w)]
    single = [w for w in frequent if len(bpe.encode(" " + w, normalized=True)) == 1]
    # With letters+marks kept together, nearly all of the 200 most frequent words are whole.
    assert len(single) >= 0.95 * len(frequent), [w for w in frequent if w not in single][:20]
    # Words with vowel signs and conjuncts specifically (what GPT-2 patterns would cut):
    for word in ("করিয়া", "থেকে", "কিন্তু", "আমার"):
        if counts[word] > 50:
            assert len(bpe.encode(" " + word, normalized=True)) == 1, word


def test_gpt2_style_split_would_cut_words(bpe):
    # The reason for the pattern: a vowel sign is a mark, not a letter.
    import unicodedata

    assert unicodedata.category("\u09bf") == "Mc" and unicodedata.category("\u09cd") == "Mn"
    pieces = bpe.hf.pre_tokenizer.pre_tokenize_str("আমার কিন্তু")
    assert len(pieces) == 2  # two words, two pre-tokens (GPT-2's \p{L}+ would give more)


def test_round_trip_and_parallel_pieces_identical(bpe, books_text):
    text = books_text[1][:50000]
    ids = bpe.encode(text, normalized=True)
    assert bpe.decode(ids) == text
    whole = bpe.hf.encode(text, add_special_tokens=False).ids
    assert bpe.encode_batch([text]) == [whole] == [ids]


def test_a_document_of_one_long_line_is_encoded_in_pieces_with_the_same_ids(bpe, books_text):
    """A line far longer than PIECE_CHARS (a dump without line breaks) is cut between words:
    the ids are the whole line's, for both of our kinds."""
    from banglaslm.tokenizer import PIECE_CHARS, _pieces

    words = " ".join(books_text[1].split())
    line = (words * (1 + 3 * PIECE_CHARS // len(words)))[:3 * PIECE_CHARS + 1234]
    numbers = "১২৩, ৪৫৬।  " * (PIECE_CHARS // 4)  # no letters: cut after a non-space, not inside "  "
    assert len(_pieces(line, "bpe")) >= 3 and len(_pieces(numbers, "bpe")) >= 3
    texts = [line, "ক\n\nখ " + line, numbers]
    assert bpe.encode_batch(texts) == [bpe.hf.encode(t, add_special_tokens=False).ids for t in texts]
    char = Tokenizer.build_char(line)
    assert len(_pieces(line, "char")) == 4
    assert char.encode_batch([line]) == [char.hf.encode(line, add_special_tokens=False).ids]


def test_a_gpt2_style_tokenizer_is_foreign_and_encodes_as_itself():
    """Byte-level BPE with an "<|endoftext|>" and GPT-2's pre-tokenizer is not ours: cutting
    its documents after blank lines would change its ids ("\n\n" is one of its pre-tokens)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(["hello world\n\nthis is a test\n\n\nanother line\n  here\n"] * 50,
                           trainers.BpeTrainer(vocab_size=400, special_tokens=[EOD],
                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = Tokenizer.from_hf(hf)
    assert tok.kind == "external-bpe"
    text = "hello\n\nworld is\n\n\nhere"
    assert tok.encode_batch([text]) == [hf.encode(text).ids]


def test_literal_special_token_text_is_not_a_control_token(bpe):
    ids = bpe.encode(f"ক {EOD} খ")
    assert bpe.eod_id not in ids
    assert bpe.decode(ids) == f"ক {EOD} খ"


def test_decode_drops_incomplete_utf8_instead_of_replacement_char(bpe):
    ids = bpe.encode("বাংলা")
    # Find a byte-level token that ends inside a character
    raw = [bpe.token_bytes(i) for i in range(bpe.vocab_size)]
    partial = next(i for i, b in enumerate(raw) if b and b[0] == 0xE0 and len(b) == 1)
    text = bpe.decode(ids + [partial])
    assert "\ufffd" not in text and text == "বাংলা"


def test_decode_refuses_ids_outside_the_vocabulary():
    # -1 once decoded as the vocabulary's last token, and a float as a TypeError from a list index.
    tok = Tokenizer.build_char("আমি ভাত খাই।")
    assert tok.decode([tok.encode("আ")[0], *tok.encode("মি")]) == "আমি"
    for bad, fragment in ((-1, "got -1"), (tok.vocab_size, f"got {tok.vocab_size}"), (1.0, "got 1.0")):
        with pytest.raises(UserError, match="^ids must be") as caught:
            tok.decode([bad])
        assert fragment in str(caught.value)
        with pytest.raises(UserError, match="^ids must be"):
            tok.token_bytes(bad)


def test_an_added_plain_token_of_a_byte_level_tokenizer_decodes_as_its_text(tmp_path, bpe):
    # tokenizers keeps an added token's text as it is, outside the byte-level alphabet: reading
    # it through that alphabet was a KeyError in decode and token_bytes.
    bpe.hf.save(str(tmp_path / "tokenizer.json"))
    hf = type(bpe.hf).from_file(str(tmp_path / "tokenizer.json"))
    hf.add_tokens(["আমরাসবাই", "ĠĠfoo"])  # the second is spelled in the byte-level alphabet: it reads as "  foo"
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.from_file(tmp_path / "tokenizer.json")
    ids = tok.encode("আমরাসবাই ভাত খাই")
    added = hf.token_to_id("আমরাসবাই")
    assert added in ids and tok.token_bytes(added) == "আমরাসবাই".encode()
    assert tok.decode(ids) == hf.decode(ids) == "আমরাসবাই ভাত খাই"
    spelled = [*ids, hf.token_to_id("ĠĠfoo")]
    assert tok.decode(spelled) == hf.decode(spelled) == "আমরাসবাই ভাত খাই  foo"


def test_char_tokenizer_round_trip_and_save_load(tmp_path):
    text = "First Citizen:\nBefore we proceed any further, hear me speak."
    tok = Tokenizer.build_char(text)
    ids = tok.encode(text)
    assert len(ids) == len(text) and tok.decode(ids) == text
    tok.save(tmp_path / "tokenizer.json")
    again = Tokenizer.from_file(tmp_path / "tokenizer.json")
    assert again.kind == "char" and again.sha256 == tok.sha256 and again.encode(text) == ids


def test_external_tokenizer_json_uses_its_eos_and_adds_no_special_tokens(tmp_path):
    # A SentencePiece-style tokenizer whose post-processor appends </s> (the course's bug).
    from tokenizers import Tokenizer as HF
    from tokenizers import models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "আমি": 3, "ভাত": 4, "খাই": 5}
    hf = HF(models.WordLevel(vocab, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.add_special_tokens(["</s>", "<pad>"])
    hf.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.from_file(tmp_path / "tokenizer.json")
    assert tok.eod_id == 1 and tok.kind.startswith("external")
    assert tok.encode("আমি ভাত খাই") == [3, 4, 5]  # no trailing </s>


def test_bad_tokenizer_files(tmp_path):
    from banglaslm.errors import UserError

    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match="not a valid tokenizer.json"):
        Tokenizer.from_file(bad)
    with pytest.raises(UserError, match="not found"):
        Tokenizer.from_file(tmp_path / "missing.json")


def test_a_folder_given_as_the_tokenizer_file_is_named_as_one(tmp_path):
    """A run folder holds tokenizer.json: "tokenizer file not found: runs/mine" said the folder
    did not exist."""
    (tmp_path / "tokenizer.json").write_text("{}", encoding="utf-8")
    with pytest.raises(UserError, match="is a folder; give the tokenizer file in it, e.g. .*tokenizer.json"):
        Tokenizer.from_file(tmp_path)


def test_ctrl_c_stops_bpe_training_without_waiting_for_the_merges(monkeypatch):
    """The merges run in Rust, which hears no signal: a Ctrl-C waited for them to finish (minutes
    on a large corpus). Here they are a wait that ends when the test releases it; Python code in
    the main thread would hear the Ctrl-C, so the merges must run in another thread."""
    import _thread
    import signal
    import threading

    from tokenizers import Tokenizer as HFTokenizer

    release, finished, threads = threading.Event(), threading.Event(), []

    def merges(self, iterator, trainer=None, length=None):
        threads.append(threading.current_thread())
        release.wait(5)
        finished.set()

    monkeypatch.setattr(HFTokenizer, "train_from_iterator", merges)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # CI may start us with it ignored
    threading.Timer(0.3, _thread.interrupt_main).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            Tokenizer.train_bpe(["আমি ভাত খাই"], vocab_size=300)
        assert threads[0] is not threading.main_thread() and not finished.is_set()  # stopped while they ran
    finally:
        release.set()
        signal.signal(signal.SIGINT, previous)
    with pytest.raises(ValueError, match="boom"):  # an error in the merges still reaches the caller
        monkeypatch.setattr(HFTokenizer, "train_from_iterator", lambda *a, **k: (_ for _ in ()).throw(ValueError("boom")))
        Tokenizer.train_bpe(["আমি ভাত খাই"], vocab_size=300)
