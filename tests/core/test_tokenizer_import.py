"""Tokenizers made elsewhere: SentencePiece models (unigram and BPE, with and without byte
fallback) and Hugging Face tokenizer folders give the ids their own libraries give, on real
Bangla; a tokenizer that cannot represent the text is caught at prepare."""

from __future__ import annotations

import json
import shutil

import pytest

spm = pytest.importorskip("sentencepiece")
pytest.importorskip("transformers")

from banglaslm.data.prepare import prepare  # noqa: E402
from banglaslm.data.tokenizer_choice import load_tokenizer  # noqa: E402
from banglaslm.errors import UserError  # noqa: E402
from banglaslm.generation.stream import FIX_IDS, StreamDecoder, tidy_end  # noqa: E402
from banglaslm.text import normalize  # noqa: E402
from banglaslm.tokenizer import Coverage  # noqa: E402
from banglaslm.tokenizer_import import from_pretrained, from_sentencepiece  # noqa: E402

KINDS = {"unigram": ("unigram", False), "unigram-bytes": ("unigram", True), "bpe-bytes": ("bpe", True)}


@pytest.fixture(scope="module")
def corpus(small_books) -> list[str]:
    """Normalized paragraphs of real Bangla (the shared books, or the embedded corpus without them)."""
    paragraphs = []
    for book in small_books:
        paragraphs += [p for p in (normalize(x) for x in book.read_text(encoding="utf-8").split("\n\n")) if p]
    return paragraphs


@pytest.fixture(scope="module")
def models(corpus, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("spm")
    (folder / "train.txt").write_text("\n".join(corpus), encoding="utf-8")
    out = {}
    for name, (kind, byte_fallback) in KINDS.items():
        spm.SentencePieceTrainer.train(input=str(folder / "train.txt"), model_prefix=str(folder / name),
                                       vocab_size=1500, model_type=kind, byte_fallback=byte_fallback,
                                       character_coverage=0.9995, minloglevel=2, hard_vocab_limit=False)
        out[name] = folder / f"{name}.model"
    # the special ids T5 models (BanglaT5) are trained with, which T5Tokenizer's conversion assumes
    spm.SentencePieceTrainer.train(input=str(folder / "train.txt"), model_prefix=str(folder / "t5"), vocab_size=1500,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   character_coverage=0.9995, minloglevel=2, hard_vocab_limit=False)
    out["t5"] = folder / "t5.model"
    return out


@pytest.mark.parametrize("kind, byte_fallback", [("unigram", False), ("bpe", True)])
def test_user_defined_symbols_are_text_sentencepiece_keeps_whole(corpus, tmp_path, kind, byte_fallback):
    """A news corpus's "[URL]" or "<br>", spelled like a control token's name, was read as one
    (unknown, or byte pieces): prepare refused the data, or trained on ids that neither
    SentencePiece nor the HF export gives."""
    (tmp_path / "train.txt").write_text("\n".join(corpus), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(tmp_path / "train.txt"), model_prefix=str(tmp_path / "sp"), vocab_size=1500,
                                   model_type=kind, byte_fallback=byte_fallback, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   user_defined_symbols=["[URL]", "<br>", "‹নাম>"], minloglevel=2, hard_vocab_limit=False)
    ours = from_sentencepiece(tmp_path / "sp.model")
    theirs = spm.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
    for text in ("বিস্তারিত [URL] দেখুন।<br>সংবাদদাতা ‹নাম> জানান। [URL]ক", "আমি </s> তুমি <unk> [MASK] <0xE0>",
                 *corpus[:40]):
        ids = ours.encode(text, normalized=True)
        assert ids == theirs.encode(text) and ours.decode(ids) == theirs.decode(ids), text
    assert theirs.piece_to_id("[URL]") in ours.encode("দেখুন [URL]", normalized=True)


@pytest.mark.parametrize("name", list(KINDS))
def test_ids_equal_sentencepiece_on_real_text(models, corpus, name):
    ours = from_sentencepiece(models[name])
    theirs = spm.SentencePieceProcessor(model_file=str(models[name]))
    sample = corpus[::3][:400]
    assert ours.encode_batch(sample) == [theirs.encode(p) for p in sample]
    for text in sample[:50]:
        assert ours.decode(ours.encode(text, normalized=True)) == theirs.decode(theirs.encode(text))
    # Literal control pieces in text stay text, as SentencePiece keeps them.
    # So do full-width and small-form ones, which the model's NFKC turns into "</s>" (read as the
    # end-of-document token before).
    # And so do byte pieces' names ("<0x41>" was the byte "A", read into the model as it), beside
    # characters that byte fallback spells.
    for text in ("আমি </s> তুমি <unk> <s>", "</s>", "x<s>y", "আমি ＜/s＞ তুমি", "﹤s﹥", "＜unk＞ ＜/s＞",
                 "কোড <0x41><0x42><0x43> <0xE0><0xA6><0x95>", "<0xE0>", "漢 <0xE6> </s> 🙂<0x41>", "আমি ＜0xE0＞"):
        assert ours.encode(text, normalized=True) == theirs.encode(text), text
        assert ours.decode(ours.encode(text, normalized=True)) == theirs.decode(theirs.encode(text)), text
    # Unknown pieces decode as SentencePiece's " ⁇ " (they vanished: "ঔষধ" came back as "ষধ").
    for text in ("আমি 漢字 তুমি", "🙂", "x 漢 y 🙂", "漢"):
        ids = ours.encode(text, normalized=True)
        assert ids == theirs.encode(text) and ours.decode(ids) == theirs.decode(ids), text
    assert ours.eod_id == theirs.piece_to_id("</s>") and ours.kind.startswith("external-")


def test_every_way_of_naming_a_tokenizer_gives_the_same_ids(models, corpus, small_books, tmp_path):
    model = models["t5"]
    hf_folder = tmp_path / "t5"
    hf_folder.mkdir()
    shutil.copy(model, hf_folder / "spiece.model")  # how BanglaT5 ships: a SentencePiece model and its config
    (hf_folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
        "extra_ids": 0}), encoding="utf-8")
    data = tmp_path / "data"
    prepare([str(b) for b in small_books], data, tokenizer=str(model), doc_split="paragraph", allow_unknown=True,
            progress=False)
    from_sentencepiece(model).save(tmp_path / "tokenizer.json")
    specs = [str(model), str(hf_folder), f"hf:{hf_folder}", str(data), str(tmp_path / "tokenizer.json")]
    sample = corpus[:100]
    want = spm.SentencePieceProcessor(model_file=str(model))
    for spec in specs:
        tok = load_tokenizer(spec)
        assert tok.encode_batch(sample) == [want.encode(p) for p in sample], spec
    with pytest.raises(UserError, match="could not load the tokenizer"):
        from_pretrained(str(tmp_path / "missing"))
    # A folder holding only the SentencePiece model is that model ("Couldn't instantiate the
    # backend tokenizer" before); with two, the message says to name one.
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(model, lone / "spiece.model")
    assert load_tokenizer(str(lone)).encode_batch(sample) == [want.encode(p) for p in sample]
    shutil.copy(model, lone / "other.model")
    with pytest.raises(UserError, match=r"name the SentencePiece model itself \(.*other\.model\)"):
        load_tokenizer(str(lone))
    with pytest.raises(UserError, match="not a SentencePiece model"):
        (tmp_path / "bad.model").write_bytes(b"\x00\x01garbage")
        from_sentencepiece(tmp_path / "bad.model")


@pytest.mark.parametrize("listed", [{}, {"additional_special_tokens": None}])  # special tokens, or vocabulary pieces
def test_t5_sentinels_in_text_stay_text(models, tmp_path, listed):
    """A T5 folder (BanglaT5's kind) converts with 100 sentinels "<extra_id_N>" in its vocabulary:
    text spelling one was read as the sentinel, a control token training never saw; SentencePiece
    reads it as text, and so do we now."""
    folder = tmp_path / "t5"
    folder.mkdir()
    shutil.copy(models["t5"], folder / "spiece.model")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
        "extra_ids": 100, **listed}), encoding="utf-8")
    ours, theirs = load_tokenizer(str(folder)), spm.SentencePieceProcessor(model_file=str(models["t5"]))
    assert ours.vocab_size == theirs.get_piece_size() + 100
    for text in ("<extra_id_0> আমি", "আমি<extra_id_99>", "[MASK] তুমি", "＜extra_id_0＞", "﹤extra_id_1﹥ আমি"):
        assert ours.encode(text, normalized=True) == theirs.encode(text), text


def test_coverage_counts_unknown_and_byte_fallback(models):
    text = "আমার সোনার বাংলা ✓⌘ 你好"
    for name, expect_unknown in (("unigram", True), ("unigram-bytes", False), ("bpe-bytes", False)):
        tok, coverage = from_sentencepiece(models[name]), Coverage()
        tok.encode(text, normalized=True, coverage=coverage)
        assert coverage.tokens == len(tok.encode(text, normalized=True))
        assert (coverage.unknown > 0) == expect_unknown and (coverage.byte_fallback > 0) != expect_unknown
        if expect_unknown:
            assert {"✓", "⌘", "你", "好"} <= set(coverage.unrepresented)


def test_prepare_refuses_a_tokenizer_that_loses_the_text(models, small_books, tmp_path):
    # A tokenizer.json from a broken conversion: a hundred pieces where the model had thousands.
    from tokenizers import Tokenizer as HF
    from tokenizers import models as hf_models
    from tokenizers import pre_tokenizers

    vocab = {"<unk>": 0, "</s>": 1, "▁": 2, **{chr(0x0995 + i): 3 + i for i in range(10)}}
    broken = HF(hf_models.WordLevel(vocab, unk_token="<unk>"))
    broken.pre_tokenizer = pre_tokenizers.Whitespace()
    broken.save(str(tmp_path / "broken.json"))
    with pytest.raises(UserError, match=r"cannot represent this text: train has \d+\.\d+% unknown tokens"):
        prepare([str(b) for b in small_books], tmp_path / "d", tokenizer=str(tmp_path / "broken.json"),
                doc_split="paragraph", progress=False)
    assert not (tmp_path / "d").exists()
    result = prepare([str(b) for b in small_books], tmp_path / "d", tokenizer=str(tmp_path / "broken.json"),
                     doc_split="paragraph", allow_unknown=True, progress=False)
    coverage = result.meta["coverage"]
    assert coverage["train"]["unknown_share"] > 0.5 and coverage["train"]["unrepresented"]
    assert "unknown" in result.summary()
    # Our own byte-level BPE never loses text.
    ours = prepare([str(b) for b in small_books], tmp_path / "ours", vocab_size=500, doc_split="paragraph",
                   progress=False)
    assert ours.meta["coverage"]["train"]["unknown"] == 0


def test_prepare_eval_and_generate_see_the_same_ids(models, tmp_path):
    # SentencePiece's own normalization (nmt_nfkc) runs after ours: it spells the nukta letters
    # in two parts again and turns full-width forms into ASCII. Every stage goes through the same
    # Tokenizer.encode, so they agree; and generated text comes back in SentencePiece's spelling.
    import numpy as np

    from banglaslm.config import ModelConfig
    from banglaslm.data.folder import DataFolder
    from banglaslm.generation.engine import Engine
    from banglaslm.model import GPT

    docs = ["আমি বাড়ি যাই, দেয়াল রঙিন। ＡＢＣ১২৩", "নদীর ধারে ছোট্ট গ্রাম।\n\nআষাঢ় মাসে বৃষ্টি।"]
    for i, doc in enumerate(docs):
        (tmp_path / f"{i}.txt").write_text(doc, encoding="utf-8")
    data = tmp_path / "data"
    prepare([str(tmp_path / "0.txt"), str(tmp_path / "1.txt")], data, tokenizer=str(models["unigram"]),
            allow_unknown=True, progress=False)
    folder = DataFolder(data)
    tok = folder.tokenizer()
    bins = np.concatenate([folder.tokens(s).read() for s in ("train", "val")]).tolist()
    model = GPT(ModelConfig(arch="modern", n_layer=1, n_head=2, n_embd=16, block_size=64, vocab_size=tok.vocab_size))
    engine = Engine(model, tok)
    for doc in docs:
        prompt_ids = engine.encode_prompt(doc)[1:]
        assert prompt_ids == tok.encode(doc)  # what eval scores
        assert any(bins[i:i + len(prompt_ids)] == prompt_ids for i in range(len(bins)))  # what prepare wrote
    assert "য\u09bc" in tok.decode(tok.encode("দেয়াল"))  # nmt_nfkc's spelling of য়


def test_a_t5_tokenizer_survives_an_hf_round_trip(models, small_books, tmp_path):
    """The HF export writes its own post-processor; import set it to none, so a T5 tokenizer
    (whose conversion has one) came back with another hash, and `train --init-from` the export
    refused the data the run was trained on as "another tokenizer"."""
    from conftest import TINY_SETTINGS

    from banglaslm.config import build_config
    from banglaslm.interop.hf_export import export_hf
    from banglaslm.interop.hf_import import import_hf
    from banglaslm.runfolder import load_model
    from banglaslm.training.trainer import train

    folder = tmp_path / "t5"
    folder.mkdir()
    shutil.copy(models["t5"], folder / "spiece.model")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
        "extra_ids": 0}), encoding="utf-8")
    assert json.loads(load_tokenizer(str(folder)).hf.to_str())["post_processor"] is not None
    data = tmp_path / "data"
    prepare([str(b) for b in small_books], data, tokenizer=str(folder), doc_split="paragraph", allow_unknown=True,
            progress=False)
    run = tmp_path / "run"
    train(data, run, build_config(overrides={**TINY_SETTINGS, "train.max_iters": 2, "train.eval_interval": 2, "train.warmup_iters": 1}),
          progress=False)
    back = import_hf(export_hf(run, tmp_path / "hf"), tmp_path / "back")
    assert load_model(back).tokenizer.sha256 == load_model(run).tokenizer.sha256
    train(data, tmp_path / "again", build_config(overrides={**TINY_SETTINGS, "train.max_iters": 2, "train.warmup_iters": 1}), init_from=back,
          progress=False)  # the data fits the imported run


def test_chat_stops_are_written_as_a_sentencepiece_model_writes_them(models, trained_run):
    """nmt_nfkc turns a newline into a space: a base model on BanglaT5's kind of tokenizer could
    never write the "\\nব্যবহারকারী:" that stops it at the next turn; its stops are what it writes."""
    from banglaslm.chat_template import chat_labels, chat_stops, encode_chat
    from banglaslm.runfolder import load_model

    conversation = [{"role": "system", "content": "ভদ্র হও"}, {"role": "user", "content": "নদীর কথা বলো"}]
    for tok in (from_sentencepiece(models["unigram"]), load_model(trained_run).tokenizer):
        written = tok.decode(encode_chat(tok, conversation)[0])
        stops = dict(zip(chat_labels("bn"), chat_stops("bn", tok)))
        assert written.count(stops["user"]) == 1 and written.count(stops["assistant"]) == 1, (written, stops)
    assert chat_stops("bn", load_model(trained_run).tokenizer) == chat_stops("bn")  # byte-level BPE keeps "\n"


@pytest.mark.parametrize("name", list(KINDS))
def test_a_continuation_decodes_with_its_leading_space(models, corpus, name):
    """A SentencePiece piece "▁ভাত" decoded on its own loses its space: a generated continuation
    was glued to its prompt ("আমি ভাত" + "খাই"), and the server's logprob tokens did not add up
    to the text. Decoded as a continuation, any cut of the ids gives the whole text back."""
    ours = from_sentencepiece(models[name])
    for text in corpus[:20] + ["আমি ভাত খাই 漢 x"]:
        ids = ours.encode(text, normalized=True)
        whole = ours.decode(ids)
        for cut in (c for c in range(1, len(ids)) if ids[c] not in ours.byte_pieces):  # not inside a character
            assert ours.decode(ids[:cut]) + ours.decode(ids[cut:], continuing=True) == whole, (text, cut)
        pieces = "".join(ours.token_bytes(i).decode("utf-8", errors="ignore") for i in ids if i not in ours.byte_pieces)
        if not any(i in ours.byte_pieces for i in ids):
            assert pieces == ours.decode(ids, continuing=True) and pieces.strip() == whole.strip()


@pytest.mark.parametrize("name", list(KINDS))
def test_streaming_a_long_continuation_decodes_a_bounded_window(models, corpus, name):
    """A SentencePiece continuation was decoded whole after every token, so a token cost more the
    longer the answer: the decoder fixes its oldest ids as text, so each token decodes a few dozen
    ids, and the text is still exactly the whole decode, byte pieces (漢, 🙂) cut anywhere."""
    ours = from_sentencepiece(models[name])
    ids = [i for text in corpus[:60] + ["漢字 🙂 ঔষধ"] * 3 for i in ours.encode(text, normalized=True)]
    seen: list[int] = []
    decode = ours.decode
    ours.decode = lambda ids, **kw: seen.append(len(ids)) or decode(ids, **kw)
    dec = StreamDecoder(ours)
    streamed = "".join(dec.push(i) for i in ids) + dec.finish()
    ours.decode = decode
    assert len(ids) > 20 * FIX_IDS and streamed == tidy_end(ours.decode(ids, continuing=True))
    assert max(seen) < 3 * FIX_IDS


@pytest.mark.parametrize("name", ["unigram-bytes", "bpe-bytes"])
def test_byte_pieces_stream_and_spell_whole_characters(models, name):
    """A character SentencePiece spells in byte pieces ("<0xE6><0xBC><0xA2>" for 漢) streamed as
    U+FFFD for each piece that came before the last, and each piece's bytes (the server's
    logprobs) were U+FFFD's: a piece is its byte, and the stream waits for the character."""
    ours = from_sentencepiece(models[name])
    text = "x 漢字 🙂 ঔষধ"
    ids = ours.encode(text, normalized=True)
    assert sum(i in ours.byte_pieces for i in ids) >= 10
    assert b"".join(ours.token_bytes(i) for i in ids).decode().strip() == text
    dec = StreamDecoder(ours)
    pieces = [dec.push(i) for i in ids] + [dec.finish()]
    assert "\ufffd" not in "".join(pieces) and "".join(pieces).strip() == text


@pytest.mark.parametrize("name", ["unigram-bytes", "bpe-bytes"])
def test_byte_pieces_decode_as_sentencepiece_decodes_them(models, name):
    """A run of byte pieces with one stray byte decoded all as U+FFFD ("দ" + a lone E0 gave
    "����", SentencePiece "দ�"), and the stream, which had shown "দ", then disagreed with the
    text: each byte that starts no character is one U+FFFD, the rest decode, stream and text agree,
    and a character the generation stopped inside of is left out at the end."""
    import random

    from banglaslm.generation.stream import finished_text

    ours, theirs = from_sentencepiece(models[name]), spm.SentencePieceProcessor(model_file=str(models[name]))
    byte = {b: i for i, b in ours.byte_pieces.items()}
    word, space = theirs.encode("আমি")[-1], theirs.piece_to_id("▁")
    assert ours.decode([word, byte[0xE0], byte[0xA6], byte[0xA6], byte[0xE0]]) == "আমিদ\ufffd"
    rng = random.Random(0)
    for _ in range(500):
        ids = [word] + [rng.choice([byte[rng.choice([0xE0, 0xA6, 0x95, 0xF0, 0x9F, 0x98, 0x80, 0x41, 0xED, 0xC0])],
                                    word, space]) for _ in range(rng.randint(1, 40))]
        assert ours.decode(ids) == theirs.decode(ids), ids
        dec = StreamDecoder(ours)
        assert "".join(dec.push(i) for i in ids) + dec.finish() == finished_text(ours, ids), ids
    assert finished_text(ours, [word, byte[0xE0], byte[0xA6]]) == " আমি"  # cut inside দ: left out
    assert finished_text(ours, [word, byte[0xE0], word]) == " আমি\ufffd আমি"  # a byte no character follows



def test_what_a_sentencepiece_user_gives_by_mistake_is_named_with_the_fix(models, small_books, corpus, tmp_path):
    """A .vocab file and any other file were "not a valid tokenizer.json"; a model trained without
    an eos piece was told to edit a tokenizer.json it did not have; --vocab-size with a tokenizer
    of its own was silently ignored."""
    (tmp_path / "train.txt").write_text("\n".join(corpus[:400]), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(tmp_path / "train.txt"), model_prefix=str(tmp_path / "noeos"),
                                   vocab_size=800, eos_id=-1, bos_id=-1, minloglevel=2, hard_vocab_limit=False)
    script = tmp_path / "make.py"
    script.write_text("print('not a tokenizer')\n")
    vocab = models["unigram"].with_suffix(".vocab")
    (tmp_path / "empty").mkdir()
    (tmp_path / "config_only").mkdir()
    (tmp_path / "config_only" / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "extra_ids": 100}), encoding="utf-8")
    (tmp_path / "empty.model").write_bytes(b"")
    lone = shutil.copy(vocab, tmp_path / "lone.vocab")
    cases = [(str(vocab), {}, f"is SentencePiece's vocabulary listing, not its model; pass {models['unigram']} "),
             (str(lone), {}, "pass the .model file sentencepiece wrote with it"),
             (str(tmp_path / "noeos.model"), {}, "has no end-of-sentence piece (</s>), which banglaslm puts between "
                                                 "documents; train it again with an eos piece"),
             (str(script), {}, "is none of these (a tokenizer.json, a SentencePiece .model"),
             (str(tmp_path / "runs" / "mine"), {}, f"{tmp_path / 'runs' / 'mine'} was not found; check the path"),
             ("bpee", {}, "must be bpe, char or an existing tokenizer; bpee is none of these"),
             ("csebuetnlp/banglat5", {}, "csebuetnlp/banglat5 was not found; check the path (a Hugging Face hub name "
                                         "takes hf:, as hf:csebuetnlp/banglat5)"),
             (str(tmp_path / "empty"), {}, "empty holds no tokenizer (tokenizer.json, *.model, vocab.json, vocab.txt)"),
             # a config without its vocabulary: transformers built 104 special tokens, and prepare
             # blamed the text (50% unknown) after reading it all
             (str(tmp_path / "config_only"), {}, "config_only holds no tokenizer (tokenizer.json, *.model, vocab.json, "
                                                 "vocab.txt) (its tokenizer_config.json alone has no vocabulary)"),
             # an empty or cut-off .model parses as a model of no pieces: it was "model type 1 and 0 pieces"
             (str(tmp_path / "empty.model"), {}, "empty.model holds no pieces, so it is not a SentencePiece model"),
             (str(models["unigram"]), {"vocab_size": 32000}, "applies to the BPE tokenizer prepare trains"),
             ("char", {"tokenizer_sample": 1000}, "applies to the BPE tokenizer prepare trains")]
    for tokenizer, options, message in cases:
        with pytest.raises(UserError) as caught:
            prepare([str(small_books[0])], tmp_path / "out", tokenizer=tokenizer, progress=False, **options)
        assert message in str(caught.value), (tokenizer, str(caught.value))
        assert not (tmp_path / "out").exists()


def test_the_exported_normalizer_equals_normalize_on_every_short_sequence():
    """The HF export's normalizer (a tokenizers Sequence) must do what normalize() does, rule order
    included: every sequence of up to three letters, signs and invisible characters."""
    import itertools

    from tokenizers import Tokenizer as HFTokenizer

    from banglaslm.tokenizer_import import bangla_normalizer

    spec = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": bangla_normalizer(),
            "pre_tokenizer": None, "post_processor": None, "decoder": None,
            "model": {"type": "WordLevel", "vocab": {"x": 0}, "unk_token": "x"}}
    exported = HFTokenizer.from_str(json.dumps(spec)).normalizer
    parts = ["ড", "য", "ক", "ত", "\u09c7", "\u09be", "\u09bc", "\u09cd", "\u09fe", "\u200c", "\u200d", "\u200b",
             "\u00ad", "\ufeff", " ", "\n", "\r"]
    for n in (1, 2, 3):
        for combo in itertools.product(parts, repeat=n):
            text = "".join(combo)
            assert exported.normalize_str(text) == normalize(text), [hex(ord(c)) for c in text]


def test_a_tokenizer_that_does_not_give_back_its_text_is_named(models, corpus, tmp_path, capsys):
    """A tokenizer whose pre-tokenizer drops the spaces (Whitespace) or whose decoder puts one
    before punctuation (WordPiece) was taken without a word: eval counted characters the model
    never predicted, and generated text ran together."""
    from tokenizers import Tokenizer as HF
    from tokenizers import decoders, pre_tokenizers, trainers
    from tokenizers import models as hf_models

    from banglaslm.tokenizer import Tokenizer

    whitespace = HF(hf_models.BPE(unk_token="[UNK]"))
    whitespace.pre_tokenizer = pre_tokenizers.Whitespace()
    whitespace.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=800, special_tokens=["</s>", "[UNK]"]))
    wordpiece = HF(hf_models.WordPiece(unk_token="[UNK]"))
    wordpiece.pre_tokenizer, wordpiece.decoder = pre_tokenizers.BertPreTokenizer(), decoders.WordPiece()
    wordpiece.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=800, special_tokens=["[SEP]", "[UNK]"]))
    for hf in (whitespace, wordpiece):
        note = Tokenizer.from_hf(hf).round_trip_note()
        assert note.startswith("the tokenizer does not give back the text it encodes: 'আমার সোনার বাংলা, আমি তোমা") \
            and "' decodes as '" in note and "bits per character will be off" in note
    # one that cannot spell a character of the sentence (trained on text without it) was let through
    commaless = HF(hf_models.WordPiece(unk_token="[UNK]"))
    commaless.pre_tokenizer, commaless.decoder = pre_tokenizers.BertPreTokenizer(), decoders.WordPiece()
    commaless.train_from_iterator([p.replace(",", "") for p in corpus],
                                  trainers.WordPieceTrainer(vocab_size=800, special_tokens=["[SEP]", "[UNK]"]))
    note = Tokenizer.from_hf(commaless).round_trip_note()  # the sentence less what it cannot spell
    assert note is not None and note.startswith("the tokenizer does not give back the text it encodes: 'আমার সোনার")
    # one whose pieces of a word are known alone but not together: WordPiece reads the word as unknown
    words = ["[UNK]", "</s>", "আমার", "সোনার", "বাংলা", ",", "আমি", "ভালোবাসি", "।", "ত", "ো", "ম", "া", "য়"]
    partial = HF(hf_models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    partial.pre_tokenizer, partial.decoder = pre_tokenizers.BertPreTokenizer(), decoders.WordPiece()
    partial.add_special_tokens(["</s>", "[UNK]"])
    note = Tokenizer.from_hf(partial).round_trip_note()
    assert note is not None and "'আমার সোনার বাংলা, আমি ভালোবাসি।' decodes as 'আমার সোনার বাংলা, আমি ভালোবাসি ।'" \
        in note
    prefixed = HF(hf_models.BPE())  # GPT-2's add_prefix_space: one leading space, not a loss of the text
    prefixed.pre_tokenizer, prefixed.decoder = pre_tokenizers.ByteLevel(add_prefix_space=True), decoders.ByteLevel()
    prefixed.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, special_tokens=["</s>"],
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    for fine in (Tokenizer.from_hf(prefixed), Tokenizer.train_bpe(corpus, 400), Tokenizer.build_char("".join(corpus)),
                 *(from_sentencepiece(path) for path in models.values())):
        assert fine.round_trip_note() is None, fine.kind
    whitespace.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "in.txt").write_text("\n\n".join(corpus[:40]), encoding="utf-8")
    prepare([str(tmp_path / "in.txt")], tmp_path / "data", tokenizer=str(tmp_path / "tokenizer.json"),
            doc_split="paragraph", allow_unknown=True, progress=False)
    assert "note: the tokenizer does not give back the text it encodes" in capsys.readouterr().err


@pytest.mark.parametrize("ids, named", [({}, r"end-of-document token '</s>' \(id 2\)"),
                                       ({"unk_id": 0, "eos_id": 1, "bos_id": -1}, r"piece '.+' \(id 2\)")])
def test_a_t5_folder_around_a_model_of_other_ids_is_refused(ids, named, corpus, small_books, tmp_path):
    """transformers' T5 conversion takes T5's layout (unk 2) for any spiece.model: wrapped around
    one trained with SentencePiece's defaults (unk 0, eos 2), every unknown character was written
    as "</s>", an end of document, in the bins; around another layout, as a piece of text."""
    (tmp_path / "train.txt").write_text("\n".join(corpus), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(tmp_path / "train.txt"), model_prefix=str(tmp_path / "m"), vocab_size=1500,
                                   model_type="unigram", minloglevel=2, hard_vocab_limit=False, **ids)
    folder = tmp_path / "t5"
    folder.mkdir()
    shutil.copy(tmp_path / "m.model", folder / "spiece.model")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
        "extra_ids": 0}), encoding="utf-8")
    with pytest.raises(UserError, match=r"unknown id is its " + named + r".*give the SentencePiece \.model file itself"):
        prepare([str(small_books[0])], tmp_path / "data", tokenizer=str(folder), doc_split="paragraph",
                progress=False)
    assert not (tmp_path / "data").exists()
    assert load_tokenizer(str(tmp_path / "m.model")).unk_id == 0  # the model itself: its own ids
    from_pretrained(str(folder))  # refused to make data with, not to load: what was trained on it still loads


def test_a_unigram_whose_unknown_piece_is_named_so_but_not_special_is_taken(corpus):
    """`tokenizers`' own UnigramTrainer(unk_token="<unk>") puts "<unk>" in the vocabulary as a
    plain piece: the unknown id's check must not refuse it."""
    from tokenizers import Tokenizer as HF
    from tokenizers import models as hf_models
    from tokenizers import pre_tokenizers, trainers

    from banglaslm.tokenizer import Tokenizer

    hf = HF(hf_models.Unigram())
    hf.pre_tokenizer = pre_tokenizers.Metaspace()
    hf.train_from_iterator(corpus, trainers.UnigramTrainer(vocab_size=600, unk_token="<unk>", special_tokens=["</s>"]))
    tok = Tokenizer.from_hf(hf)
    assert tok.hf.id_to_token(tok.unk_id) == "<unk>" and tok.unk_id not in tok.special_ids
    tok.check_unknown_id()
