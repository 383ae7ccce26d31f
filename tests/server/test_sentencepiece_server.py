"""The server on a SentencePiece model with byte fallback (the course's kind of tokenizer): the
texts of logprob tokens join to the choice's text, and their offsets point into it, where
stray byte pieces write U+FFFD and pieces carry SentencePiece's leading "▁"."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_SETTINGS
from fastapi.testclient import TestClient

spm = pytest.importorskip("sentencepiece")
pytest.importorskip("transformers")

from banglaslm.server.app import create_app  # noqa: E402
from banglaslm.text import normalize  # noqa: E402
from banglaslm.tokenizer import Tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def sp_run(small_books, tmp_path_factory):
    from banglaslm.config import build_config
    from banglaslm.data.prepare import prepare
    from banglaslm.training.trainer import train

    folder = tmp_path_factory.mktemp("sp_server")
    text = folder / "books.txt"
    text.write_text("\n".join(normalize(p.read_text(encoding="utf-8")) for p in small_books), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(folder / "sp"), vocab_size=1200,
                                   model_type="unigram", byte_fallback=True, character_coverage=0.995,
                                   minloglevel=2, hard_vocab_limit=False)
    prepare([str(p) for p in small_books], folder / "data", tokenizer=str(folder / "sp.model"),
            doc_split="paragraph", allow_unknown=True, progress=False)
    run = folder / "run"
    train(folder / "data", run, build_config(overrides={**TINY_SETTINGS, "train.max_iters": 10,
                                                         "train.eval_interval": 5}), progress=False)
    return run


@pytest.fixture(scope="module")
def client(sp_run):
    with TestClient(create_app(sp_run, model_name="sp")) as c:
        yield c


@pytest.fixture(scope="module")
def tok(sp_run) -> Tokenizer:
    return Tokenizer.from_file(sp_run / "tokenizer.json")


def test_text_offsets_point_into_text_with_stray_bytes(client, tok):
    """Offsets were counted with stray bytes dropped while the text shows them as U+FFFD, so every
    token after one pointed too early."""
    byte = {b: i for i, b in tok.byte_pieces.items()}
    bias = {str(byte[0xE0]): 40, str(byte[0xA6]): 40, str(byte[0x95]): 40, str(tok.hf.token_to_id("▁")): 40}
    body = {"model": "sp", "prompt": "ক", "max_tokens": 40, "seed": 5, "logprobs": 1, "logit_bias": bias}
    choice = client.post("/v1/completions", json=body).json()["choices"][0]
    text, lp = choice["text"], choice["logprobs"]
    assert "\ufffd" in text and len(text.replace("\ufffd", "")) >= 2  # stray bytes, and characters too
    whole = [(t, o) for t, o in zip(lp["tokens"], lp["text_offset"]) if not t.startswith("bytes:")]
    assert any("\ufffd" in text[:o] for _, o in whole)  # a whole token after a stray byte
    assert all(text[o:o + len(t)] == t for t, o in whole), (text, lp)
    streamed = client.post("/v1/completions", json={**body, "stream": True})
    pieces = [line[6:] for line in streamed.text.split("\n\n") if line.startswith("data: {")]
    assert "".join(json.loads(p)["choices"][0]["text"] for p in pieces) == text


def test_echo_is_the_prompt_and_its_tokens_join_to_it(client):
    """The echoed prompt began with the space of SentencePiece's first "▁" (" আমি ভাত খাই")."""
    prompt = "আমি ভাত খাই"
    body = {"model": "sp", "prompt": prompt, "max_tokens": 3, "echo": True, "logprobs": 0, "temperature": 0}
    choice = client.post("/v1/completions", json=body).json()["choices"][0]
    assert choice["text"].startswith(prompt)
    tokens = choice["logprobs"]["tokens"]
    joined = "".join(tokens)
    assert joined == choice["text"] and joined.startswith(prompt)
    assert choice["logprobs"]["text_offset"][:2] == [0, len(tokens[0])]


@pytest.mark.parametrize("stream", [False, True])
def test_chat_logprob_tokens_join_to_the_content(client, tok, stream):
    """The content drops the answer's leading space; its first logprob token kept it (" আমি")."""
    word = tok.hf.token_to_id("▁আমি") or next(i for t, i in tok.hf.get_vocab().items() if t.startswith("▁") and
                                                len(t) > 2 and i not in tok.byte_pieces)
    body = {"model": "sp", "messages": [{"role": "user", "content": "নমস্কার"}], "max_tokens": 4, "seed": 1,
            "logprobs": True, "top_logprobs": 2, "logit_bias": {str(word): 100}, "stream": stream}
    response = client.post("/v1/chat/completions", json=body)
    if stream:
        chunks = [json.loads(b[6:]) for b in response.text.split("\n\n") if b.startswith("data: {")]
        choices = [c["choices"][0] for c in chunks if c["choices"]]
        content = "".join(c["delta"].get("content") or "" for c in choices)
        entries = [e for c in choices for e in ((c.get("logprobs") or {}).get("content") or [])]
    else:
        choice = response.json()["choices"][0]
        content, entries = choice["message"]["content"], choice["logprobs"]["content"]
    assert content and not content[0].isspace() and len(entries) == 4
    assert "".join(e["token"] for e in entries) == content
    assert all(bytes(e["bytes"]).decode() == e["token"] for e in entries)


def test_stream_options_need_stream(client):
    r = client.post("/v1/completions", json={"model": "sp", "prompt": "আমি", "max_tokens": 2,
                                             "stream_options": {"include_usage": True}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream_options"


def test_a_prompt_ending_in_a_line_break_goes_on_with_a_new_word(sp_run, trained_run):
    """SentencePiece's normalizer drops a final line break, so "নদী\\n" read as "নদী" and most
    continuations were glued onto the last word ("নদীকার"); its first token now opens a word, as
    after a final space. Our BPE writes the break, and the token after it is free."""
    from banglaslm.config import SamplingParams
    from banglaslm.generation.engine import Engine
    from banglaslm.runfolder import load_model

    loaded = load_model(sp_run)
    engine = Engine(loaded.model, loaded.tokenizer)
    assert engine.opens_word("শিরোনাম: নদী\n") and engine.opens_word("নদী ") and not engine.opens_word("নদী")
    assert not engine.opens_word("\n")  # nothing before the break: no word to glue onto
    openers = set(loaded.tokenizer.space_openers)
    firsts = [engine.generate(["শিরোনাম: নদী\n"], SamplingParams(seed=seed, temperature=1.5, max_new_tokens=1))[0][0]
              .token_ids[0] for seed in range(12)]
    assert set(firsts) <= openers, [loaded.tokenizer.decode([t]) for t in firsts]
    bpe = load_model(trained_run)
    assert not Engine(bpe.model, bpe.tokenizer).opens_word("শিরোনাম: নদী\n")


def test_generate_after_a_line_break_starts_the_line_without_a_space(sp_run, capsys):
    """The new word's own space opened the new line: "শিরোনাম: নদী\\n জানে..." (review)."""
    from banglaslm.cli import main

    base = ["generate", str(sp_run), "--prompt", "শিরোনাম: নদী\n", "--seed", "1", "--max-new-tokens", "6"]
    for extra in ([], ["--stream"]):
        assert main([*base, *extra]) == 0
        out = capsys.readouterr().out
        assert out.startswith("শিরোনাম: নদী\n") and not out.split("\n")[1].startswith(" "), out
    assert main([*base, "--json"]) == 0
    assert not json.loads(capsys.readouterr().out)["text"].startswith(" ")
